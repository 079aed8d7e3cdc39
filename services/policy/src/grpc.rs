//! The gRPC adapter of the policy: protobuf in, [`Policy`] calls, protobuf out.

use std::sync::Arc;

use agent_learning_api::{ApiError, CompileRequest, DecideRequest};
use agent_learning_domain::InvalidInput;
use agent_learning_proto::convert::{policy_to_pb, stage_from_pb, usage_to_pb};
use agent_learning_proto::service_names;
use agent_learning_proto::v1 as pb;
use agent_learning_server::GrpcServer;
use pb::policy_server::{Policy as PolicyRpc, PolicyServer};
use tonic::{Request, Response, Status};

use crate::{Policy, PolicyError};

impl From<PolicyError> for Status {
    fn from(e: PolicyError) -> Self {
        ApiError::from(e).into()
    }
}

fn invalid(e: InvalidInput) -> Status {
    ApiError::Invalid(e).into()
}

/// An empty version is the latest; anything else must be a version number.
fn version(field: &str, v: &str) -> Result<Option<i64>, Status> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    v.parse().map(Some).map_err(|_| {
        invalid(InvalidInput::new(
            field,
            format!("{v:?} is not a policy version number"),
        ))
    })
}

pub struct PolicyService(pub Arc<Policy>);

pub fn mount(policy: Arc<Policy>, server: &mut GrpcServer) {
    let max = server.limits().max_message_bytes;
    server.routes_mut().add_service(
        PolicyServer::new(PolicyService(policy))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
    );
    server.track(service_names::POLICY);
}

#[tonic::async_trait]
impl PolicyRpc for PolicyService {
    async fn compile(
        &self,
        req: Request<pb::CompileRequest>,
    ) -> Result<Response<pb::PolicyVersion>, Status> {
        let r = req.into_inner();
        let compile = CompileRequest {
            namespace: r.namespace,
            instructions_template: Some(r.instructions_template).filter(|t| !t.trim().is_empty()),
            exemplars_k: Some(r.exemplars_k).filter(|k| *k > 0),
            min_stage: stage_from_pb("min_stage", r.min_stage).map_err(invalid)?,
            token_budget: Some(r.token_budget).filter(|b| *b > 0),
        };
        Ok(Response::new(policy_to_pb(self.0.compile(compile).await?)))
    }

    async fn decide(
        &self,
        req: Request<pb::DecideRequest>,
    ) -> Result<Response<pb::Decision>, Status> {
        let r = req.into_inner();
        let d = self
            .0
            .decide(DecideRequest {
                policy_version: version("policy_version", &r.policy_version)?,
                namespace: r.namespace,
                state: r.state,
                valid_actions: r.valid_actions,
                history: r
                    .history
                    .into_iter()
                    .map(|h| agent_learning_api::PastStep {
                        state: h.state,
                        action: h.action,
                        next_state: h.next_state,
                    })
                    .collect(),
            })
            .await?;
        Ok(Response::new(pb::Decision {
            decision_id: d.decision_id,
            action: d.action,
            reasoning: d.reasoning,
            bullet_ids: d.bullet_ids,
            policy_version: d.policy_version.to_string(),
            exemplar_ids: d.exemplar_ids,
            fallback: d.fallback,
            usage: Some(usage_to_pb(d.usage)),
        }))
    }

    async fn feedback(
        &self,
        req: Request<pb::FeedbackRequest>,
    ) -> Result<Response<pb::FeedbackResponse>, Status> {
        let r = req.into_inner();
        let bullet_ids = self
            .0
            .feedback(&r.namespace, &r.decision_id, r.helpful)
            .await?;
        Ok(Response::new(pb::FeedbackResponse { bullet_ids }))
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::PolicyVersion>, Status> {
        let r = req.into_inner();
        let v = version("version", &r.version)?;
        Ok(Response::new(policy_to_pb(
            self.0.get(&r.namespace, v).await?,
        )))
    }
}
