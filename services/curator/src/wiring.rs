//! Opening the backends named by the configuration, and serving the Curator.

use std::future::Future;
use std::sync::Arc;

use agent_learning_config::Settings;
use agent_learning_embed::{Embedder, MINILM, MiniLm};
use agent_learning_proto::service_names;
use agent_learning_server::{GrpcServer, ServerLimits};
use agent_learning_store::Store;
use agent_learning_vector::{EdgeIndex, RemoteIndex, VectorIndex};
use anyhow::Context as _;
use secrecy::ExposeSecret as _;
use tokio::net::TcpListener;

use crate::grpc::CuratorService;
use crate::{Curator, CuratorOptions, ThresholdJudge};

/// The external systems a service needs, chosen by configuration: embedded by default.
#[derive(Clone)]
pub struct Backends {
    pub store: Store,
    pub index: Arc<dyn VectorIndex>,
    pub embedder: Arc<dyn Embedder>,
}

pub async fn open_backends(settings: &Settings) -> anyhow::Result<Backends> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("data_dir {}", settings.data_dir.display()))?;
    let store = match &settings.database.url {
        Some(url) if !url.expose_secret().trim().is_empty() => {
            Store::connect(url.expose_secret(), settings.database.max_connections)
                .await
                .context("database.url")?
        }
        _ => Store::open_sqlite(&settings.sqlite_path(), settings.database.max_connections)
            .await
            .with_context(|| format!("sqlite database {}", settings.sqlite_path().display()))?,
    };
    let index: Arc<dyn VectorIndex> = match &settings.vector.qdrant_url {
        Some(url) => Arc::new(
            RemoteIndex::connect(
                url,
                settings
                    .vector
                    .qdrant_api_key
                    .as_ref()
                    .map(|k| k.expose_secret().to_owned()),
            )
            .context("vector.qdrant_url")?,
        ),
        None => Arc::new(EdgeIndex::open(&settings.vector_dir()).context("vector index")?),
    };
    let dir = MINILM.path(&settings.models_dir);
    let batch = settings.embedding.batch_size;
    let embedder: Arc<dyn Embedder> =
        Arc::new(tokio::task::spawn_blocking(move || MiniLm::load(&dir, batch)).await??);
    Ok(Backends {
        store,
        index,
        embedder,
    })
}

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

pub fn limits(settings: &Settings) -> ServerLimits {
    ServerLimits {
        max_message_bytes: settings.server.max_message_bytes,
        concurrency_limit_per_connection: settings.server.concurrency_limit_per_connection,
        request_timeout: std::time::Duration::from_secs(settings.server.request_timeout_secs),
        shutdown_grace: std::time::Duration::from_secs(settings.server.shutdown_grace_secs),
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

/// Serves the Curator and whatever `mount_more` adds to the same server (the all-in-one
/// `agent-learning serve`). Health flips to SERVING once the Curator's dependencies answer.
pub async fn serve_curator_with(
    settings: &Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mount_more: impl FnOnce(&mut GrpcServer) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let backends = open_backends(settings).await?;
    let curator = Curator::open(settings, &backends).await?;
    let mut server = GrpcServer::new(limits(settings))?;
    curator.mount(&mut server);
    mount_more(&mut server)?;
    let readiness = server.readiness();
    let probe = curator.clone();
    tokio::spawn(readiness.serve_when_ready(move || {
        let probe = probe.clone();
        async move { probe.ready().await }
    }));
    server.serve(listener, shutdown).await?;
    Ok(())
}
