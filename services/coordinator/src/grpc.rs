//! The gRPC adapter of the coordinator: protobuf in, [`Coordinator`] calls, protobuf out.

use std::sync::Arc;

use agent_learning_api::ApiError;
use agent_learning_domain::InvalidInput;
use agent_learning_proto::convert::run_to_pb;
use agent_learning_proto::service_names;
use agent_learning_proto::v1 as pb;
use agent_learning_server::GrpcServer;
use pb::coordinator_server::{Coordinator as CoordinatorRpc, CoordinatorServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::driver::event;
use crate::{Coordinator, CoordinatorError};

const MAX_PAGE: u32 = 500;

impl From<CoordinatorError> for Status {
    fn from(e: CoordinatorError) -> Self {
        ApiError::from(e).into()
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> Status {
    ApiError::Invalid(InvalidInput::new(field, reason)).into()
}

pub struct CoordinatorService(pub Arc<Coordinator>);

pub fn mount(coordinator: Arc<Coordinator>, server: &mut GrpcServer) {
    let max = server.limits().max_message_bytes;
    server.routes_mut().add_service(
        CoordinatorServer::new(CoordinatorService(coordinator))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    server.track(service_names::COORDINATOR);
}

#[tonic::async_trait]
impl CoordinatorRpc for CoordinatorService {
    async fn start_training(
        &self,
        req: Request<pb::StartTrainingRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let r = req.into_inner();
        let (run, stages) = self
            .0
            .start_training(&r.namespace, &r.demos_jsonl, &r.env, &r.config_json)
            .await?;
        Ok(Response::new(run_to_pb(&run, &stages)))
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
        let (run, stages) = self.0.get_run(&req.into_inner().run_id).await?;
        Ok(Response::new(run_to_pb(&run, &stages)))
    }

    type WatchRunStream = ReceiverStream<Result<pb::RunEvent, Status>>;

    async fn watch_run(
        &self,
        req: Request<pb::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let id = req.into_inner().run_id;
        if id.trim().is_empty() {
            return Err(invalid("run_id", "must not be empty"));
        }
        // Subscribe before reading the state, so nothing between the two is missed.
        let live = self.0.subscribe(&id).await;
        let (run, stages) = self.0.get_run(&id).await?;
        let (tx, rx) = mpsc::channel(256);
        let current = stages.iter().find(|s| Some(s.stage) == run.current_stage);
        let snapshot = event(
            &id,
            run.current_stage.map(|s| s.as_str()).unwrap_or_default(),
            current.map(|s| s.done).unwrap_or(0),
            current.map(|s| s.total).unwrap_or(0),
            run.state,
            run.error.clone(),
        );
        let _ = tx.send(Ok(snapshot)).await;
        if let (Some(mut live), false) = (live, run.state.terminal()) {
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
        if r.page_size > MAX_PAGE {
            return Err(invalid("page_size", format!("must be at most {MAX_PAGE}")));
        }
        let limit = if r.page_size == 0 { 50 } else { r.page_size } as u64;
        let offset: u64 = if r.page_token.is_empty() {
            0
        } else {
            r.page_token
                .parse()
                .map_err(|_| invalid("page_token", "not a token this server issued"))?
        };
        let (runs, more) = self.0.list_runs(&r.namespace, limit, offset).await?;
        Ok(Response::new(pb::ListRunsResponse {
            runs: runs.iter().map(|(r, s)| run_to_pb(r, s)).collect(),
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
        let (run, stages) = self.0.cancel_run(&req.into_inner().run_id).await?;
        Ok(Response::new(run_to_pb(&run, &stages)))
    }
}
