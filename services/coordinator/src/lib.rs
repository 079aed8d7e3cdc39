//! The coordinator service. `StartTraining` validates the demos, the environment and the
//! configuration, then records the run (demos included) in one transaction: a run never
//! half-imports. A driver takes the run through its stages — world-model fit, exploration,
//! reflection (until every branch point is reflected), curation (until the curator has taken
//! every valid reflection), policy compile — persisting each stage's progress. After a crash
//! the driver picks up unfinished runs where they stopped; every stage is idempotent, so
//! resuming duplicates nothing.

mod config;
mod driver;
pub mod grpc;
mod live;

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use agent_learning_api::{
    ApiError, CoordinatorApi, RunEvent, RunEventStream, RunInfo, RunPage, StageInfo,
    TrainingRequest,
};
use agent_learning_config::Settings;
use agent_learning_domain::{InvalidInput, Run, RunState, StageProgress, validate_namespace};
use agent_learning_envs::parse_demos;
use agent_learning_queue::{Queue, QueueError};
use agent_learning_runtime::{Context, Peers, RuntimeError, Service, consumer_name};
use agent_learning_server::GrpcServer;
use agent_learning_store::{NewRun, Store, StoreError};
use async_trait::async_trait;
use futures::StreamExt as _;
use tokio::sync::{Mutex, broadcast};
use tokio_util::sync::CancellationToken;

pub use config::TrainingConfig;
pub use live::{LiveConfig, episode_id};

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("invalid argument: {0}")]
    Invalid(#[from] InvalidInput),
    #[error("run {0} not found")]
    NoSuchRun(String),
    #[error("run {id} already {state}")]
    Ended { id: String, state: RunState },
    #[error("{0}")]
    Precondition(String),
    #[error("a service the coordinator calls: {0}")]
    Peer(ApiError),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl From<StoreError> for CoordinatorError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what: "run", id } => Self::NoSuchRun(id),
            other => Self::Store(other),
        }
    }
}

impl From<CoordinatorError> for ApiError {
    fn from(e: CoordinatorError) -> Self {
        match e {
            CoordinatorError::Invalid(i) => ApiError::Invalid(i),
            CoordinatorError::NoSuchRun(_) => ApiError::NotFound(e.to_string()),
            CoordinatorError::Ended { .. } | CoordinatorError::Precondition(_) => {
                ApiError::FailedPrecondition(e.to_string())
            }
            CoordinatorError::Peer(p) => p,
            CoordinatorError::Store(s) => ApiError::internal("coordinator record", s),
            CoordinatorError::Queue(q) => ApiError::unavailable("queue", q),
        }
    }
}

type Result<T, E = CoordinatorError> = std::result::Result<T, E>;

/// A run being driven in this process.
struct Active {
    cancel: CancellationToken,
    events: broadcast::Sender<RunEvent>,
}

/// Runs in a page of `ListRuns` when the caller does not say.
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;

pub struct Coordinator {
    /// This coordinator, for the drivers it spawns.
    me: Weak<Coordinator>,
    /// Names this coordinator in run leases; unique per instance.
    holder: String,
    /// How long a lease lasts without renewal.
    lease: Duration,
    store: Store,
    queue: Arc<dyn Queue>,
    peers: Peers,
    settings: Settings,
    active: Mutex<HashMap<String, Active>>,
    shutdown: CancellationToken,
}

impl Coordinator {
    pub fn new(
        store: Store,
        queue: Arc<dyn Queue>,
        peers: Peers,
        settings: Settings,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let lease = Duration::from_secs(settings.pipeline.run_lease_secs);
        let holder = format!(
            "{}-{}",
            consumer_name("coordinator"),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            holder,
            lease,
            store,
            queue,
            peers,
            settings,
            active: Mutex::new(HashMap::new()),
            shutdown,
        })
    }

    /// Drives every unfinished run no live coordinator holds; at start and then every third
    /// of a lease, so a run whose coordinator died is taken over.
    pub async fn resume_unfinished(&self) -> Result<usize> {
        Ok(self.sweep().await?)
    }

    /// The name this coordinator holds run leases under.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Validates everything, then records the run in one transaction and starts it.
    pub async fn start_training(&self, r: TrainingRequest) -> Result<RunInfo> {
        validate_namespace("namespace", &r.namespace)?;
        let env = self.check_env(&r.env)?;
        if r.demos_jsonl.trim().is_empty() {
            return Err(InvalidInput::new("demos_jsonl", "must not be empty").into());
        }
        let demos = parse_demos(r.demos_jsonl.as_bytes(), "demos_jsonl")
            .map_err(|e| InvalidInput::new("demos_jsonl", e.to_string()))?;
        if !env.starts_with("grpc://") {
            let wrong: Vec<String> = demos
                .iter()
                .enumerate()
                .filter(|(_, d)| d.env != env)
                .map(|(i, d)| {
                    format!(
                        "line {}: env {:?} differs from the run's env {env:?}",
                        i + 1,
                        d.env
                    )
                })
                .collect();
            if !wrong.is_empty() {
                return Err(InvalidInput::new("demos_jsonl", wrong.join("; ")).into());
            }
        }
        let cfg = TrainingConfig::from_json(&self.settings, &r.config_json)?;
        let id = uuid::Uuid::new_v4().to_string();
        let config = serde_json::to_string(&cfg)
            .map_err(|e| InvalidInput::new("config_json", e.to_string()))?;
        self.store
            .create_run(NewRun {
                kind: agent_learning_domain::run_kind::TRAINING,
                stages: agent_learning_domain::RunStage::TRAINING,
                id: &id,
                namespace: &r.namespace,
                env,
                config: &config,
                demos: &r.demos_jsonl,
            })
            .await?;
        tracing::info!(run = %id, namespace = %r.namespace, demos = demos.len(), env, "training run recorded");
        self.drive(id.clone()).await;
        self.get_run(&id).await
    }

    /// A built-in environment's name, or a `grpc://` address the allowlist lets in.
    fn check_env<'a>(&self, env: &'a str) -> Result<&'a str> {
        let env = env.trim();
        if env.is_empty() {
            return Err(InvalidInput::new("env", "must not be empty").into());
        }
        if env.starts_with("grpc://") {
            agent_learning_api::RemoteEnvAllowlist::new(
                self.settings.environments.allowed_remotes.clone(),
            )
            .check(env)
            .map_err(|why| InvalidInput::new("env", why))?;
        } else {
            agent_learning_envs::factory(env)
                .map_err(|e| InvalidInput::new("env", e.to_string()))?;
        }
        Ok(env)
    }

    async fn load(&self, id: &str) -> Result<(Run, Vec<StageProgress>)> {
        if id.trim().is_empty() {
            return Err(InvalidInput::new("run_id", "must not be empty").into());
        }
        Ok(self.store.load_run(id).await?)
    }

    pub async fn get_run(&self, id: &str) -> Result<RunInfo> {
        let (run, stages) = self.load(id).await?;
        Ok(run_info(run, stages))
    }

    /// The run's current state as an event, then its driver's events until it ends.
    pub async fn watch_run(&self, id: &str) -> Result<RunEventStream> {
        // Subscribe before reading the state, so nothing between the two is missed.
        let live = if id.trim().is_empty() {
            None
        } else {
            self.subscribe(id).await
        };
        let (run, stages) = self.load(id).await?;
        let current = stages.iter().find(|s| Some(s.stage) == run.current_stage);
        let snapshot = driver::event(
            id,
            run.current_stage,
            current.map(|s| s.done).unwrap_or(0),
            current.map(|s| s.total).unwrap_or(0),
            run.state,
            run.error.clone(),
        );
        let first = futures::stream::once(async move { Ok(snapshot) });
        let (Some(live), false) = (live, run.state.terminal()) else {
            return Ok(Box::pin(first));
        };
        let rest = events_after(run.current_stage, live);
        Ok(Box::pin(first.chain(rest)))
    }

    /// Marks the run cancelled and stops its driver in this process.
    pub async fn cancel_run(&self, id: &str) -> Result<RunInfo> {
        let (run, _) = self.load(id).await?;
        if run.state.terminal() {
            return Err(CoordinatorError::Ended {
                id: id.to_owned(),
                state: run.state,
            });
        }
        // Conditional, so a run that ended meanwhile keeps its end. The coordinator driving it,
        // this one or another, sees the state on its next lease renewal and stops.
        if !self
            .store
            .advance_run(id, RunState::Cancelled, None, Some("cancelled by request"))
            .await?
        {
            let state = self.store.run_state(id).await?.unwrap_or(run.state);
            return Err(CoordinatorError::Ended {
                id: id.to_owned(),
                state,
            });
        }
        self.cancel(id).await;
        self.get_run(id).await
    }

    /// Newest first; all namespaces when `ns` is empty. The page token is an offset this
    /// coordinator issued.
    pub async fn list_runs(&self, ns: &str, page_size: u32, page_token: &str) -> Result<RunPage> {
        if !ns.is_empty() {
            validate_namespace("namespace", ns)?;
        }
        if page_size > MAX_PAGE {
            return Err(
                InvalidInput::new("page_size", format!("must be at most {MAX_PAGE}")).into(),
            );
        }
        let limit = u64::from(if page_size == 0 {
            DEFAULT_PAGE
        } else {
            page_size
        });
        let offset: u64 = if page_token.is_empty() {
            0
        } else {
            page_token
                .parse()
                .map_err(|_| InvalidInput::new("page_token", "not a token this server issued"))?
        };
        let (runs, more) = self.store.list_runs(ns, limit, offset).await?;
        Ok(RunPage {
            runs: runs.into_iter().map(|(r, s)| run_info(r, s)).collect(),
            next_page_token: if more {
                (offset + limit).to_string()
            } else {
                String::new()
            },
        })
    }
}

fn run_info(r: Run, stages: Vec<StageProgress>) -> RunInfo {
    RunInfo {
        id: r.id,
        namespace: r.namespace,
        kind: r.kind,
        state: r.state,
        current_stage: r.current_stage,
        stages: stages
            .into_iter()
            .map(|s| StageInfo {
                stage: s.stage,
                done: s.done,
                total: s.total,
                seconds: s.seconds,
            })
            .collect(),
        error: r.error,
        created_at: r.created_at,
        updated_at: r.updated_at,
        summary_json: r.summary,
    }
}

#[async_trait]
impl CoordinatorApi for Coordinator {
    async fn start_training(&self, req: TrainingRequest) -> Result<RunInfo, ApiError> {
        Ok(Coordinator::start_training(self, req).await?)
    }

    async fn start_live_loop(
        &self,
        req: agent_learning_api::LiveLoopRequest,
    ) -> Result<RunInfo, ApiError> {
        Ok(Coordinator::start_live_loop(self, req).await?)
    }

    async fn get_run(&self, run_id: &str) -> Result<RunInfo, ApiError> {
        Ok(Coordinator::get_run(self, run_id).await?)
    }

    async fn watch_run(&self, run_id: &str) -> Result<RunEventStream, ApiError> {
        Ok(Coordinator::watch_run(self, run_id).await?)
    }

    async fn list_runs(
        &self,
        ns: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<RunPage, ApiError> {
        Ok(Coordinator::list_runs(self, ns, page_size, page_token).await?)
    }

    async fn cancel_run(&self, run_id: &str) -> Result<RunInfo, ApiError> {
        Ok(Coordinator::cancel_run(self, run_id).await?)
    }
}

impl Service for Coordinator {
    const NAME: &'static str = "coordinator";

    /// Fails at start, naming the key, when a service it drives does not answer.
    async fn build(ctx: &Context) -> Result<Arc<Self>, RuntimeError> {
        ctx.wait_for_peers(&["world_model", "explorer", "policy"])
            .await?;
        Ok(Coordinator::new(
            ctx.store().await?,
            ctx.queue().await?,
            ctx.peers().clone(),
            ctx.settings().clone(),
            ctx.stop_token(),
        ))
    }

    /// The RPCs, then every run a previous process left unfinished, resumed.
    async fn mount(
        self: &Arc<Self>,
        server: &mut GrpcServer,
        ctx: &Context,
    ) -> Result<(), RuntimeError> {
        grpc::mount(self.clone(), server);
        let me = self.clone();
        let stop = ctx.stop_token();
        ctx.spawn_worker(async move {
            loop {
                if let Err(e) = me.resume_unfinished().await {
                    tracing::warn!(error = %e, "could not look for unfinished runs");
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(me.lease / 3) => {}
                }
            }
        });
        Ok(())
    }
}

/// A run's live events after its snapshot, until the one that ends the run; a slow watcher
/// skips what it missed. The driver may publish between the subscription and the read of the
/// state: those events of a stage before the snapshot's are behind what the watcher was shown.
fn events_after(
    snapshot: Option<agent_learning_domain::RunStage>,
    live: broadcast::Receiver<RunEvent>,
) -> impl futures::Stream<Item = Result<RunEvent, ApiError>> + Send + 'static {
    futures::stream::unfold((live, false), move |(mut live, ended)| async move {
        if ended {
            return None;
        }
        loop {
            match live.recv().await {
                Ok(e) => {
                    let end = e.state.terminal();
                    if !end && e.stage < snapshot {
                        continue;
                    }
                    return Some((Ok(e), (live, end)));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use agent_learning_domain::RunStage;

    use super::*;

    fn at(stage: Option<RunStage>, done: u64, state: RunState) -> RunEvent {
        driver::event("r", stage, done, 10, state, "")
    }

    /// Events published between the subscription and the snapshot's read come after it in
    /// the stream: those of an earlier stage are dropped, the rest keep their order.
    #[tokio::test]
    async fn the_watch_drops_what_the_snapshot_already_passed() {
        let (tx, rx) = broadcast::channel(16);
        tx.send(at(Some(RunStage::Fit), 5, RunState::Running))
            .unwrap();
        tx.send(at(Some(RunStage::Explore), 0, RunState::Running))
            .unwrap();
        tx.send(at(Some(RunStage::Explore), 4, RunState::Running))
            .unwrap();
        tx.send(at(Some(RunStage::Reflect), 1, RunState::Running))
            .unwrap();
        tx.send(at(None, 0, RunState::Succeeded)).unwrap();
        tx.send(at(Some(RunStage::Compile), 1, RunState::Running))
            .unwrap();
        let seen: Vec<_> = events_after(Some(RunStage::Explore), rx)
            .map(|e| {
                let e = e.unwrap();
                (e.stage, e.done, e.state)
            })
            .collect()
            .await;
        assert_eq!(
            seen,
            vec![
                (Some(RunStage::Explore), 0, RunState::Running),
                (Some(RunStage::Explore), 4, RunState::Running),
                (Some(RunStage::Reflect), 1, RunState::Running),
                (None, 0, RunState::Succeeded),
            ]
        );
    }

    /// A snapshot taken before the first stage keeps everything; the end always arrives.
    #[tokio::test]
    async fn the_watch_from_the_start_keeps_every_event_and_the_end() {
        let (tx, rx) = broadcast::channel(16);
        tx.send(at(Some(RunStage::Fit), 1, RunState::Running))
            .unwrap();
        tx.send(at(None, 0, RunState::Failed)).unwrap();
        drop(tx);
        let seen: Vec<_> = events_after(None, rx)
            .map(|e| e.unwrap().state)
            .collect()
            .await;
        assert_eq!(seen, vec![RunState::Running, RunState::Failed]);
        let (tx, rx) = broadcast::channel(16);
        tx.send(at(None, 0, RunState::Cancelled)).unwrap();
        let seen: Vec<_> = events_after(Some(RunStage::Compile), rx)
            .map(|e| e.unwrap().state)
            .collect()
            .await;
        assert_eq!(seen, vec![RunState::Cancelled]);
    }
}
