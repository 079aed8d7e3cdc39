//! The coordinator's driver against fake peers, in one process: no servers, no models. The
//! fakes write to the record what the real services would (rollouts, reflections), so the
//! driver's progress checks see the same thing they see in production.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_learning_api::{
    Accuracy, ApiError, BatchFlushed, CompileRequest, CoordinatorApi, CoordinatorClient,
    CuratorApi, DecideRequest, Decision, ExploreRequest, ExplorerApi, FeedbackItem,
    FeedbackOutcome, FitReport, Health, PlaybookPage, PlaybookQuery, PolicyApi, Prediction,
    ReflectRequest, ReflectorApi, RenderedContext, RolloutStream, RunInfo, TrainingRequest,
    WorldModelApi,
};
use agent_learning_config::{Settings, Sources};
use agent_learning_coordinator::Coordinator;
use agent_learning_domain::{
    Bullet, BulletEvent, DeltaOp, Insight, PolicyVersion, Reflection, Rollout, RolloutGroup,
    RolloutSource, RunState, Stage, Transition,
};
use agent_learning_queue::{EmbeddedQueue, QueueOptions};
use agent_learning_runtime::testsuite::{self, TestServer};
use agent_learning_runtime::{Context, Peers};
use agent_learning_store::Store;
use async_trait::async_trait;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

fn unused(what: &str) -> ApiError {
    ApiError::Internal {
        message: format!("{what} is not used by the driver"),
        source: None,
    }
}

#[derive(Default)]
struct FakeWorldModel {
    fitted: Mutex<Vec<Transition>>,
    evaluated: AtomicUsize,
    down: bool,
    /// Fit calls still to fail with UNAVAILABLE before it answers (an outage that passes).
    outage: AtomicUsize,
}

#[async_trait]
impl WorldModelApi for FakeWorldModel {
    async fn fit(&self, _: &str, ts: Vec<Transition>, source: &str) -> Result<FitReport, ApiError> {
        let passing = self
            .outage
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if self.down || passing {
            return Err(ApiError::Unavailable {
                message: "world model is down".into(),
                source: None,
            });
        }
        assert_eq!(source, "expert");
        let n = ts.len() as u64;
        self.fitted.lock().unwrap().extend(ts);
        Ok(FitReport {
            stored: n,
            duplicates: 0,
        })
    }

    async fn predict(&self, _: &str, _: &str, _: &str, _: u32) -> Result<Prediction, ApiError> {
        Err(unused("Predict"))
    }

    async fn evaluate(&self, _: &str, held_out: Vec<Transition>) -> Result<Accuracy, ApiError> {
        assert_eq!(held_out.len(), 1, "one held-out transition per call");
        self.evaluated.fetch_add(1, Ordering::SeqCst);
        Ok(Accuracy {
            evaluated: 1,
            exact_match: 1.0,
            mean_similarity: 0.5,
        })
    }
}

/// Explores the first step of each demo with one alternative, stores the rollouts, and plays
/// the reflectors' part: one (invalid, so never curated) reflection per branch point.
struct FakeExplorer {
    store: Store,
    hang: bool,
    /// `publish` of every Explore call.
    published: Mutex<Vec<bool>>,
}

#[async_trait]
impl ExplorerApi for FakeExplorer {
    async fn explore(&self, req: ExploreRequest) -> Result<RolloutStream, ApiError> {
        self.published.lock().unwrap().push(req.publish);
        if self.hang {
            return Ok(Box::pin(futures::stream::pending()));
        }
        let mut out = Vec::new();
        for d in &req.demos {
            let step = &d.steps[0];
            let group = format!("{}-{}", req.run_id, d.id);
            let rollout = |action: &str, source| Rollout {
                id: format!("{group}-{action}"),
                run_id: req.run_id.clone(),
                demo_id: d.id.clone(),
                step_index: 0,
                state: step.state.clone(),
                expert_action: step.action.clone(),
                action: action.to_owned(),
                next_state: step.next_state.clone(),
                done: false,
                source,
                group_id: group.clone(),
            };
            let g = RolloutGroup {
                id: group.clone(),
                namespace: req.namespace.clone(),
                run_id: req.run_id.clone(),
                demo_id: d.id.clone(),
                step_index: 0,
                state: step.state.clone(),
                expert_action: step.action.clone(),
                expert_next_state: step.next_state.clone(),
                rollouts: vec![
                    rollout(&step.action, RolloutSource::Expert),
                    rollout("other", RolloutSource::Env),
                ],
            };
            self.store.insert_rollouts(&g).await.unwrap();
            self.store
                .insert_reflection(&Reflection {
                    id: group.clone(),
                    namespace: req.namespace.clone(),
                    run_id: req.run_id.clone(),
                    problem: "fake".into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            out.extend(g.rollouts.into_iter().map(Ok));
        }
        Ok(Box::pin(futures::stream::iter(out)))
    }
}

#[derive(Default)]
struct FakePolicy {
    compiled: Mutex<Vec<CompileRequest>>,
}

#[async_trait]
impl PolicyApi for FakePolicy {
    async fn compile(&self, req: CompileRequest) -> Result<PolicyVersion, ApiError> {
        let v = PolicyVersion {
            namespace: req.namespace.clone(),
            version: 7,
            instructions_template: req.instructions_template.clone().unwrap_or_default(),
            exemplars_k: req.exemplars_k.unwrap_or(0),
            min_stage: req.min_stage.unwrap_or(Stage::Shadow),
            token_budget: req.token_budget.unwrap_or(0),
            created_at: chrono::Utc::now(),
        };
        self.compiled.lock().unwrap().push(req);
        Ok(v)
    }

    async fn decide(&self, _: DecideRequest) -> Result<Decision, ApiError> {
        Err(unused("Decide"))
    }

    async fn feedback(&self, _: &str, _: &str, _: bool) -> Result<Vec<String>, ApiError> {
        Err(unused("Feedback"))
    }

    async fn get_policy(&self, _: &str, _: Option<i64>) -> Result<PolicyVersion, ApiError> {
        Err(unused("GetPolicy"))
    }
}

struct Unused;

#[async_trait]
impl ReflectorApi for Unused {
    async fn reflect(&self, _: ReflectRequest) -> Result<Reflection, ApiError> {
        Err(unused("Reflect"))
    }
}

#[async_trait]
impl CuratorApi for Unused {
    async fn render_context(
        &self,
        _: &str,
        _: &str,
        _: Option<Vec<f32>>,
        _: u32,
        _: Stage,
    ) -> Result<RenderedContext, ApiError> {
        Err(unused("RenderContext"))
    }

    async fn record_feedback(
        &self,
        _: &str,
        _: &str,
        _: Vec<FeedbackItem>,
    ) -> Result<FeedbackOutcome, ApiError> {
        Err(unused("RecordFeedback"))
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

struct Harness {
    _dir: tempfile::TempDir,
    store: Store,
    coordinator: Arc<Coordinator>,
    world_model: Arc<FakeWorldModel>,
    policy: Arc<FakePolicy>,
    explorer: Arc<FakeExplorer>,
}

async fn harness(world_model: FakeWorldModel, hang: bool) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings::load(&Sources {
        file: None,
        overrides: vec![
            ("data_dir".into(), dir.path().display().to_string()),
            ("pipeline.holdout".into(), "2".into()),
            ("pipeline.outage_tolerance_secs".into(), "2".into()),
        ],
    })
    .unwrap();
    let store = Store::open_sqlite(&settings.sqlite_path(), 4)
        .await
        .unwrap();
    let queue = Arc::new(EmbeddedQueue::new(store.clone(), QueueOptions::default()));
    let world_model = Arc::new(world_model);
    let policy = Arc::new(FakePolicy::default());
    let explorer = Arc::new(FakeExplorer {
        store: store.clone(),
        hang,
        published: Mutex::default(),
    });
    let peers = Peers {
        world_model: world_model.clone(),
        explorer: explorer.clone(),
        reflector: Arc::new(Unused),
        policy: policy.clone(),
        curator: Arc::new(Unused),
    };
    let coordinator = Coordinator::new(
        store.clone(),
        queue,
        peers,
        settings,
        CancellationToken::new(),
    );
    Harness {
        _dir: dir,
        store,
        coordinator,
        world_model,
        policy,
        explorer,
    }
}

fn demos(n: usize) -> String {
    let d = agent_learning_envs::generate_demos("driving", n, 11).unwrap();
    let mut buf = Vec::new();
    agent_learning_envs::write_demos(&mut buf, &d).unwrap();
    String::from_utf8(buf).unwrap()
}

fn training(demos_jsonl: String, config_json: &str) -> TrainingRequest {
    TrainingRequest {
        namespace: "fake-peers".into(),
        demos_jsonl,
        env: "driving".into(),
        config_json: config_json.into(),
    }
}

async fn until_ended(c: &Coordinator, id: &str) -> RunInfo {
    for _ in 0..600 {
        let run = c.get_run(id).await.unwrap();
        if run.state.terminal() {
            return run;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("run {id} did not end in 30 s");
}

#[tokio::test]
async fn a_run_goes_through_every_stage_in_order() {
    let h = harness(FakeWorldModel::default(), false).await;
    let text = demos(3);
    let transitions = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["steps"]
                .as_array()
                .unwrap()
                .len()
        })
        .sum::<usize>();
    let run = h
        .coordinator
        .start_training(training(text, r#"{"min_stage": "staging"}"#))
        .await
        .unwrap();
    assert_eq!(run.stages.len(), 5);
    let run = until_ended(&h.coordinator, &run.id).await;
    assert_eq!(run.state, RunState::Succeeded, "{}", run.error);

    // Fit: every transition but the two held out, one evaluation per held-out one, then the
    // held-out ones too (every demonstrated step is an exemplar).
    assert_eq!(h.world_model.fitted.lock().unwrap().len(), transitions);
    assert_eq!(h.world_model.evaluated.load(Ordering::SeqCst), 2);
    // Compile: once, with the run's configuration.
    let compiled = h.policy.compiled.lock().unwrap().clone();
    assert_eq!(compiled.len(), 1);
    assert_eq!(compiled[0].min_stage, Some(Stage::Staging));

    let (_, stages) = h.store.load_run(&run.id).await.unwrap();
    assert!(stages.iter().all(|s| s.finished), "{stages:?}");
    let summary: serde_json::Value = serde_json::from_str(&run.summary_json).unwrap();
    assert_eq!(summary["rollouts"], 6);
    assert_eq!(summary["branch_points"], 3);
    assert_eq!(summary["reflections"], 3);
    assert_eq!(summary["reflections_valid"], 0);
    assert_eq!(summary["policy_version"], "7");
    assert_eq!(summary["world_model"]["exact_match"], 1.0);
    assert_eq!(summary["rollouts_by_source"]["env"], 3);
}

#[tokio::test]
async fn ablations_leave_out_exploration_or_reflection() {
    let stage_detail = |stages: &[agent_learning_domain::StageProgress], name: &str| {
        let s = stages.iter().find(|s| s.stage.as_str() == name).unwrap();
        assert!(s.finished, "{name}: {s:?}");
        serde_json::from_str::<serde_json::Value>(&s.detail).unwrap()
    };

    // No exploration: the explorer is never asked; reflection and curation have nothing to
    // do; the policy is still compiled from the fitted demonstrations.
    let h = harness(FakeWorldModel::default(), false).await;
    let run = h
        .coordinator
        .start_training(training(demos(3), r#"{"explore": false}"#))
        .await
        .unwrap();
    let run = until_ended(&h.coordinator, &run.id).await;
    assert_eq!(run.state, RunState::Succeeded, "{}", run.error);
    assert!(h.explorer.published.lock().unwrap().is_empty());
    assert_eq!(h.policy.compiled.lock().unwrap().len(), 1);
    assert!(!h.world_model.fitted.lock().unwrap().is_empty());
    let (_, stages) = h.store.load_run(&run.id).await.unwrap();
    for stage in ["explore", "reflect", "curate"] {
        assert_eq!(
            stage_detail(&stages, stage)["skipped"],
            "config_json.explore is false"
        );
    }
    let summary: serde_json::Value = serde_json::from_str(&run.summary_json).unwrap();
    assert_eq!(summary["rollouts"], 0);
    assert_eq!(
        summary["ablation"],
        serde_json::json!({"explore": false, "reflect": true})
    );

    // No reflection: rollouts are made and stored but not published to reflectors, and the
    // run does not wait for reflections (the fake writes some; they are not waited on).
    let h = harness(FakeWorldModel::default(), false).await;
    let run = h
        .coordinator
        .start_training(training(demos(3), r#"{"reflect": false}"#))
        .await
        .unwrap();
    let run = until_ended(&h.coordinator, &run.id).await;
    assert_eq!(run.state, RunState::Succeeded, "{}", run.error);
    assert_eq!(*h.explorer.published.lock().unwrap(), [false]);
    let (_, stages) = h.store.load_run(&run.id).await.unwrap();
    assert_eq!(stage_detail(&stages, "explore")["rollouts"], 6);
    for stage in ["reflect", "curate"] {
        assert_eq!(
            stage_detail(&stages, stage)["skipped"],
            "config_json.reflect is false"
        );
    }
    let summary: serde_json::Value = serde_json::from_str(&run.summary_json).unwrap();
    assert_eq!(
        summary["ablation"],
        serde_json::json!({"explore": true, "reflect": false})
    );

    // A full run publishes.
    let h = harness(FakeWorldModel::default(), false).await;
    let run = h
        .coordinator
        .start_training(training(demos(2), ""))
        .await
        .unwrap();
    let run = until_ended(&h.coordinator, &run.id).await;
    assert_eq!(run.state, RunState::Succeeded, "{}", run.error);
    assert_eq!(*h.explorer.published.lock().unwrap(), [true]);
}

#[tokio::test]
async fn a_failing_peer_fails_the_run_with_its_reason() {
    let h = harness(
        FakeWorldModel {
            down: true,
            ..Default::default()
        },
        false,
    )
    .await;
    let run = h
        .coordinator
        .start_training(training(demos(1), ""))
        .await
        .unwrap();
    let run = until_ended(&h.coordinator, &run.id).await;
    assert_eq!(run.state, RunState::Failed);
    assert!(run.error.contains("world model is down"), "{}", run.error);
    assert!(
        run.error.contains("outage_tolerance_secs = 2s"),
        "retried for the tolerance, then failed: {}",
        run.error
    );
    assert!(
        h.policy.compiled.lock().unwrap().is_empty(),
        "no stage after a failure"
    );
}

#[tokio::test]
async fn a_stage_outlives_a_short_outage_of_a_peer() {
    // The world model refuses three Fit calls (UNAVAILABLE), then answers: the fit stage
    // tries again and the run succeeds, with every transition fitted once.
    let h = harness(
        FakeWorldModel {
            outage: AtomicUsize::new(3),
            ..Default::default()
        },
        false,
    )
    .await;
    let run = h
        .coordinator
        .start_training(training(demos(1), ""))
        .await
        .unwrap();
    let run = until_ended(&h.coordinator, &run.id).await;
    assert_eq!(run.state, RunState::Succeeded, "{}", run.error);
    assert_eq!(h.world_model.outage.load(Ordering::SeqCst), 0);
    assert_eq!(h.policy.compiled.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_cancelled_run_stops_where_it_is() {
    let h = harness(FakeWorldModel::default(), true).await;
    let run = h
        .coordinator
        .start_training(training(demos(1), ""))
        .await
        .unwrap();
    // The explorer never answers: wait until the driver is in that stage.
    for _ in 0..200 {
        let r = h.coordinator.get_run(&run.id).await.unwrap();
        if r.current_stage == Some(agent_learning_domain::RunStage::Explore) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut events = h.coordinator.watch_run(&run.id).await.unwrap();
    let first = events.next().await.unwrap().unwrap();
    assert_eq!(first.state, RunState::Running);
    assert_eq!(first.stage, Some(agent_learning_domain::RunStage::Explore));
    let cancelled = h.coordinator.cancel_run(&run.id).await.unwrap();
    assert_eq!(cancelled.state, RunState::Cancelled);
    let run = until_ended(&h.coordinator, &run.id).await;
    assert_eq!(run.state, RunState::Cancelled);
    let rest: Vec<_> = tokio::time::timeout(Duration::from_secs(10), events.collect::<Vec<_>>())
        .await
        .expect("the watch ends with the run");
    let last = rest
        .last()
        .expect("an event that ends the run")
        .as_ref()
        .unwrap();
    assert_eq!((last.state, last.stage), (RunState::Cancelled, None));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = h.coordinator.get_run(&run.id).await.unwrap();
    assert_eq!(
        after.state,
        RunState::Cancelled,
        "the driver does not overwrite it"
    );
    assert!(h.policy.compiled.lock().unwrap().is_empty());
    let err = h.coordinator.cancel_run(&run.id).await.unwrap_err();
    assert_eq!(ApiError::from(err).code(), tonic::Code::FailedPrecondition);
}

/// The same driver behind its gRPC adapter, through the client wrapper the CLI uses: the run's
/// events arrive in stage order and end with its state, and runs list newest first.
#[tokio::test]
async fn the_client_sees_a_run_from_start_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = testsuite::settings_in(dir.path());
    settings.pipeline.holdout = 0;
    let store = Store::open(&settings).await.unwrap();
    let (listener, addr) = testsuite::listener().await;
    let ctx = Context::new(settings, addr).unwrap();
    let peers = Peers {
        world_model: Arc::new(FakeWorldModel::default()),
        explorer: Arc::new(FakeExplorer {
            store,
            hang: false,
            published: Mutex::default(),
        }),
        reflector: Arc::new(Unused),
        policy: Arc::new(FakePolicy::default()),
        curator: Arc::new(Unused),
    };
    let server = TestServer::start::<Coordinator>(ctx.with_peers(peers), listener)
        .await
        .unwrap();
    let client = CoordinatorClient::new(server.channel());

    let bad = client
        .start_training(training("{\"id\": 1}\n".into(), ""))
        .await
        .unwrap_err();
    match bad {
        ApiError::Invalid(i) => assert_eq!(i.field, "demos_jsonl"),
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }

    let run = client.start_training(training(demos(2), "")).await.unwrap();
    let events: Vec<_> = tokio::time::timeout(
        Duration::from_secs(30),
        client.watch_run(&run.id).await.unwrap().collect::<Vec<_>>(),
    )
    .await
    .expect("the watch ends with the run")
    .into_iter()
    .map(Result::unwrap)
    .collect();
    let last = events.last().unwrap();
    assert_eq!(last.state, RunState::Succeeded, "{}", last.message);
    let mut seen: Vec<_> = events.iter().filter_map(|e| e.stage).collect();
    seen.dedup();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "stages arrive in order: {seen:?}"
    );
    let done = client.get_run(&run.id).await.unwrap();
    assert_eq!(done.state, RunState::Succeeded);
    assert_eq!(done.stages.len(), 5);
    let summary: serde_json::Value = serde_json::from_str(&done.summary_json).unwrap();
    assert_eq!(summary["rollouts"], 4);

    let second = client.start_training(training(demos(1), "")).await.unwrap();
    let page = client.list_runs("fake-peers", 1, "").await.unwrap();
    assert_eq!(page.runs.len(), 1);
    assert_eq!(page.runs[0].id, second.id, "newest first");
    let next = client
        .list_runs("fake-peers", 1, &page.next_page_token)
        .await
        .unwrap();
    assert_eq!(next.runs[0].id, run.id);
    let missing = client.get_run("no-such-run").await.unwrap_err();
    assert!(matches!(missing, ApiError::NotFound(_)), "{missing:?}");
    for _ in 0..600 {
        if client.get_run(&second.id).await.unwrap().state.terminal() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shut_down().await.unwrap();
}

/// A coordinator on a shared record, with its own fakes and its own "process" (stop token).
struct Member {
    coordinator: Arc<Coordinator>,
    policy: Arc<FakePolicy>,
    stop: CancellationToken,
}

fn member(store: &Store, settings: &agent_learning_config::Settings, hang: bool) -> Member {
    let queue = Arc::new(EmbeddedQueue::new(store.clone(), QueueOptions::default()));
    let policy = Arc::new(FakePolicy::default());
    let peers = Peers {
        world_model: Arc::new(FakeWorldModel::default()),
        explorer: Arc::new(FakeExplorer {
            store: store.clone(),
            hang,
            published: Mutex::default(),
        }),
        reflector: Arc::new(Unused),
        policy: policy.clone(),
        curator: Arc::new(Unused),
    };
    let stop = CancellationToken::new();
    let coordinator = Coordinator::new(store.clone(), queue, peers, settings.clone(), stop.clone());
    Member {
        coordinator,
        policy,
        stop,
    }
}

async fn shared_record() -> (tempfile::TempDir, Store, agent_learning_config::Settings) {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = testsuite::settings_in(dir.path());
    settings.pipeline.holdout = 0;
    settings.pipeline.run_lease_secs = 3;
    let store = Store::open(&settings).await.unwrap();
    (dir, store, settings)
}

async fn until_stage(c: &Coordinator, id: &str, stage: agent_learning_domain::RunStage) {
    for _ in 0..400 {
        if c.get_run(id).await.unwrap().current_stage == Some(stage) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("run {id} never reached {stage}");
}

#[tokio::test]
async fn a_run_whose_coordinator_died_is_taken_over_once_its_lease_expires() {
    let (_dir, store, settings) = shared_record().await;
    let a = member(&store, &settings, true);
    let b = member(&store, &settings, false);
    let run = a
        .coordinator
        .start_training(training(demos(2), ""))
        .await
        .unwrap();
    until_stage(
        &a.coordinator,
        &run.id,
        agent_learning_domain::RunStage::Explore,
    )
    .await;
    let (holder, _) = store.run_lease(&run.id).await.unwrap().unwrap();
    assert_eq!(holder, a.coordinator.holder());
    assert_eq!(
        b.coordinator.resume_unfinished().await.unwrap(),
        0,
        "a live lease is not taken"
    );

    // The driving coordinator dies: its driver stops and its lease is no longer renewed.
    a.stop.cancel();
    let mut taken = 0;
    for _ in 0..100 {
        taken = b.coordinator.resume_unfinished().await.unwrap();
        if taken > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(taken, 1, "the run is taken over once the lease expires");
    let done = until_ended(&b.coordinator, &run.id).await;
    assert_eq!(done.state, RunState::Succeeded, "{}", done.error);
    assert_eq!(b.policy.compiled.lock().unwrap().len(), 1);
    assert!(
        a.policy.compiled.lock().unwrap().is_empty(),
        "the dead one never drove on"
    );
    assert_eq!(
        store.run_lease(&run.id).await.unwrap(),
        None,
        "released at the end"
    );
}

#[tokio::test]
async fn cancel_through_another_coordinator_stops_the_driver() {
    let (_dir, store, settings) = shared_record().await;
    let a = member(&store, &settings, true);
    let b = member(&store, &settings, false);
    let run = a
        .coordinator
        .start_training(training(demos(1), ""))
        .await
        .unwrap();
    until_stage(
        &a.coordinator,
        &run.id,
        agent_learning_domain::RunStage::Explore,
    )
    .await;
    let events = a.coordinator.watch_run(&run.id).await.unwrap();
    let cancelled = b.coordinator.cancel_run(&run.id).await.unwrap();
    assert_eq!(cancelled.state, RunState::Cancelled);
    // The driver in the other coordinator sees it on its next lease renewal and stops.
    let seen: Vec<_> = tokio::time::timeout(Duration::from_secs(10), events.collect::<Vec<_>>())
        .await
        .expect("the driver stops and the watch ends");
    let last = seen.last().unwrap().as_ref().unwrap();
    assert_eq!(last.state, RunState::Cancelled);
    let after = a.coordinator.get_run(&run.id).await.unwrap();
    assert_eq!(after.state, RunState::Cancelled);
    assert!(a.policy.compiled.lock().unwrap().is_empty());
    let again = b.coordinator.cancel_run(&run.id).await.unwrap_err();
    assert_eq!(
        ApiError::from(again).code(),
        tonic::Code::FailedPrecondition
    );
    assert_eq!(b.coordinator.resume_unfinished().await.unwrap(), 0);
    a.stop.cancel();
    b.stop.cancel();
}
