//! The policy: compiled versions, and `Decide(state) -> action + reasoning`.

use agent_learning_domain::{PolicyVersion, Stage, TokenUsage};
use agent_learning_proto::convert::{policy_from_pb, stage_to_pb, usage_from_pb};
use agent_learning_proto::v1 as pb;
use async_trait::async_trait;
use tonic::transport::Channel;

use crate::ApiError;

/// What to compile; `None` takes the service's default.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CompileRequest {
    pub namespace: String,
    pub instructions_template: Option<String>,
    pub exemplars_k: Option<u32>,
    pub min_stage: Option<Stage>,
    pub token_budget: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct DecideRequest {
    pub namespace: String,
    pub state: String,
    pub valid_actions: Vec<String>,
    /// The latest version when `None`.
    pub policy_version: Option<i64>,
    /// The episode's most recent steps, oldest first.
    pub history: Vec<PastStep>,
}

/// A step the episode already took, as Decide is told of it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PastStep {
    pub state: String,
    pub action: String,
    pub next_state: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub decision_id: String,
    pub action: String,
    pub reasoning: String,
    pub bullet_ids: Vec<String>,
    pub policy_version: i64,
    pub exemplar_ids: Vec<String>,
    /// The model's answer was unusable and the nearest exemplar's action was taken.
    pub fallback: bool,
    pub usage: TokenUsage,
}

#[async_trait]
pub trait PolicyApi: Send + Sync {
    async fn compile(&self, req: CompileRequest) -> Result<PolicyVersion, ApiError>;
    async fn decide(&self, req: DecideRequest) -> Result<Decision, ApiError>;
    /// Credits (or blames) the bullets the decision used, once per decision; returns them.
    async fn feedback(
        &self,
        ns: &str,
        decision_id: &str,
        helpful: bool,
    ) -> Result<Vec<String>, ApiError>;
    /// The given version, or the latest when `None`.
    async fn get_policy(&self, ns: &str, version: Option<i64>) -> Result<PolicyVersion, ApiError>;
}

#[derive(Clone)]
pub struct PolicyClient(pb::policy_client::PolicyClient<crate::KeyedChannel>);

impl PolicyClient {
    /// A client presenting the process's API key (see [`crate::set_process_key`]).
    pub fn new(channel: Channel) -> Self {
        Self::new_with_key(channel, crate::ApiKey::process())
    }

    pub fn new_with_key(channel: Channel, key: crate::ApiKey) -> Self {
        Self(pb::policy_client::PolicyClient::with_interceptor(
            channel, key,
        ))
    }
}

fn version_from_pb(p: pb::PolicyVersion) -> Result<PolicyVersion, ApiError> {
    policy_from_pb(p).map_err(|e| ApiError::internal("policy answer", e))
}

#[async_trait]
impl PolicyApi for PolicyClient {
    async fn compile(&self, req: CompileRequest) -> Result<PolicyVersion, ApiError> {
        let p = self
            .0
            .clone()
            .compile(pb::CompileRequest {
                namespace: req.namespace,
                instructions_template: req.instructions_template.unwrap_or_default(),
                exemplars_k: req.exemplars_k.unwrap_or(0),
                min_stage: req.min_stage.map_or(pb::Stage::Unspecified, stage_to_pb) as i32,
                token_budget: req.token_budget.unwrap_or(0),
            })
            .await?
            .into_inner();
        version_from_pb(p)
    }

    async fn decide(&self, req: DecideRequest) -> Result<Decision, ApiError> {
        let d = self
            .0
            .clone()
            .decide(pb::DecideRequest {
                namespace: req.namespace,
                state: req.state,
                valid_actions: req.valid_actions,
                policy_version: req
                    .policy_version
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                history: req
                    .history
                    .into_iter()
                    .map(|h| pb::PastStep {
                        state: h.state,
                        action: h.action,
                        next_state: h.next_state,
                    })
                    .collect(),
            })
            .await?
            .into_inner();
        Ok(Decision {
            policy_version: d.policy_version.parse().map_err(|_| ApiError::Internal {
                message: format!("policy answered version {:?}", d.policy_version),
                source: None,
            })?,
            decision_id: d.decision_id,
            action: d.action,
            reasoning: d.reasoning,
            bullet_ids: d.bullet_ids,
            exemplar_ids: d.exemplar_ids,
            fallback: d.fallback,
            usage: usage_from_pb(d.usage),
        })
    }

    async fn feedback(
        &self,
        ns: &str,
        decision_id: &str,
        helpful: bool,
    ) -> Result<Vec<String>, ApiError> {
        Ok(self
            .0
            .clone()
            .feedback(pb::FeedbackRequest {
                namespace: ns.to_owned(),
                decision_id: decision_id.to_owned(),
                helpful,
                comment: String::new(),
            })
            .await?
            .into_inner()
            .bullet_ids)
    }

    async fn get_policy(&self, ns: &str, version: Option<i64>) -> Result<PolicyVersion, ApiError> {
        let p = self
            .0
            .clone()
            .get_policy(pb::GetPolicyRequest {
                namespace: ns.to_owned(),
                version: version.map(|v| v.to_string()).unwrap_or_default(),
            })
            .await?
            .into_inner();
        version_from_pb(p)
    }
}
