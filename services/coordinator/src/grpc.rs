//! The `agent_learning.v1.Coordinator` contract.

use std::sync::Arc;

use agent_learning_domain::validate_namespace;
use agent_learning_envs::parse_demos;
use agent_learning_proto::v1 as pb;
use agent_learning_proto::v1::coordinator_server::Coordinator as CoordinatorRpc;
use agent_learning_runtime::ServiceError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::Coordinator;
use crate::config::TrainingConfig;
use crate::driver::event;
use crate::runs::{self, NewRun, RunState};

const MAX_PAGE: u32 = 500;

pub struct CoordinatorService(pub Arc<Coordinator>);

impl Coordinator {
    /// Validates everything, then records the run in one transaction and starts it.
    pub async fn start_training(
        self: &Arc<Self>,
        r: pb::StartTrainingRequest,
    ) -> Result<pb::Run, ServiceError> {
        validate_namespace("namespace", &r.namespace)?;
        let env = r.env.trim();
        if env.is_empty() {
            return Err(ServiceError::invalid("env", "must not be empty"));
        }
        if !env.starts_with("grpc://") {
            agent_learning_envs::factory(env)
                .map_err(|e| ServiceError::invalid("env", e.to_string()))?;
        }
        if r.demos_jsonl.trim().is_empty() {
            return Err(ServiceError::invalid("demos_jsonl", "must not be empty"));
        }
        let demos = parse_demos(r.demos_jsonl.as_bytes(), "demos_jsonl")
            .map_err(|e| ServiceError::invalid("demos_jsonl", e.to_string()))?;
        if !env.starts_with("grpc://") {
            let mut wrong = Vec::new();
            for (i, line) in r
                .demos_jsonl
                .lines()
                .filter(|l| !l.trim().is_empty())
                .enumerate()
            {
                if let Some(d) = demos.get(i)
                    && d.env != env
                {
                    wrong.push(format!(
                        "line {}: env {:?} differs from the run's env {env:?}",
                        i + 1,
                        d.env
                    ));
                }
                let _ = line;
            }
            if !wrong.is_empty() {
                return Err(ServiceError::invalid("demos_jsonl", wrong.join("; ")));
            }
        }
        let cfg = TrainingConfig::from_json(&self.settings, &r.config_json)?;
        let id = uuid::Uuid::new_v4().to_string();
        runs::create(
            &self.store,
            NewRun {
                id: &id,
                namespace: &r.namespace,
                env,
                config: &serde_json::to_string(&cfg).map_err(ServiceError::internal)?,
                demos: &r.demos_jsonl,
            },
        )
        .await?;
        tracing::info!(run = %id, namespace = %r.namespace, demos = demos.len(), env, "training run recorded");
        self.drive(id.clone()).await;
        let (run, stages) = runs::load(&self.store, &id).await?;
        Ok(runs::to_pb(&run, &stages))
    }
}

#[tonic::async_trait]
impl CoordinatorRpc for CoordinatorService {
    async fn start_training(
        &self,
        req: Request<pb::StartTrainingRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        Ok(Response::new(
            self.0.start_training(req.into_inner()).await?,
        ))
    }

    async fn start_live_loop(
        &self,
        _req: Request<pb::StartLiveLoopRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        Err(Status::unimplemented(
            "the live loop is not available yet; use StartTraining",
        ))
    }

    async fn get_run(&self, req: Request<pb::GetRunRequest>) -> Result<Response<pb::Run>, Status> {
        let id = req.into_inner().run_id;
        if id.trim().is_empty() {
            return Err(ServiceError::invalid("run_id", "must not be empty").into());
        }
        let (run, stages) = runs::load(&self.0.store, &id).await?;
        Ok(Response::new(runs::to_pb(&run, &stages)))
    }

    type WatchRunStream = ReceiverStream<Result<pb::RunEvent, Status>>;

    async fn watch_run(
        &self,
        req: Request<pb::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let id = req.into_inner().run_id;
        if id.trim().is_empty() {
            return Err(ServiceError::invalid("run_id", "must not be empty").into());
        }
        // Subscribe before reading the state, so nothing between the two is missed.
        let live = self.0.subscribe(&id).await;
        let (run, stages) = runs::load(&self.0.store, &id).await?;
        let state = RunState::parse(&run.state);
        let (tx, rx) = mpsc::channel(256);
        let current = stages.iter().find(|s| s.stage == run.current_stage);
        let snapshot = event(
            &id,
            &run.current_stage,
            current.map(|s| s.done.max(0) as u64).unwrap_or(0),
            current.map(|s| s.total.max(0) as u64).unwrap_or(0),
            state,
            run.error.clone(),
        );
        let _ = tx.send(Ok(snapshot)).await;
        if let (Some(mut live), false) = (live, state.terminal()) {
            tokio::spawn(async move {
                loop {
                    match live.recv().await {
                        Ok(e) => {
                            let end = pb::RunState::try_from(e.state).is_ok_and(|s| {
                                matches!(
                                    s,
                                    pb::RunState::Succeeded
                                        | pb::RunState::Failed
                                        | pb::RunState::Cancelled
                                )
                            });
                            if tx.send(Ok(e)).await.is_err() || end {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_runs(
        &self,
        req: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let r = req.into_inner();
        if !r.namespace.is_empty() {
            validate_namespace("namespace", &r.namespace).map_err(ServiceError::from)?;
        }
        if r.page_size > MAX_PAGE {
            return Err(
                ServiceError::invalid("page_size", format!("must be at most {MAX_PAGE}")).into(),
            );
        }
        let limit = if r.page_size == 0 { 50 } else { r.page_size } as u64;
        let offset: u64 = if r.page_token.is_empty() {
            0
        } else {
            r.page_token.parse().map_err(|_| {
                ServiceError::invalid("page_token", "not a token this server issued")
            })?
        };
        let (runs, more) = runs::list(&self.0.store, &r.namespace, limit, offset).await?;
        Ok(Response::new(pb::ListRunsResponse {
            runs,
            next_page_token: if more {
                (offset + limit).to_string()
            } else {
                String::new()
            },
        }))
    }

    async fn cancel_run(
        &self,
        req: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let id = req.into_inner().run_id;
        if id.trim().is_empty() {
            return Err(ServiceError::invalid("run_id", "must not be empty").into());
        }
        let (run, _) = runs::load(&self.0.store, &id).await?;
        let state = RunState::parse(&run.state);
        if state.terminal() {
            return Err(ServiceError::FailedPrecondition(format!(
                "run {id} already {}",
                state.as_str()
            ))
            .into());
        }
        runs::set_state(
            &self.0.store,
            &id,
            RunState::Cancelled,
            None,
            Some("cancelled by request"),
        )
        .await?;
        self.0.cancel(&id).await;
        let (run, stages) = runs::load(&self.0.store, &id).await?;
        Ok(Response::new(runs::to_pb(&run, &stages)))
    }
}
