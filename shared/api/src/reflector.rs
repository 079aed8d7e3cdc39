//! The reflector: a four-section reflection on what the expert did and what else was tried.

use agent_learning_domain::{Reflection, Rollout};
use agent_learning_proto::convert::{reflection_from_pb, rollout_to_pb};
use agent_learning_proto::v1 as pb;
use async_trait::async_trait;
use tonic::transport::Channel;

use crate::ApiError;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReflectRequest {
    pub namespace: String,
    pub state: String,
    pub expert_action: String,
    pub expert_next_state: String,
    pub alternatives: Vec<Rollout>,
}

#[async_trait]
pub trait ReflectorApi: Send + Sync {
    /// The reflection on one branch point given directly, keyed by its content: the same
    /// request is reflected once.
    async fn reflect(&self, req: ReflectRequest) -> Result<Reflection, ApiError>;
}

#[derive(Clone)]
pub struct ReflectorClient(pb::reflector_client::ReflectorClient<crate::KeyedChannel>);

impl ReflectorClient {
    /// A client presenting the process's API key (see [`crate::set_process_key`]).
    pub fn new(channel: Channel) -> Self {
        Self::new_with_key(channel, crate::ApiKey::process())
    }

    pub fn new_with_key(channel: Channel, key: crate::ApiKey) -> Self {
        Self(pb::reflector_client::ReflectorClient::with_interceptor(
            channel, key,
        ))
    }
}

#[async_trait]
impl ReflectorApi for ReflectorClient {
    async fn reflect(&self, req: ReflectRequest) -> Result<Reflection, ApiError> {
        let r = self
            .0
            .clone()
            .reflect(pb::ReflectRequest {
                namespace: req.namespace,
                state: req.state,
                expert_action: req.expert_action,
                expert_next_state: req.expert_next_state,
                alternatives: req.alternatives.into_iter().map(rollout_to_pb).collect(),
            })
            .await?
            .into_inner();
        Ok(reflection_from_pb(r))
    }
}
