//! The gRPC adapter of the reflector: protobuf in, [`Reflector`] calls, protobuf out.

use std::sync::Arc;

use agent_learning_api::{ApiError, ReflectRequest};
use agent_learning_proto::convert::{reflection_to_pb, rollout_from_pb};
use agent_learning_proto::service_names;
use agent_learning_proto::v1 as pb;
use agent_learning_server::GrpcServer;
use pb::reflector_server::{Reflector as ReflectorRpc, ReflectorServer};
use tonic::{Request, Response, Status};

use crate::{Reflector, ReflectorError};

impl From<ReflectorError> for Status {
    fn from(e: ReflectorError) -> Self {
        ApiError::from(e).into()
    }
}

pub struct ReflectorService(pub Arc<Reflector>);

pub fn mount(reflector: Arc<Reflector>, server: &mut GrpcServer) {
    let max = server.limits().max_message_bytes;
    server.routes_mut().add_service(
        ReflectorServer::new(ReflectorService(reflector))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    server.track(service_names::REFLECTOR);
}

#[tonic::async_trait]
impl ReflectorRpc for ReflectorService {
    async fn reflect(
        &self,
        req: Request<pb::ReflectRequest>,
    ) -> Result<Response<pb::Reflection>, Status> {
        let r = req.into_inner();
        let alternatives = r
            .alternatives
            .into_iter()
            .enumerate()
            .map(|(i, a)| rollout_from_pb(&format!("alternatives[{i}]"), a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::from(ApiError::Invalid(e)))?;
        let reflection = self
            .0
            .reflect(ReflectRequest {
                namespace: r.namespace,
                state: r.state,
                expert_action: r.expert_action,
                expert_next_state: r.expert_next_state,
                alternatives,
            })
            .await?;
        Ok(Response::new(reflection_to_pb(reflection)))
    }
}
