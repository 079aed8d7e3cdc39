//! The policy served on port 0 and called through its client wrapper, the way other backends
//! and the coordinator call it. The curator is a fake peer that records the votes it gets; the
//! model and the embedder are the testsuite fakes; the record is the real embedded one.

use std::sync::{Arc, Mutex};

use agent_learning_api::{
    ApiError, BatchFlushed, CompileRequest, CuratorApi, DecideRequest, FeedbackItem,
    FeedbackOutcome, Health, PlaybookPage, PlaybookQuery, PolicyApi, PolicyClient, RenderedContext,
};
use agent_learning_domain::{Bullet, BulletEvent, DeltaOp, Insight, Stage};
use agent_learning_embed::testsuite::{HASH_DIM, HashEmbedder};
use agent_learning_llm::testsuite::InstantModel;
use agent_learning_policy::Policy;
use agent_learning_runtime::Context;
use agent_learning_runtime::testsuite::{self, TestServer};
use async_trait::async_trait;

fn unused(what: &str) -> ApiError {
    ApiError::Internal {
        message: format!("{what} is not used by the policy"),
        source: None,
    }
}

#[derive(Default)]
struct FakeCurator {
    /// Namespace, stage, budget and the length of the state's vector sent with the call.
    asked: Mutex<Vec<(String, Stage, u32, usize)>>,
    votes: Mutex<Vec<(String, Vec<FeedbackItem>)>>,
}

#[async_trait]
impl CuratorApi for FakeCurator {
    async fn render_context(
        &self,
        ns: &str,
        _: &str,
        state_vector: Option<Vec<f32>>,
        token_budget: u32,
        min_stage: Stage,
    ) -> Result<RenderedContext, ApiError> {
        self.asked.lock().unwrap().push((
            ns.to_owned(),
            min_stage,
            token_budget,
            state_vector.map_or(0, |v| v.len()),
        ));
        Ok(RenderedContext {
            text: "- keep a safe gap".into(),
            bullet_ids: vec!["b1".into(), "b2".into()],
            tokens: 5,
        })
    }

    async fn record_feedback(
        &self,
        _: &str,
        feedback_id: &str,
        items: Vec<FeedbackItem>,
    ) -> Result<FeedbackOutcome, ApiError> {
        self.votes
            .lock()
            .unwrap()
            .push((feedback_id.to_owned(), items));
        Ok(FeedbackOutcome {
            bullets: Vec::new(),
            replayed: false,
        })
    }

    async fn curate(&self, _: &str, _: Vec<Insight>) -> Result<Vec<DeltaOp>, ApiError> {
        Err(unused("Curate"))
    }

    async fn flush_batch(&self, _: &str, _: &str) -> Result<BatchFlushed, ApiError> {
        Err(unused("FlushBatch"))
    }

    async fn get_playbook(&self, _: &str, _: PlaybookQuery) -> Result<PlaybookPage, ApiError> {
        Err(unused("GetPlaybook"))
    }

    async fn search(
        &self,
        _: &str,
        _: &str,
        _: u32,
        _: Stage,
        _: Option<&str>,
    ) -> Result<Vec<(Bullet, f32)>, ApiError> {
        Err(unused("SearchPlaybook"))
    }

    async fn health(&self, _: &str) -> Result<Health, ApiError> {
        Err(unused("GetPlaybookHealth"))
    }

    async fn history(&self, _: &str, _: &str) -> Result<Vec<BulletEvent>, ApiError> {
        Err(unused("GetBulletHistory"))
    }

    async fn update_bullet(&self, _: &str, _: &str, _: &str) -> Result<DeltaOp, ApiError> {
        Err(unused("UpdateBullet"))
    }

    async fn delete_bullet(&self, _: &str, _: &str, _: &str) -> Result<DeltaOp, ApiError> {
        Err(unused("DeleteBullet"))
    }

    async fn merge_bullets(&self, _: &str, _: &str, _: &str) -> Result<DeltaOp, ApiError> {
        Err(unused("MergeBullets"))
    }

    async fn set_stage(
        &self,
        _: &str,
        _: &str,
        _: Option<Stage>,
        _: &str,
    ) -> Result<Bullet, ApiError> {
        Err(unused("SetBulletStage"))
    }
}

struct Served {
    _dir: tempfile::TempDir,
    client: PolicyClient,
    curator: Arc<FakeCurator>,
    server: TestServer,
}

impl Served {
    async fn shut_down(self) {
        self.server.shut_down().await.unwrap();
    }
}

async fn serve_policy() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let (listener, addr) = testsuite::listener().await;
    let curator = Arc::new(FakeCurator::default());
    let ctx = Context::new(testsuite::settings_in(dir.path()), addr).unwrap();
    let mut peers = ctx.peers().clone();
    peers.curator = curator.clone();
    let ctx = ctx
        .with_peers(peers)
        .with_model(Arc::new(InstantModel))
        .with_embedder(Arc::new(HashEmbedder));
    let server = TestServer::start::<Policy>(ctx, listener).await.unwrap();
    Served {
        _dir: dir,
        client: PolicyClient::new(server.channel()),
        curator,
        server,
    }
}

fn decide(ns: &str, state: &str, actions: &[&str]) -> DecideRequest {
    DecideRequest {
        history: Vec::new(),
        namespace: ns.into(),
        state: state.into(),
        valid_actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        policy_version: None,
    }
}

#[tokio::test]
async fn compile_decide_and_feedback_through_the_client() {
    let s = serve_policy().await;
    let p = &s.client;
    let v1 = p
        .compile(CompileRequest {
            namespace: "pol".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((v1.version, v1.min_stage), (1, Stage::Shadow), "defaults");
    let v2 = p
        .compile(CompileRequest {
            namespace: "pol".into(),
            min_stage: Some(Stage::Staging),
            token_budget: Some(123),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(p.get_policy("pol", None).await.unwrap(), v2);
    assert_eq!(p.get_policy("pol", Some(1)).await.unwrap(), v1);

    let d = p
        .decide(decide("pol", "speed=10 gap=3", &["brake", "accelerate"]))
        .await
        .unwrap();
    assert!(
        ["brake", "accelerate"].contains(&d.action.as_str()),
        "{d:?}"
    );
    assert_eq!(d.policy_version, 2);
    assert_eq!(d.bullet_ids, ["b1", "b2"]);
    assert!(!d.fallback);
    assert_eq!(
        s.curator.asked.lock().unwrap().as_slice(),
        [("pol".to_owned(), Stage::Staging, 123, HASH_DIM)],
        "the playbook is asked at the policy's stage and budget, with the state's embedding"
    );

    let credited = p.feedback("pol", &d.decision_id, true).await.unwrap();
    assert_eq!(credited, ["b1", "b2"]);
    let votes = s.curator.votes.lock().unwrap().clone();
    assert_eq!(votes.len(), 1);
    assert_eq!(votes[0].0, format!("decision:{}", d.decision_id));
    assert!(votes[0].1.iter().all(|v| v.helpful == 1 && v.harmful == 0));
    s.shut_down().await;
}

#[tokio::test]
async fn decisions_made_at_once_are_each_recorded() {
    let s = serve_policy().await;
    let p = &s.client;
    let compile = || CompileRequest {
        namespace: "many".into(),
        ..Default::default()
    };
    p.compile(compile()).await.unwrap();
    // 64 in flight share the record's writes; each is kept, under its own id.
    let made = futures::future::join_all((0..64).map(|i| {
        p.decide(decide(
            "many",
            &format!("speed={i} gap=3"),
            &["brake", "accelerate"],
        ))
    }))
    .await;
    let mut ids = std::collections::HashSet::new();
    for d in made {
        let d = d.unwrap();
        assert_eq!(d.policy_version, 1);
        assert!(ids.insert(d.decision_id.clone()), "ids are unique");
        assert_eq!(
            p.feedback("many", &d.decision_id, true).await.unwrap(),
            ["b1", "b2"],
            "feedback finds decision {}",
            d.decision_id
        );
    }
    assert_eq!(s.curator.votes.lock().unwrap().len(), 64);
    // A version compiled here is used by the next Decide; an older one when asked for.
    assert_eq!(p.compile(compile()).await.unwrap().version, 2);
    let d = p
        .decide(decide("many", "speed=1 gap=3", &["brake"]))
        .await
        .unwrap();
    assert_eq!(d.policy_version, 2);
    let mut old = decide("many", "speed=1 gap=3", &["brake"]);
    old.policy_version = Some(1);
    assert_eq!(p.decide(old).await.unwrap().policy_version, 1);
    s.shut_down().await;
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let s = serve_policy().await;
    let p = &s.client;
    let field = |e: ApiError| match e {
        ApiError::Invalid(i) => i.field,
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    };
    let untrained = p.decide(decide("nobody", "s", &["a"])).await.unwrap_err();
    assert!(
        matches!(untrained, ApiError::FailedPrecondition(_)),
        "{untrained:?}"
    );
    p.compile(CompileRequest {
        namespace: "pol".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        field(p.decide(decide("pol", " ", &["a"])).await.unwrap_err()),
        "state"
    );
    assert_eq!(
        field(p.decide(decide("pol", "s", &["a", " "])).await.unwrap_err()),
        "valid_actions[1]"
    );
    assert_eq!(
        field(p.decide(decide("pol", "s", &[])).await.unwrap_err()),
        "valid_actions"
    );
    // A state over the limit the curator's RenderContext has is refused here, by name (it
    // used to pass Decide's own, larger limit and fail behind it as UNAVAILABLE).
    let long = "x".repeat(agent_learning_domain::MAX_STATE_BYTES + 1);
    assert_eq!(
        field(p.decide(decide("pol", &long, &["a"])).await.unwrap_err()),
        "state"
    );
    let e = p
        .compile(CompileRequest {
            namespace: "pol".into(),
            token_budget: Some(agent_learning_domain::MAX_TOKEN_BUDGET + 1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(field(e), "token_budget");
    let e = p
        .compile(CompileRequest {
            namespace: "pol".into(),
            min_stage: Some(Stage::Quarantined),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(field(e), "min_stage");
    assert!(matches!(
        p.get_policy("pol", Some(9)).await.unwrap_err(),
        ApiError::NotFound(_)
    ));
    assert!(matches!(
        p.feedback("pol", "no-such-decision", true)
            .await
            .unwrap_err(),
        ApiError::NotFound(_)
    ));
    s.shut_down().await;
}
