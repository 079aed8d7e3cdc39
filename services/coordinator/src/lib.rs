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

use std::collections::HashMap;
use std::sync::Arc;

use agent_learning_api::ApiError;
use agent_learning_config::Settings;
use agent_learning_domain::{InvalidInput, Run, RunState, StageProgress, validate_namespace};
use agent_learning_envs::parse_demos;
use agent_learning_proto::v1::RunEvent;
use agent_learning_queue::{Queue, QueueError};
use agent_learning_runtime::{Context, Peers, Service};
use agent_learning_server::GrpcServer;
use agent_learning_store::{NewRun, Store, StoreError};
use tokio::sync::{Mutex, broadcast};
use tokio_util::sync::CancellationToken;

pub use config::TrainingConfig;

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("invalid argument: {0}")]
    Invalid(#[from] InvalidInput),
    #[error("run {0} not found")]
    NoSuchRun(String),
    #[error("run {id} already {state}")]
    Ended { id: String, state: RunState },
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
            CoordinatorError::Ended { .. } => ApiError::FailedPrecondition(e.to_string()),
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

pub struct Coordinator {
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
        Arc::new(Self {
            store,
            queue,
            peers,
            settings,
            active: Mutex::new(HashMap::new()),
            shutdown,
        })
    }

    /// Resumes every run a previous process left pending or running.
    pub async fn resume_unfinished(self: &Arc<Self>) -> Result<usize> {
        let ids = self.store.unfinished_runs().await?;
        for id in &ids {
            tracing::info!(run = %id, "resuming run");
            self.drive(id.clone()).await;
        }
        Ok(ids.len())
    }

    /// Validates everything, then records the run in one transaction and starts it.
    pub async fn start_training(
        self: &Arc<Self>,
        namespace: &str,
        demos_jsonl: &str,
        env: &str,
        config_json: &str,
    ) -> Result<(Run, Vec<StageProgress>)> {
        validate_namespace("namespace", namespace)?;
        let env = env.trim();
        if env.is_empty() {
            return Err(InvalidInput::new("env", "must not be empty").into());
        }
        if !env.starts_with("grpc://") {
            agent_learning_envs::factory(env)
                .map_err(|e| InvalidInput::new("env", e.to_string()))?;
        }
        if demos_jsonl.trim().is_empty() {
            return Err(InvalidInput::new("demos_jsonl", "must not be empty").into());
        }
        let demos = parse_demos(demos_jsonl.as_bytes(), "demos_jsonl")
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
        let cfg = TrainingConfig::from_json(&self.settings, config_json)?;
        let id = uuid::Uuid::new_v4().to_string();
        let config = serde_json::to_string(&cfg)
            .map_err(|e| InvalidInput::new("config_json", e.to_string()))?;
        self.store
            .create_run(NewRun {
                id: &id,
                namespace,
                env,
                config: &config,
                demos: demos_jsonl,
            })
            .await?;
        tracing::info!(run = %id, namespace, demos = demos.len(), env, "training run recorded");
        self.drive(id.clone()).await;
        Ok(self.store.load_run(&id).await?)
    }

    pub async fn get_run(&self, id: &str) -> Result<(Run, Vec<StageProgress>)> {
        if id.trim().is_empty() {
            return Err(InvalidInput::new("run_id", "must not be empty").into());
        }
        Ok(self.store.load_run(id).await?)
    }

    /// Marks the run cancelled and stops its driver in this process.
    pub async fn cancel_run(&self, id: &str) -> Result<(Run, Vec<StageProgress>)> {
        let (run, _) = self.get_run(id).await?;
        if run.state.terminal() {
            return Err(CoordinatorError::Ended {
                id: id.to_owned(),
                state: run.state,
            });
        }
        self.store
            .set_run_state(id, RunState::Cancelled, None, Some("cancelled by request"))
            .await?;
        self.cancel(id).await;
        Ok(self.store.load_run(id).await?)
    }

    pub async fn list_runs(
        &self,
        ns: &str,
        limit: u64,
        offset: u64,
    ) -> Result<(Vec<(Run, Vec<StageProgress>)>, bool)> {
        if !ns.is_empty() {
            validate_namespace("namespace", ns)?;
        }
        Ok(self.store.list_runs(ns, limit, offset).await?)
    }
}

impl Service for Coordinator {
    const NAME: &'static str = "coordinator";

    async fn build(ctx: &Context) -> anyhow::Result<Arc<Self>> {
        Ok(Coordinator::new(
            ctx.store().await?,
            ctx.queue().await?,
            ctx.peers().clone(),
            ctx.settings().clone(),
            ctx.stop_token(),
        ))
    }

    /// The RPCs, then every run a previous process left unfinished, resumed.
    async fn mount(self: &Arc<Self>, server: &mut GrpcServer, ctx: &Context) -> anyhow::Result<()> {
        grpc::mount(self.clone(), server);
        let me = self.clone();
        ctx.spawn_worker(async move {
            match me.resume_unfinished().await {
                Ok(0) => {}
                Ok(resumed) => tracing::info!(resumed, "resumed unfinished runs"),
                Err(e) => tracing::error!(error = %e, "could not resume unfinished runs"),
            }
        });
        let store = self.store.clone();
        ctx.ready_when(move || {
            let store = store.clone();
            async move { store.ping().await }
        });
        Ok(())
    }
}
