//! The gRPC adapter of the coordinator: protobuf in, [`Coordinator`] calls, protobuf out.

use std::pin::Pin;
use std::sync::Arc;

use agent_learning_api::{ApiError, TrainingRequest, run_event_to_pb, run_info_to_pb};
use agent_learning_proto::service_names;
use agent_learning_proto::v1 as pb;
use agent_learning_server::GrpcServer;
use agent_learning_server::auth::{Principal, Role};
use futures::{Stream, StreamExt as _};
use pb::coordinator_server::{Coordinator as CoordinatorRpc, CoordinatorServer};
use tonic::{Request, Response, Status};

use crate::{Coordinator, CoordinatorError};

impl From<CoordinatorError> for Status {
    fn from(e: CoordinatorError) -> Self {
        ApiError::from(e).into()
    }
}

pub struct CoordinatorService(pub Arc<Coordinator>);

/// The authenticated caller, when API keys are on (the server's auth layer put it there).
fn caller<T>(req: &Request<T>) -> Option<Arc<Principal>> {
    req.extensions().get::<Arc<Principal>>().cloned()
}

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
        let run = self
            .0
            .start_training(TrainingRequest {
                namespace: r.namespace,
                demos_jsonl: r.demos_jsonl,
                env: r.env,
                config_json: r.config_json,
            })
            .await?;
        Ok(Response::new(run_info_to_pb(run)))
    }

    async fn start_live_loop(
        &self,
        req: Request<pb::StartLiveLoopRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let r = agent_learning_api::LiveLoopRequest::from_pb(req.into_inner());
        let run = self.0.start_live_loop(r).await?;
        Ok(Response::new(run_info_to_pb(run)))
    }

    async fn get_run(&self, req: Request<pb::GetRunRequest>) -> Result<Response<pb::Run>, Status> {
        let caller = caller(&req);
        let run = self.0.get_run(&req.into_inner().run_id).await?;
        if let Some(p) = caller {
            p.check(Role::Read, &run.namespace)?;
        }
        Ok(Response::new(run_info_to_pb(run)))
    }

    type WatchRunStream = Pin<Box<dyn Stream<Item = Result<pb::RunEvent, Status>> + Send>>;

    async fn watch_run(
        &self,
        req: Request<pb::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let caller = caller(&req);
        let run_id = req.into_inner().run_id;
        if let Some(p) = caller {
            p.check(Role::Read, &self.0.get_run(&run_id).await?.namespace)?;
        }
        let events = self.0.watch_run(&run_id).await?;
        Ok(Response::new(Box::pin(
            events.map(|e| e.map(run_event_to_pb).map_err(Status::from)),
        )))
    }

    async fn list_runs(
        &self,
        req: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let r = req.into_inner();
        let page = self
            .0
            .list_runs(&r.namespace, r.page_size, &r.page_token)
            .await?;
        Ok(Response::new(pb::ListRunsResponse {
            runs: page.runs.into_iter().map(run_info_to_pb).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn cancel_run(
        &self,
        req: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let caller = caller(&req);
        let run_id = req.into_inner().run_id;
        // The run's namespace decides, so an admin of one tenant cannot cancel another's run.
        if let Some(p) = caller {
            p.check(Role::Admin, &self.0.get_run(&run_id).await?.namespace)?;
        }
        let run = self.0.cancel_run(&run_id).await?;
        Ok(Response::new(run_info_to_pb(run)))
    }
}
