//! The curator: ACE curation of insights into a staged, de-duplicated playbook, its reads,
//! votes and hand edits.

use agent_learning_domain::{Bullet, BulletEvent, DeltaOp, Insight, Stage};
use agent_learning_proto::convert::{
    Malformed, bullet_from_pb, event_from_pb, op_from_pb, stage_to_pb,
};
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

/// The bullets after a vote, and whether the vote had been applied before (a retry).
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackOutcome {
    pub bullets: Vec<Bullet>,
    pub replayed: bool,
}

/// The playbook text a policy puts in its prompt, and the bullets it holds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RenderedContext {
    pub text: String,
    pub bullet_ids: Vec<String>,
    pub tokens: u32,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlaybookQuery {
    pub stage: Option<Stage>,
    pub section: Option<String>,
    pub page_size: u32,
    pub page_token: String,
    pub include_deleted: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlaybookPage {
    pub bullets: Vec<Bullet>,
    pub next_page_token: String,
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Health {
    pub total: u64,
    pub shadow: u64,
    pub staging: u64,
    pub production: u64,
    pub quarantined: u64,
    pub deleted: u64,
    pub sections: Vec<(String, u64)>,
    pub insights_applied: u64,
    pub merges: u64,
    pub merge_rate: f64,
    pub added_last_24h: u64,
}

/// What curating a run's waiting batch took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchFlushed {
    /// Waiting insights taken: curated, or skipped as refused.
    pub insights: u64,
    /// Delta operations applied.
    pub ops: u64,
}

#[async_trait]
pub trait CuratorApi: Send + Sync {
    /// Insights in, delta operations out; all or nothing, idempotent by insight id.
    async fn curate(&self, ns: &str, insights: Vec<Insight>) -> Result<Vec<DeltaOp>, ApiError>;
    /// Curates the insights run `run_id` left waiting for their batch in `ns`, however few:
    /// the run will send no more.
    async fn flush_batch(&self, ns: &str, run_id: &str) -> Result<BatchFlushed, ApiError>;
    async fn get_playbook(&self, ns: &str, q: PlaybookQuery) -> Result<PlaybookPage, ApiError>;
    /// Bullets nearest `query`, at or above `min_stage`, with their similarity.
    async fn search(
        &self,
        ns: &str,
        query: &str,
        k: u32,
        min_stage: Stage,
        section: Option<&str>,
    ) -> Result<Vec<(Bullet, f32)>, ApiError>;
    /// The bullets most relevant to `state`, at or above `min_stage`, within `token_budget`.
    /// `state_vector`: the state's embedding when the caller has it, so it is not embedded
    /// again.
    async fn render_context(
        &self,
        ns: &str,
        state: &str,
        state_vector: Option<Vec<f32>>,
        token_budget: u32,
        min_stage: Stage,
    ) -> Result<RenderedContext, ApiError>;
    /// Applies the votes once per `feedback_id` (empty: no idempotency key).
    async fn record_feedback(
        &self,
        ns: &str,
        feedback_id: &str,
        items: Vec<FeedbackItem>,
    ) -> Result<FeedbackOutcome, ApiError>;
    async fn health(&self, ns: &str) -> Result<Health, ApiError>;
    async fn history(&self, ns: &str, bullet_id: &str) -> Result<Vec<BulletEvent>, ApiError>;
    async fn update_bullet(
        &self,
        ns: &str,
        bullet_id: &str,
        content: &str,
    ) -> Result<DeltaOp, ApiError>;
    async fn delete_bullet(
        &self,
        ns: &str,
        bullet_id: &str,
        reason: &str,
    ) -> Result<DeltaOp, ApiError>;
    async fn merge_bullets(&self, ns: &str, into: &str, from: &str) -> Result<DeltaOp, ApiError>;
    /// A stage set by hand; `None` is refused by the curator (the field must be set).
    async fn set_stage(
        &self,
        ns: &str,
        bullet_id: &str,
        stage: Option<Stage>,
        reason: &str,
    ) -> Result<Bullet, ApiError>;
}

#[derive(Clone)]
pub struct CuratorClient(pb::curator_client::CuratorClient<crate::KeyedChannel>);

impl CuratorClient {
    /// A client presenting the process's API key (see [`crate::set_process_key`]).
    pub fn new(channel: Channel) -> Self {
        Self::new_with_key(channel, crate::ApiKey::process())
    }

    pub fn new_with_key(channel: Channel, key: crate::ApiKey) -> Self {
        Self(pb::curator_client::CuratorClient::with_interceptor(
            channel, key,
        ))
    }

    /// With explicit message-size limits, for callers that read whole playbooks.
    pub fn with_max_message_bytes(channel: Channel, max: usize) -> Self {
        Self(
            pb::curator_client::CuratorClient::with_interceptor(channel, crate::ApiKey::process())
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
    }

    fn client(&self) -> pb::curator_client::CuratorClient<crate::KeyedChannel> {
        self.0.clone()
    }
}

fn answer(e: Malformed) -> ApiError {
    ApiError::internal("curator answer", e)
}

fn bullets(bs: Vec<pb::Bullet>) -> Result<Vec<Bullet>, ApiError> {
    bs.into_iter()
        .map(|b| bullet_from_pb(b).map_err(answer))
        .collect()
}

fn stage_pb(s: Option<Stage>) -> i32 {
    s.map_or(pb::Stage::Unspecified, stage_to_pb) as i32
}

#[async_trait]
impl CuratorApi for CuratorClient {
    async fn curate(&self, ns: &str, insights: Vec<Insight>) -> Result<Vec<DeltaOp>, ApiError> {
        let r = self
            .client()
            .curate(pb::CurateRequest {
                namespace: ns.to_owned(),
                insights: insights
                    .into_iter()
                    .map(|i| pb::Insight {
                        id: i.id,
                        section: i.section,
                        content: i.content,
                        source: i.source,
                    })
                    .collect(),
            })
            .await?
            .into_inner();
        r.ops
            .into_iter()
            .map(|o| op_from_pb(o).map_err(answer))
            .collect()
    }

    async fn flush_batch(&self, ns: &str, run_id: &str) -> Result<BatchFlushed, ApiError> {
        let r = self
            .client()
            .flush_batch(pb::FlushBatchRequest {
                namespace: ns.to_owned(),
                run_id: run_id.to_owned(),
            })
            .await?
            .into_inner();
        Ok(BatchFlushed {
            insights: u64::from(r.insights),
            ops: u64::from(r.ops),
        })
    }

    async fn get_playbook(&self, ns: &str, q: PlaybookQuery) -> Result<PlaybookPage, ApiError> {
        let r = self
            .client()
            .get_playbook(pb::GetPlaybookRequest {
                namespace: ns.to_owned(),
                stage: stage_pb(q.stage),
                section: q.section.unwrap_or_default(),
                page_size: q.page_size,
                page_token: q.page_token,
                include_deleted: q.include_deleted,
            })
            .await?
            .into_inner();
        Ok(PlaybookPage {
            bullets: bullets(r.bullets)?,
            next_page_token: r.next_page_token,
            total: r.total,
        })
    }

    async fn search(
        &self,
        ns: &str,
        query: &str,
        k: u32,
        min_stage: Stage,
        section: Option<&str>,
    ) -> Result<Vec<(Bullet, f32)>, ApiError> {
        let r = self
            .client()
            .search_playbook(pb::SearchPlaybookRequest {
                namespace: ns.to_owned(),
                query: query.to_owned(),
                k,
                min_stage: stage_to_pb(min_stage) as i32,
                section: section.unwrap_or_default().to_owned(),
            })
            .await?
            .into_inner();
        r.results
            .into_iter()
            .filter_map(|s| s.bullet.map(|b| (b, s.score)))
            .map(|(b, score)| Ok((bullet_from_pb(b).map_err(answer)?, score)))
            .collect()
    }

    async fn render_context(
        &self,
        ns: &str,
        state: &str,
        state_vector: Option<Vec<f32>>,
        token_budget: u32,
        min_stage: Stage,
    ) -> Result<RenderedContext, ApiError> {
        let r = self
            .client()
            .render_context(pb::RenderContextRequest {
                namespace: ns.to_owned(),
                state: state.to_owned(),
                token_budget,
                min_stage: stage_to_pb(min_stage) as i32,
                state_vector: state_vector.unwrap_or_default(),
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
    ) -> Result<FeedbackOutcome, ApiError> {
        let r = self
            .client()
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
        Ok(FeedbackOutcome {
            bullets: bullets(r.bullets)?,
            replayed: r.replayed,
        })
    }

    async fn health(&self, ns: &str) -> Result<Health, ApiError> {
        let h = self
            .client()
            .get_playbook_health(pb::GetPlaybookHealthRequest {
                namespace: ns.to_owned(),
            })
            .await?
            .into_inner();
        Ok(Health {
            total: h.total,
            shadow: h.shadow,
            staging: h.staging,
            production: h.production,
            quarantined: h.quarantined,
            deleted: h.deleted,
            sections: h
                .sections
                .into_iter()
                .map(|s| (s.section, s.count))
                .collect(),
            insights_applied: h.insights_applied,
            merges: h.merges,
            merge_rate: h.merge_rate,
            added_last_24h: h.added_last_24h,
        })
    }

    async fn history(&self, ns: &str, bullet_id: &str) -> Result<Vec<BulletEvent>, ApiError> {
        let r = self
            .client()
            .get_bullet_history(pb::GetBulletHistoryRequest {
                namespace: ns.to_owned(),
                bullet_id: bullet_id.to_owned(),
            })
            .await?
            .into_inner();
        r.events
            .into_iter()
            .map(|e| event_from_pb(e).map_err(answer))
            .collect()
    }

    async fn update_bullet(
        &self,
        ns: &str,
        bullet_id: &str,
        content: &str,
    ) -> Result<DeltaOp, ApiError> {
        let op = self
            .client()
            .update_bullet(pb::UpdateBulletRequest {
                namespace: ns.to_owned(),
                bullet_id: bullet_id.to_owned(),
                content: content.to_owned(),
            })
            .await?
            .into_inner();
        op_from_pb(op).map_err(answer)
    }

    async fn delete_bullet(
        &self,
        ns: &str,
        bullet_id: &str,
        reason: &str,
    ) -> Result<DeltaOp, ApiError> {
        let op = self
            .client()
            .delete_bullet(pb::DeleteBulletRequest {
                namespace: ns.to_owned(),
                bullet_id: bullet_id.to_owned(),
                reason: reason.to_owned(),
            })
            .await?
            .into_inner();
        op_from_pb(op).map_err(answer)
    }

    async fn merge_bullets(&self, ns: &str, into: &str, from: &str) -> Result<DeltaOp, ApiError> {
        let op = self
            .client()
            .merge_bullets(pb::MergeBulletsRequest {
                namespace: ns.to_owned(),
                into_bullet_id: into.to_owned(),
                from_bullet_id: from.to_owned(),
            })
            .await?
            .into_inner();
        op_from_pb(op).map_err(answer)
    }

    async fn set_stage(
        &self,
        ns: &str,
        bullet_id: &str,
        stage: Option<Stage>,
        reason: &str,
    ) -> Result<Bullet, ApiError> {
        let b = self
            .client()
            .set_bullet_stage(pb::SetBulletStageRequest {
                namespace: ns.to_owned(),
                bullet_id: bullet_id.to_owned(),
                stage: stage_pb(stage),
                reason: reason.to_owned(),
            })
            .await?
            .into_inner();
        bullet_from_pb(b).map_err(answer)
    }
}
