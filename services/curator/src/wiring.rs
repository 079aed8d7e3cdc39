//! The Curator as a service: built from a runtime context, mounted with its consumer of the
//! reflections stream, and reachable through [`CuratorApi`] like any other service.

use std::sync::Arc;
use std::time::Duration;

use agent_learning_api::{
    ApiError, BatchFlushed, CuratorApi, FeedbackOutcome, Health, PlaybookPage, PlaybookQuery,
    RenderedContext,
};
use agent_learning_config::Settings;
use agent_learning_domain::{Bullet, BulletEvent, DeltaOp, Insight, Stage};
use agent_learning_proto::service_names;
use agent_learning_runtime::{Context, RuntimeError, Service, WithWhat as _, consumer_name};
use agent_learning_server::GrpcServer;
use async_trait::async_trait;

use crate::grpc::CuratorService;
use crate::{Curator, CuratorError, CuratorOptions, FeedbackItem, ThresholdJudge};

pub fn curator_options(settings: &Settings) -> CuratorOptions {
    let p = &settings.curator.promotion;
    CuratorOptions {
        merge_threshold: settings.curator.merge_threshold as f32,
        sections: settings.curator.sections.clone(),
        max_content_bytes: settings.curator.max_content_bytes,
        max_insights_per_request: settings.curator.max_insights_per_request,
        gates: agent_learning_domain::PromotionGates {
            staging_min_helpful: p.staging_min_helpful,
            staging_min_ratio: p.staging_min_ratio,
            production_min_helpful: p.production_min_helpful,
            production_min_ratio: p.production_min_ratio,
            quarantine_min_harmful: p.quarantine_min_harmful,
        },
        collection: format!("{}_bullets", settings.vector.collection_prefix),
        optimize_after_writes: settings.vector.optimize_after_writes,
    }
}

impl From<CuratorError> for ApiError {
    fn from(e: CuratorError) -> Self {
        match e {
            CuratorError::Invalid(i) => ApiError::Invalid(i),
            CuratorError::NotFound(m) => ApiError::NotFound(m),
            CuratorError::Rejected(m) => ApiError::FailedPrecondition(m),
            CuratorError::Embed(e) => ApiError::unavailable("embedder", e),
            CuratorError::Vector(e) => ApiError::unavailable("vector index", e),
            CuratorError::Store(e) => ApiError::internal("playbook record", e),
        }
    }
}

#[async_trait]
impl CuratorApi for Curator {
    async fn curate(&self, ns: &str, insights: Vec<Insight>) -> Result<Vec<DeltaOp>, ApiError> {
        Ok(Curator::curate(self, ns, &insights).await?)
    }

    async fn flush_batch(&self, ns: &str, run_id: &str) -> Result<BatchFlushed, ApiError> {
        Ok(Curator::flush_batch(self, ns, run_id).await?)
    }

    async fn get_playbook(&self, ns: &str, q: PlaybookQuery) -> Result<PlaybookPage, ApiError> {
        Ok(Curator::get_playbook(self, ns, &q).await?)
    }

    async fn search(
        &self,
        ns: &str,
        query: &str,
        k: u32,
        min_stage: Stage,
        section: Option<&str>,
    ) -> Result<Vec<(Bullet, f32)>, ApiError> {
        Ok(Curator::search(self, ns, query, k, min_stage, section).await?)
    }

    async fn render_context(
        &self,
        ns: &str,
        state: &str,
        state_vector: Option<Vec<f32>>,
        token_budget: u32,
        min_stage: Stage,
    ) -> Result<RenderedContext, ApiError> {
        let (text, ids, tokens) =
            Curator::render_context(self, ns, state, state_vector, token_budget, min_stage).await?;
        Ok(RenderedContext {
            text,
            bullet_ids: ids.into_iter().map(|u| u.to_string()).collect(),
            tokens,
        })
    }

    async fn record_feedback(
        &self,
        ns: &str,
        feedback_id: &str,
        items: Vec<FeedbackItem>,
    ) -> Result<FeedbackOutcome, ApiError> {
        let (bullets, replayed) = Curator::record_feedback(self, ns, feedback_id, &items).await?;
        Ok(FeedbackOutcome { bullets, replayed })
    }

    async fn health(&self, ns: &str) -> Result<Health, ApiError> {
        Ok(Curator::health(self, ns).await?)
    }

    async fn history(&self, ns: &str, bullet_id: &str) -> Result<Vec<BulletEvent>, ApiError> {
        Ok(Curator::history(self, ns, bullet_id).await?)
    }

    async fn update_bullet(
        &self,
        ns: &str,
        bullet_id: &str,
        content: &str,
    ) -> Result<DeltaOp, ApiError> {
        Ok(Curator::update_bullet(self, ns, bullet_id, content).await?)
    }

    async fn delete_bullet(
        &self,
        ns: &str,
        bullet_id: &str,
        reason: &str,
    ) -> Result<DeltaOp, ApiError> {
        Ok(Curator::delete_bullet(self, ns, bullet_id, reason).await?)
    }

    async fn merge_bullets(&self, ns: &str, into: &str, from: &str) -> Result<DeltaOp, ApiError> {
        Ok(Curator::merge_bullets(self, ns, into, from).await?)
    }

    async fn set_stage(
        &self,
        ns: &str,
        bullet_id: &str,
        stage: Option<Stage>,
        reason: &str,
    ) -> Result<Bullet, ApiError> {
        Ok(Curator::set_stage(self, ns, bullet_id, stage, reason).await?)
    }
}

impl Service for Curator {
    const NAME: &'static str = "curator";

    /// A curator over the context's backends, with the index reconciled.
    async fn build(ctx: &Context) -> Result<Arc<Self>, RuntimeError> {
        let opts = curator_options(ctx.settings());
        let judge = Arc::new(ThresholdJudge {
            threshold: opts.merge_threshold,
        });
        let curator = Arc::new(Curator::new(
            ctx.store().await?,
            ctx.index().await?,
            ctx.embedder().await?,
            judge,
            opts,
        ));
        curator.start().await.what("playbook index")?;
        Ok(curator)
    }

    /// The RPCs and the consumer of the reflections stream; health follows every dependency.
    async fn mount(
        self: &Arc<Self>,
        server: &mut GrpcServer,
        ctx: &Context,
    ) -> Result<(), RuntimeError> {
        let max = server.limits().max_message_bytes;
        server
            .routes_mut()
            .add_service(CuratorService::new(self.clone()).into_server(max));
        server.track(service_names::CURATOR);
        let block = Duration::from_millis(ctx.settings().queue.block_ms);
        let me = self.clone();
        let stop = ctx.stop_token();
        let queue = ctx.queue().await?;
        ctx.report_queue_lag(
            queue.clone(),
            agent_learning_queue::streams::REFLECTIONS,
            agent_learning_queue::streams::CURATORS,
        );
        ctx.spawn_worker(crate::stream::consume_reflections(
            me,
            queue,
            consumer_name("curator"),
            block,
            stop,
        ));
        ctx.spawn_worker(crate::stream::flush_stale_batches(
            self.clone(),
            Duration::from_secs(5),
            Duration::from_secs(ctx.settings().curator.batch_max_wait_secs),
            ctx.stop_token(),
        ));
        let probe = self.clone();
        ctx.ready_when(move || {
            let probe = probe.clone();
            async move { probe.ready().await }
        });
        Ok(())
    }
}
