//! The policy served on port 0 and called through its client wrapper, the way other backends
//! and the coordinator call it. The curator is a fake peer that records the votes it gets; the
//! model and the embedder are the testsuite fakes; the record is the real embedded one.

use std::sync::{Arc, Mutex};

use agent_learning_api::{
    ApiError, CompileRequest, CuratorApi, DecideRequest, FeedbackItem, PolicyApi, PolicyClient,
    RenderedContext,
};
use agent_learning_config::{Settings, Sources};
use agent_learning_domain::Stage;
use agent_learning_embed::testsuite::HashEmbedder;
use agent_learning_llm::testsuite::InstantModel;
use agent_learning_policy::Policy;
use agent_learning_runtime::{Context, add, limits, serve};
use agent_learning_server::GrpcServer;
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

#[derive(Default)]
struct FakeCurator {
    asked: Mutex<Vec<(String, Stage, u32)>>,
    votes: Mutex<Vec<(String, Vec<FeedbackItem>)>>,
}

#[async_trait]
impl CuratorApi for FakeCurator {
    async fn render_context(
        &self,
        ns: &str,
        _: &str,
        token_budget: u32,
        min_stage: Stage,
    ) -> Result<RenderedContext, ApiError> {
        self.asked
            .lock()
            .unwrap()
            .push((ns.to_owned(), min_stage, token_budget));
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
    ) -> Result<bool, ApiError> {
        self.votes
            .lock()
            .unwrap()
            .push((feedback_id.to_owned(), items));
        Ok(false)
    }
}

struct Served {
    _dir: tempfile::TempDir,
    client: PolicyClient,
    curator: Arc<FakeCurator>,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Served {
    /// Stops the server and waits for it, so the data directory outlives the index.
    async fn shut_down(self) {
        self.stop.cancel();
        self.server.await.unwrap().unwrap();
    }
}

async fn serve_policy() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::load(&Sources {
        file: None,
        overrides: vec![("data_dir".into(), dir.path().display().to_string())],
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let curator = Arc::new(FakeCurator::default());
    let ctx = Context::new(settings, addr).unwrap();
    let mut peers = ctx.peers().clone();
    peers.curator = curator.clone();
    let ctx = ctx
        .with_peers(peers)
        .with_model(Arc::new(InstantModel))
        .with_embedder(Arc::new(HashEmbedder));
    let mut server = GrpcServer::new(limits(ctx.settings())).unwrap();
    add::<Policy>(&ctx, &mut server).await.unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(ctx, server, listener, stop.clone().cancelled_owned()));
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    Served {
        _dir: dir,
        client: PolicyClient::new(channel),
        curator,
        stop,
        server,
    }
}

fn decide(ns: &str, state: &str, actions: &[&str]) -> DecideRequest {
    DecideRequest {
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
        [("pol".to_owned(), Stage::Staging, 123)],
        "the playbook is asked at the policy's stage and budget"
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
