//! The curator, as the policy reaches it: the playbook context for a state, and votes on the
//! bullets a decision used.

use agent_learning_domain::Stage;
use agent_learning_proto::convert::stage_to_pb;
use agent_learning_proto::v1 as pb;
use async_trait::async_trait;
use tonic::transport::Channel;

use crate::ApiError;

/// Helpful and harmful votes on one bullet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackItem {
    pub bullet_id: String,
    pub helpful: u32,
    pub harmful: u32,
}

/// The playbook text a policy puts in its prompt, and the bullets it holds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RenderedContext {
    pub text: String,
    pub bullet_ids: Vec<String>,
    pub tokens: u32,
}

#[async_trait]
pub trait CuratorApi: Send + Sync {
    /// The bullets most relevant to `state`, at or above `min_stage`, within `token_budget`.
    async fn render_context(
        &self,
        ns: &str,
        state: &str,
        token_budget: u32,
        min_stage: Stage,
    ) -> Result<RenderedContext, ApiError>;

    /// Applies the votes once per `feedback_id`; returns whether it was a replay.
    async fn record_feedback(
        &self,
        ns: &str,
        feedback_id: &str,
        items: Vec<FeedbackItem>,
    ) -> Result<bool, ApiError>;
}

#[derive(Clone)]
pub struct CuratorClient(pb::curator_client::CuratorClient<Channel>);

impl CuratorClient {
    pub fn new(channel: Channel) -> Self {
        Self(pb::curator_client::CuratorClient::new(channel))
    }
}

#[async_trait]
impl CuratorApi for CuratorClient {
    async fn render_context(
        &self,
        ns: &str,
        state: &str,
        token_budget: u32,
        min_stage: Stage,
    ) -> Result<RenderedContext, ApiError> {
        let r = self
            .0
            .clone()
            .render_context(pb::RenderContextRequest {
                namespace: ns.to_owned(),
                state: state.to_owned(),
                token_budget,
                min_stage: stage_to_pb(min_stage) as i32,
            })
            .await?
            .into_inner();
        Ok(RenderedContext {
            text: r.text,
            bullet_ids: r.bullet_ids,
            tokens: r.tokens,
        })
    }

    async fn record_feedback(
        &self,
        ns: &str,
        feedback_id: &str,
        items: Vec<FeedbackItem>,
    ) -> Result<bool, ApiError> {
        let r = self
            .0
            .clone()
            .record_feedback(pb::RecordFeedbackRequest {
                namespace: ns.to_owned(),
                feedback: items
                    .into_iter()
                    .map(|f| pb::BulletFeedback {
                        bullet_id: f.bullet_id,
                        helpful: f.helpful,
                        harmful: f.harmful,
                    })
                    .collect(),
                feedback_id: feedback_id.to_owned(),
            })
            .await?
            .into_inner();
        Ok(r.replayed)
    }
}
