//! The coordinator: training runs, their stages and their events.

use std::pin::Pin;

use agent_learning_domain::{RunStage, RunState};
use agent_learning_proto::convert::{
    Malformed, run_stage_from_pb, run_state_from_pb, run_state_to_pb, timestamp, timestamp_from_pb,
};
use agent_learning_proto::v1 as pb;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt as _};
use tonic::transport::Channel;

use crate::ApiError;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrainingRequest {
    pub namespace: String,
    /// Expert demonstrations, one JSON episode a line.
    pub demos_jsonl: String,
    /// A built-in environment or `grpc://HOST:PORT`.
    pub env: String,
    /// Per-run overrides of the pipeline and policy settings, as JSON; empty for none.
    pub config_json: String,
}

/// A live loop: episodes acting through Decide while the namespace learns from them. Zero
/// means the default for every number.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LiveLoopRequest {
    pub namespace: String,
    /// A built-in environment or `grpc://HOST:PORT`.
    pub env: String,
    pub episodes: u32,
    pub reflect_every: u32,
    pub concurrency: u32,
    pub max_steps: u32,
    pub first_seed: u64,
    pub stop_success_rate: f64,
    pub stop_window: u32,
    pub history: u32,
    pub curate_every: u32,
}

impl LiveLoopRequest {
    pub fn to_pb(&self) -> pb::StartLiveLoopRequest {
        pb::StartLiveLoopRequest {
            namespace: self.namespace.clone(),
            env: self.env.clone(),
            episodes: self.episodes,
            reflect_every: self.reflect_every,
            concurrency: self.concurrency,
            max_steps: self.max_steps,
            first_seed: self.first_seed,
            stop_success_rate: self.stop_success_rate,
            stop_window: self.stop_window,
            history: self.history,
            curate_every: self.curate_every,
        }
    }

    pub fn from_pb(r: pb::StartLiveLoopRequest) -> Self {
        Self {
            namespace: r.namespace,
            env: r.env,
            episodes: r.episodes,
            reflect_every: r.reflect_every,
            concurrency: r.concurrency,
            max_steps: r.max_steps,
            first_seed: r.first_seed,
            stop_success_rate: r.stop_success_rate,
            stop_window: r.stop_window,
            history: r.history,
            curate_every: r.curate_every,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StageInfo {
    pub stage: RunStage,
    pub done: u64,
    pub total: u64,
    pub seconds: f64,
}

/// A run as callers see it: its state, its stages' progress, and its summary once finished.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    pub id: String,
    pub namespace: String,
    pub kind: String,
    pub state: RunState,
    pub current_stage: Option<RunStage>,
    pub stages: Vec<StageInfo>,
    pub error: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The run summary as JSON; empty until the run succeeds.
    pub summary_json: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunEvent {
    pub run_id: String,
    /// `None` for the event that ends the run.
    pub stage: Option<RunStage>,
    pub done: u64,
    pub total: u64,
    pub state: RunState,
    pub message: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunPage {
    pub runs: Vec<RunInfo>,
    /// Empty on the last page.
    pub next_page_token: String,
}

pub type RunEventStream = Pin<Box<dyn Stream<Item = Result<RunEvent, ApiError>> + Send>>;

#[async_trait]
pub trait CoordinatorApi: Send + Sync {
    /// Validates everything, records the run in one transaction, and starts driving it.
    async fn start_training(&self, req: TrainingRequest) -> Result<RunInfo, ApiError>;
    /// Validates the request, records a live run and starts driving it.
    async fn start_live_loop(&self, req: LiveLoopRequest) -> Result<RunInfo, ApiError>;
    async fn get_run(&self, run_id: &str) -> Result<RunInfo, ApiError>;
    /// The run's current state, then its events until it ends.
    async fn watch_run(&self, run_id: &str) -> Result<RunEventStream, ApiError>;
    /// Newest first; all namespaces when `ns` is empty; `page_size` 0 for the default.
    async fn list_runs(
        &self,
        ns: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<RunPage, ApiError>;
    async fn cancel_run(&self, run_id: &str) -> Result<RunInfo, ApiError>;
}

pub fn run_info_to_pb(r: RunInfo) -> pb::Run {
    pb::Run {
        id: r.id,
        namespace: r.namespace,
        kind: r.kind,
        state: run_state_to_pb(r.state) as i32,
        current_stage: r
            .current_stage
            .map(|s| s.as_str())
            .unwrap_or_default()
            .to_owned(),
        stages: r
            .stages
            .into_iter()
            .map(|s| pb::StageProgress {
                stage: s.stage.as_str().to_owned(),
                done: s.done,
                total: s.total,
                seconds: s.seconds,
            })
            .collect(),
        error: r.error,
        created_at: Some(timestamp(r.created_at)),
        updated_at: Some(timestamp(r.updated_at)),
        summary_json: r.summary_json,
    }
}

pub fn run_info_from_pb(r: pb::Run) -> Result<RunInfo, Malformed> {
    Ok(RunInfo {
        state: run_state_from_pb(r.state)?,
        current_stage: run_stage_from_pb(&r.current_stage)?,
        stages: r
            .stages
            .into_iter()
            .map(|s| {
                Ok(StageInfo {
                    stage: run_stage_from_pb(&s.stage)?.ok_or_else(|| Malformed {
                        what: "run stage",
                        reason: "empty".into(),
                    })?,
                    done: s.done,
                    total: s.total,
                    seconds: s.seconds,
                })
            })
            .collect::<Result<_, Malformed>>()?,
        id: r.id,
        namespace: r.namespace,
        kind: r.kind,
        error: r.error,
        created_at: timestamp_from_pb(r.created_at),
        updated_at: timestamp_from_pb(r.updated_at),
        summary_json: r.summary_json,
    })
}

pub fn run_event_to_pb(e: RunEvent) -> pb::RunEvent {
    pb::RunEvent {
        run_id: e.run_id,
        stage: e.stage.map(|s| s.as_str()).unwrap_or_default().to_owned(),
        done: e.done,
        total: e.total,
        state: run_state_to_pb(e.state) as i32,
        message: e.message,
        at: Some(timestamp(e.at)),
    }
}

pub fn run_event_from_pb(e: pb::RunEvent) -> Result<RunEvent, Malformed> {
    Ok(RunEvent {
        stage: run_stage_from_pb(&e.stage)?,
        state: run_state_from_pb(e.state)?,
        run_id: e.run_id,
        done: e.done,
        total: e.total,
        message: e.message,
        at: timestamp_from_pb(e.at),
    })
}

#[derive(Clone)]
pub struct CoordinatorClient(pb::coordinator_client::CoordinatorClient<crate::KeyedChannel>);

impl CoordinatorClient {
    /// A client presenting the process's API key (see [`crate::set_process_key`]).
    pub fn new(channel: Channel) -> Self {
        Self::new_with_key(channel, crate::ApiKey::process())
    }

    pub fn new_with_key(channel: Channel, key: crate::ApiKey) -> Self {
        Self(pb::coordinator_client::CoordinatorClient::with_interceptor(
            channel, key,
        ))
    }

    /// With explicit message-size limits: demo files can be large.
    pub fn with_max_message_bytes(channel: Channel, max: usize) -> Self {
        Self(
            pb::coordinator_client::CoordinatorClient::with_interceptor(
                channel,
                crate::ApiKey::process(),
            )
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        )
    }

    fn client(&self) -> pb::coordinator_client::CoordinatorClient<crate::KeyedChannel> {
        self.0.clone()
    }
}

fn answer(e: Malformed) -> ApiError {
    ApiError::internal("coordinator answer", e)
}

#[async_trait]
impl CoordinatorApi for CoordinatorClient {
    async fn start_training(&self, req: TrainingRequest) -> Result<RunInfo, ApiError> {
        let r = self
            .client()
            .start_training(pb::StartTrainingRequest {
                namespace: req.namespace,
                demos_jsonl: req.demos_jsonl,
                env: req.env,
                config_json: req.config_json,
            })
            .await?
            .into_inner();
        run_info_from_pb(r).map_err(answer)
    }

    async fn start_live_loop(&self, req: LiveLoopRequest) -> Result<RunInfo, ApiError> {
        let r = self
            .client()
            .start_live_loop(req.to_pb())
            .await?
            .into_inner();
        run_info_from_pb(r).map_err(answer)
    }

    async fn get_run(&self, run_id: &str) -> Result<RunInfo, ApiError> {
        let r = self
            .client()
            .get_run(pb::GetRunRequest {
                run_id: run_id.to_owned(),
            })
            .await?
            .into_inner();
        run_info_from_pb(r).map_err(answer)
    }

    async fn watch_run(&self, run_id: &str) -> Result<RunEventStream, ApiError> {
        let stream = self
            .client()
            .watch_run(pb::WatchRunRequest {
                run_id: run_id.to_owned(),
            })
            .await?
            .into_inner();
        Ok(Box::pin(
            stream.map(|e| run_event_from_pb(e?).map_err(answer)),
        ))
    }

    async fn list_runs(
        &self,
        ns: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<RunPage, ApiError> {
        let r = self
            .client()
            .list_runs(pb::ListRunsRequest {
                namespace: ns.to_owned(),
                page_size,
                page_token: page_token.to_owned(),
            })
            .await?
            .into_inner();
        Ok(RunPage {
            runs: r
                .runs
                .into_iter()
                .map(|r| run_info_from_pb(r).map_err(answer))
                .collect::<Result<_, _>>()?,
            next_page_token: r.next_page_token,
        })
    }

    async fn cancel_run(&self, run_id: &str) -> Result<RunInfo, ApiError> {
        let r = self
            .client()
            .cancel_run(pb::CancelRunRequest {
                run_id: run_id.to_owned(),
            })
            .await?
            .into_inner();
        run_info_from_pb(r).map_err(answer)
    }
}
