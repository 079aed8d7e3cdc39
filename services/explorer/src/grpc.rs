//! The gRPC adapter of the explorer: protobuf in, [`Explorer`] calls, a stream of protobuf
//! rollouts out.

use std::pin::Pin;
use std::sync::Arc;

use agent_learning_api::{ApiError, Demo, ExploreRequest, ExplorerApi as _};
use agent_learning_proto::convert::{rollout_to_pb, transition_from_pb};
use agent_learning_proto::service_names;
use agent_learning_proto::v1 as pb;
use agent_learning_server::GrpcServer;
use futures::{Stream, StreamExt as _};
use pb::explorer_server::{Explorer as ExplorerRpc, ExplorerServer};
use tonic::{Request, Response, Status};

use crate::{Explorer, ExplorerError};

impl From<ExplorerError> for Status {
    fn from(e: ExplorerError) -> Self {
        ApiError::from(e).into()
    }
}

pub fn explore_request_from_pb(r: pb::ExploreRequest) -> ExploreRequest {
    ExploreRequest {
        namespace: r.namespace,
        run_id: r.run_id,
        demos: r
            .demos
            .into_iter()
            .map(|d| Demo {
                id: d.id,
                env: d.env,
                seed: d.seed,
                steps: d.steps.into_iter().map(transition_from_pb).collect(),
            })
            .collect(),
        env: r.env,
        alternatives: r.alternatives,
        branch_points: r.branch_points,
        every_step: r.every_step,
        publish: r.publish,
    }
}

pub struct ExplorerService(pub Arc<Explorer>);

pub fn mount(explorer: Arc<Explorer>, server: &mut GrpcServer) {
    let max = server.limits().max_message_bytes;
    server.routes_mut().add_service(
        ExplorerServer::new(ExplorerService(explorer))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    server.track(service_names::EXPLORER);
}

#[tonic::async_trait]
impl ExplorerRpc for ExplorerService {
    type ExploreStream = Pin<Box<dyn Stream<Item = Result<pb::Rollout, Status>> + Send>>;

    async fn explore(
        &self,
        req: Request<pb::ExploreRequest>,
    ) -> Result<Response<Self::ExploreStream>, Status> {
        let stream = self
            .0
            .explore(explore_request_from_pb(req.into_inner()))
            .await?;
        Ok(Response::new(Box::pin(
            stream.map(|r| r.map(rollout_to_pb).map_err(Status::from)),
        )))
    }
}
