//! Opening the backends named by the configuration, and serving the Curator.

use std::future::Future;
use std::sync::Arc;

use agent_learning_config::Settings;
use agent_learning_proto::service_names;
use agent_learning_server::GrpcServer;
use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::grpc::CuratorService;
use crate::{Curator, CuratorOptions, ThresholdJudge};

pub use agent_learning_runtime::{Backends, limits, open_backends};

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
        },
        collection: format!("{}_bullets", settings.vector.collection_prefix),
        optimize_after_writes: settings.vector.optimize_after_writes,
    }
}

impl Curator {
    /// A curator over `backends`, configured by `settings`, with the index reconciled.
    pub async fn open(settings: &Settings, backends: &Backends) -> anyhow::Result<Arc<Self>> {
        let opts = curator_options(settings);
        let judge = Arc::new(ThresholdJudge {
            threshold: opts.merge_threshold,
        });
        let curator = Arc::new(Curator::new(
            backends.store.clone(),
            backends.index.clone(),
            backends.embedder.clone(),
            judge,
            opts,
        ));
        curator.start().await.context("curator start")?;
        Ok(curator)
    }

    /// Adds the Curator to `server`; health flips to SERVING once its dependencies answer.
    pub fn mount(self: &Arc<Self>, server: &mut GrpcServer) {
        let max = server.limits().max_message_bytes;
        server
            .routes_mut()
            .add_service(CuratorService::new(self.clone()).into_server(max));
        server.track(service_names::CURATOR);
    }
}

/// Serves the Curator alone (the standalone `curator` binary).
pub async fn serve_curator(
    settings: &Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_curator_with(settings, listener, shutdown, |_| Ok(())).await
}

/// Serves the Curator, its consumer of the reflections stream, and whatever `mount_more` adds
/// to the same server. Health flips to SERVING once the Curator's dependencies answer.
pub async fn serve_curator_with(
    settings: &Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mount_more: impl FnOnce(&mut GrpcServer) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let backends = open_backends(settings).await?;
    let curator = Curator::open(settings, &backends).await?;
    let queue = agent_learning_runtime::open_queue(settings, &backends.store).await?;
    let mut server = GrpcServer::new(limits(settings))?;
    curator.mount(&mut server);
    mount_more(&mut server)?;
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(crate::stream::consume_reflections(
        curator.clone(),
        queue,
        agent_learning_runtime::consumer_name("curator"),
        std::time::Duration::from_millis(settings.queue.block_ms),
        stop.clone(),
    ));
    let readiness = server.readiness();
    let probe = curator.clone();
    tokio::spawn(readiness.serve_when_ready(move || {
        let probe = probe.clone();
        async move { probe.ready().await }
    }));
    let served = agent_learning_runtime::serve_until(server, listener, shutdown, stop).await;
    let _ = consumer.await;
    served
}
