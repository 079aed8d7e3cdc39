//! The gRPC adapter of the Curator: protobuf in, [`Curator`] calls, protobuf out.

use std::sync::Arc;

use agent_learning_domain::{Insight, Stage};
use agent_learning_proto::convert::{self, bullet_to_pb, event_to_pb, op_to_pb};
use agent_learning_proto::v1 as pb;
use pb::curator_server::{Curator as CuratorRpc, CuratorServer};
use tonic::{Request, Response, Status};

use crate::curator::{Curator, CuratorError, FeedbackItem, PlaybookQuery};

impl From<CuratorError> for Status {
    fn from(e: CuratorError) -> Self {
        match e {
            CuratorError::Invalid(i) => Status::invalid_argument(i.to_string()),
            CuratorError::NotFound(m) => Status::not_found(m),
            CuratorError::Rejected(m) => Status::failed_precondition(m),
            CuratorError::Embed(e) => Status::unavailable(e.to_string()),
            CuratorError::Vector(e) => Status::unavailable(e.to_string()),
            CuratorError::Store(e) => {
                tracing::error!(error = %e, "store failure");
                Status::internal(e.to_string())
            }
        }
    }
}

/// The stage a request names; an error naming `field` for a number outside the enum.
fn stage_from_pb(field: &str, v: i32) -> Result<Option<Stage>, Status> {
    convert::stage_from_pb(field, v).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Serves a [`Curator`] as `agent_learning.v1.Curator`.
#[derive(Clone)]
pub struct CuratorService {
    curator: Arc<Curator>,
}

impl CuratorService {
    pub fn new(curator: Arc<Curator>) -> Self {
        Self { curator }
    }

    /// The tonic server with explicit message-size limits.
    pub fn into_server(self, max_message_bytes: usize) -> CuratorServer<Self> {
        CuratorServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }
}

#[tonic::async_trait]
impl CuratorRpc for CuratorService {
    async fn curate(
        &self,
        request: Request<pb::CurateRequest>,
    ) -> Result<Response<pb::CurateResponse>, Status> {
        // Provenance: who sent it. A caller with its own API key is named in each insight's
        // source (the services' internal key names nobody: their sources name the reflection).
        let caller = request
            .extensions()
            .get::<Arc<agent_learning_server::auth::Principal>>()
            .filter(|p| p.id != "internal")
            .map(|p| p.id.clone());
        let r = request.into_inner();
        let insights: Vec<Insight> = r
            .insights
            .into_iter()
            .map(|i| Insight {
                id: i.id,
                section: i.section,
                content: i.content,
                source: match &caller {
                    Some(key) => format!("key:{key}/{}", i.source),
                    None => i.source,
                },
            })
            .collect();
        let ops = self.curator.curate(&r.namespace, &insights).await?;
        Ok(Response::new(pb::CurateResponse {
            ops: ops.into_iter().map(op_to_pb).collect(),
        }))
    }

    async fn flush_batch(
        &self,
        request: Request<pb::FlushBatchRequest>,
    ) -> Result<Response<pb::FlushBatchResponse>, Status> {
        let r = request.into_inner();
        let done = self.curator.flush_batch(&r.namespace, &r.run_id).await?;
        Ok(Response::new(pb::FlushBatchResponse {
            insights: u32::try_from(done.insights).unwrap_or(u32::MAX),
            ops: u32::try_from(done.ops).unwrap_or(u32::MAX),
        }))
    }

    async fn get_playbook(
        &self,
        request: Request<pb::GetPlaybookRequest>,
    ) -> Result<Response<pb::GetPlaybookResponse>, Status> {
        let r = request.into_inner();
        let q = PlaybookQuery {
            stage: stage_from_pb("stage", r.stage)?,
            section: (!r.section.is_empty()).then_some(r.section),
            page_size: r.page_size,
            page_token: r.page_token,
            include_deleted: r.include_deleted,
        };
        let page = self.curator.get_playbook(&r.namespace, &q).await?;
        Ok(Response::new(pb::GetPlaybookResponse {
            bullets: page.bullets.into_iter().map(bullet_to_pb).collect(),
            next_page_token: page.next_page_token,
            total: page.total,
        }))
    }

    async fn search_playbook(
        &self,
        request: Request<pb::SearchPlaybookRequest>,
    ) -> Result<Response<pb::SearchPlaybookResponse>, Status> {
        let r = request.into_inner();
        let min_stage = stage_from_pb("min_stage", r.min_stage)?.unwrap_or(Stage::Shadow);
        let section = (!r.section.is_empty()).then_some(r.section.as_str());
        let found = self
            .curator
            .search(&r.namespace, &r.query, r.k, min_stage, section)
            .await?;
        Ok(Response::new(pb::SearchPlaybookResponse {
            results: found
                .into_iter()
                .map(|(b, score)| pb::ScoredBullet {
                    bullet: Some(bullet_to_pb(b)),
                    score,
                })
                .collect(),
        }))
    }

    async fn render_context(
        &self,
        request: Request<pb::RenderContextRequest>,
    ) -> Result<Response<pb::RenderContextResponse>, Status> {
        let r = request.into_inner();
        let min_stage = stage_from_pb("min_stage", r.min_stage)?.unwrap_or(Stage::Shadow);
        let (text, ids, tokens) = self
            .curator
            .render_context(
                &r.namespace,
                &r.state,
                (!r.state_vector.is_empty()).then_some(r.state_vector),
                r.token_budget,
                min_stage,
            )
            .await?;
        Ok(Response::new(pb::RenderContextResponse {
            text,
            bullet_ids: ids.into_iter().map(|u| u.to_string()).collect(),
            tokens,
        }))
    }

    async fn record_feedback(
        &self,
        request: Request<pb::RecordFeedbackRequest>,
    ) -> Result<Response<pb::RecordFeedbackResponse>, Status> {
        let r = request.into_inner();
        let items: Vec<FeedbackItem> = r
            .feedback
            .into_iter()
            .map(|f| FeedbackItem {
                bullet_id: f.bullet_id,
                helpful: f.helpful,
                harmful: f.harmful,
            })
            .collect();
        let (bullets, replayed) = self
            .curator
            .record_feedback(&r.namespace, &r.feedback_id, &items)
            .await?;
        Ok(Response::new(pb::RecordFeedbackResponse {
            bullets: bullets.into_iter().map(bullet_to_pb).collect(),
            replayed,
        }))
    }

    async fn get_playbook_health(
        &self,
        request: Request<pb::GetPlaybookHealthRequest>,
    ) -> Result<Response<pb::PlaybookHealth>, Status> {
        let r = request.into_inner();
        let h = self.curator.health(&r.namespace).await?;
        Ok(Response::new(pb::PlaybookHealth {
            namespace: r.namespace,
            total: h.total,
            shadow: h.shadow,
            staging: h.staging,
            production: h.production,
            quarantined: h.quarantined,
            deleted: h.deleted,
            sections: h
                .sections
                .into_iter()
                .map(|(section, count)| pb::SectionCount { section, count })
                .collect(),
            insights_applied: h.insights_applied,
            merges: h.merges,
            merge_rate: h.merge_rate,
            added_last_24h: h.added_last_24h,
        }))
    }

    async fn get_bullet_history(
        &self,
        request: Request<pb::GetBulletHistoryRequest>,
    ) -> Result<Response<pb::GetBulletHistoryResponse>, Status> {
        let r = request.into_inner();
        let events = self.curator.history(&r.namespace, &r.bullet_id).await?;
        Ok(Response::new(pb::GetBulletHistoryResponse {
            events: events.into_iter().map(event_to_pb).collect(),
        }))
    }

    async fn update_bullet(
        &self,
        request: Request<pb::UpdateBulletRequest>,
    ) -> Result<Response<pb::DeltaOp>, Status> {
        let r = request.into_inner();
        let op = self
            .curator
            .update_bullet(&r.namespace, &r.bullet_id, &r.content)
            .await?;
        Ok(Response::new(op_to_pb(op)))
    }

    async fn delete_bullet(
        &self,
        request: Request<pb::DeleteBulletRequest>,
    ) -> Result<Response<pb::DeltaOp>, Status> {
        let r = request.into_inner();
        let op = self
            .curator
            .delete_bullet(&r.namespace, &r.bullet_id, &r.reason)
            .await?;
        Ok(Response::new(op_to_pb(op)))
    }

    async fn merge_bullets(
        &self,
        request: Request<pb::MergeBulletsRequest>,
    ) -> Result<Response<pb::DeltaOp>, Status> {
        let r = request.into_inner();
        let op = self
            .curator
            .merge_bullets(&r.namespace, &r.into_bullet_id, &r.from_bullet_id)
            .await?;
        Ok(Response::new(op_to_pb(op)))
    }

    async fn set_bullet_stage(
        &self,
        request: Request<pb::SetBulletStageRequest>,
    ) -> Result<Response<pb::Bullet>, Status> {
        let r = request.into_inner();
        let stage = stage_from_pb("stage", r.stage)?;
        let b = self
            .curator
            .set_stage(&r.namespace, &r.bullet_id, stage, &r.reason)
            .await?;
        Ok(Response::new(bullet_to_pb(b)))
    }
}
