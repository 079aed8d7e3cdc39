//! The gRPC adapter of the world model: protobuf in, [`WorldModel`] calls, protobuf out.

use std::sync::Arc;

use agent_learning_api::ApiError;
use agent_learning_proto::convert::{transition_from_pb, transition_to_pb, usage_to_pb};
use agent_learning_proto::service_names;
use agent_learning_proto::v1 as pb;
use agent_learning_server::GrpcServer;
use pb::world_model_server::{WorldModel as WorldModelRpc, WorldModelServer};
use tonic::{Request, Response, Status};

use crate::{WorldModel, WorldModelError};

impl From<WorldModelError> for Status {
    fn from(e: WorldModelError) -> Self {
        ApiError::from(e).into()
    }
}

pub struct WorldModelService(pub Arc<WorldModel>);

pub fn mount(wm: Arc<WorldModel>, server: &mut GrpcServer) {
    let max = server.limits().max_message_bytes;
    server.routes_mut().add_service(
        WorldModelServer::new(WorldModelService(wm))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    server.track(service_names::WORLD_MODEL);
}

#[tonic::async_trait]
impl WorldModelRpc for WorldModelService {
    async fn fit(&self, req: Request<pb::FitRequest>) -> Result<Response<pb::FitResponse>, Status> {
        let r = req.into_inner();
        let ts: Vec<_> = r.transitions.into_iter().map(transition_from_pb).collect();
        let f = self.0.fit(&r.namespace, &ts, &r.source).await?;
        Ok(Response::new(pb::FitResponse {
            stored: f.stored,
            duplicates: f.duplicates,
        }))
    }

    async fn predict(
        &self,
        req: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::Prediction>, Status> {
        let r = req.into_inner();
        let p = self
            .0
            .predict(&r.namespace, &r.state, &r.action, r.k)
            .await?;
        Ok(Response::new(pb::Prediction {
            next_state: p.next_state,
            confidence: p.confidence,
            neighbours: p
                .neighbours
                .into_iter()
                .map(|n| pb::Neighbour {
                    transition: Some(transition_to_pb(n.transition)),
                    similarity: n.similarity,
                })
                .collect(),
            usage: Some(usage_to_pb(p.usage)),
        }))
    }

    async fn evaluate(
        &self,
        req: Request<pb::EvaluateRequest>,
    ) -> Result<Response<pb::EvaluateResponse>, Status> {
        let r = req.into_inner();
        let held: Vec<_> = r.held_out.into_iter().map(transition_from_pb).collect();
        let a = self.0.evaluate(&r.namespace, &held).await?;
        Ok(Response::new(pb::EvaluateResponse {
            evaluated: a.evaluated,
            exact_match: a.exact_match,
            mean_similarity: a.mean_similarity,
        }))
    }
}
