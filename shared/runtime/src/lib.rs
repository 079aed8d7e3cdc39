//! What every service process needs: the backends the configuration names (embedded by
//! default), lazily connected channels to the other services, and the standalone entry point
//! each service binary shares.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent_learning_config::{Settings, Sources};
use agent_learning_embed::{Embedder, MINILM, MiniLm};
use agent_learning_queue::{EmbeddedQueue, Queue, QueueOptions, RedisQueue};
use agent_learning_server::ServerLimits;
use agent_learning_store::Store;
use agent_learning_telemetry::TelemetryOptions;
use agent_learning_vector::{EdgeIndex, RemoteIndex, VectorIndex};
use anyhow::Context as _;
use clap::{CommandFactory as _, FromArgMatches as _, Parser};
use secrecy::ExposeSecret as _;
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint};

/// The external systems a service needs, chosen by configuration: embedded by default.
#[derive(Clone)]
pub struct Backends {
    pub store: Store,
    pub index: Arc<dyn VectorIndex>,
    pub embedder: Arc<dyn Embedder>,
}

pub async fn open_store(settings: &Settings) -> anyhow::Result<Store> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("data_dir {}", settings.data_dir.display()))?;
    Ok(match &settings.database.url {
        Some(url) if !url.expose_secret().trim().is_empty() => {
            Store::connect(url.expose_secret(), settings.database.max_connections)
                .await
                .context("database.url")?
        }
        _ => Store::open_sqlite(&settings.sqlite_path(), settings.database.max_connections)
            .await
            .with_context(|| format!("sqlite database {}", settings.sqlite_path().display()))?,
    })
}

pub async fn open_backends(settings: &Settings) -> anyhow::Result<Backends> {
    let store = open_store(settings).await?;
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

pub fn queue_options(settings: &Settings) -> QueueOptions {
    QueueOptions {
        visibility_timeout: Duration::from_secs(settings.queue.visibility_timeout_secs),
        max_deliveries: settings.queue.max_deliveries,
    }
}

/// Redis Streams when `queue.redis_url` is set, else the embedded queue in `store`.
pub async fn open_queue(settings: &Settings, store: &Store) -> anyhow::Result<Arc<dyn Queue>> {
    let opts = queue_options(settings);
    Ok(match &settings.queue.redis_url {
        Some(url) => Arc::new(
            RedisQueue::connect(url, opts)
                .await
                .with_context(|| format!("queue.redis_url {url}"))?,
        ),
        None => Arc::new(EmbeddedQueue::new(store.clone(), opts)),
    })
}

pub fn limits(settings: &Settings) -> ServerLimits {
    ServerLimits {
        max_message_bytes: settings.server.max_message_bytes,
        concurrency_limit_per_connection: settings.server.concurrency_limit_per_connection,
        request_timeout: Duration::from_secs(settings.server.request_timeout_secs),
        shutdown_grace: Duration::from_secs(settings.server.shutdown_grace_secs),
    }
}

/// Channels to the other services. Services reach each other through their gRPC clients
/// also when they share a process; an empty endpoint means this process's own server.
#[derive(Clone, Debug)]
pub struct Peers {
    pub world_model: Channel,
    pub explorer: Channel,
    pub reflector: Channel,
    pub policy: Channel,
    pub curator: Channel,
}

fn channel(key: &str, url: &str, own: SocketAddr) -> anyhow::Result<Channel> {
    let url = if url.is_empty() {
        let host = if own.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            own.ip().to_string()
        };
        format!("http://{host}:{}", own.port())
    } else {
        url.to_owned()
    };
    Ok(Endpoint::from_shared(url.clone())
        .with_context(|| format!("services.{key}: {url:?}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy())
}

impl Peers {
    pub fn new(settings: &Settings, own: SocketAddr) -> anyhow::Result<Self> {
        let s = &settings.services;
        Ok(Self {
            world_model: channel("world_model", &s.world_model, own)?,
            explorer: channel("explorer", &s.explorer, own)?,
            reflector: channel("reflector", &s.reflector, own)?,
            policy: channel("policy", &s.policy, own)?,
            curator: channel("curator", &s.curator, own)?,
        })
    }
}

/// A unique consumer name for this process on a stream.
pub fn consumer_name(service: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into());
    format!("{service}-{host}-{}", std::process::id())
}

#[derive(Parser)]
struct Args {
    /// TOML configuration file (else AGENT_LEARNING_CONFIG).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen address (else server.addr).
    #[arg(long)]
    addr: Option<String>,
    /// Data directory (else data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// The `main` of a standalone service binary: flags, configuration, telemetry, listener, then
/// `serve` until SIGTERM or Ctrl-C.
pub async fn run_standalone<F, Fut>(
    service: &str,
    about: &'static str,
    serve: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Settings, TcpListener, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let matches = Args::command().about(about).get_matches();
    let args = Args::from_arg_matches(&matches)?;
    let mut overrides = Vec::new();
    if let Some(addr) = args.addr {
        overrides.push(("server.addr".to_owned(), addr));
    }
    if let Some(dir) = args.data_dir {
        overrides.push(("data_dir".to_owned(), dir.display().to_string()));
    }
    let settings = Settings::load(&Sources {
        file: args.config,
        overrides,
    })?;
    let _telemetry = agent_learning_telemetry::init(&TelemetryOptions {
        service_name: format!("agent-learning-{service}"),
        log_format: settings.telemetry.log_format.clone(),
        log_filter: settings.telemetry.log_filter.clone(),
        otlp_endpoint: settings.telemetry.otlp_endpoint.clone(),
    })?;
    let listener = TcpListener::bind(&settings.server.addr)
        .await
        .with_context(|| format!("server.addr {}", settings.server.addr))?;
    tracing::info!(service, addr = %listener.local_addr()?, "listening");
    serve(
        settings,
        listener,
        Box::pin(agent_learning_server::shutdown_signal()),
    )
    .await
}

/// What a service's logic reports, mapped onto gRPC codes by [`ServiceError::into_status`].
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Invalid(#[from] agent_learning_domain::InvalidInput),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A dependency (model, index, another service) failed; retrying may help.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid(agent_learning_domain::InvalidInput::new(field, reason))
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Self::Internal(e.to_string())
    }

    pub fn unavailable(e: impl std::fmt::Display) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<agent_learning_store::StoreError> for ServiceError {
    fn from(e: agent_learning_store::StoreError) -> Self {
        match e {
            agent_learning_store::StoreError::NotFound { what, id } => {
                Self::NotFound(format!("{what} {id} not found"))
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<sea_orm::DbErr> for ServiceError {
    fn from(e: sea_orm::DbErr) -> Self {
        Self::Internal(format!("database: {e}"))
    }
}

impl From<agent_learning_vector::VectorError> for ServiceError {
    fn from(e: agent_learning_vector::VectorError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<agent_learning_embed::EmbedError> for ServiceError {
    fn from(e: agent_learning_embed::EmbedError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<agent_learning_queue::QueueError> for ServiceError {
    fn from(e: agent_learning_queue::QueueError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<tonic::Status> for ServiceError {
    fn from(s: tonic::Status) -> Self {
        match s.code() {
            tonic::Code::InvalidArgument => Self::invalid("request", s.message()),
            tonic::Code::NotFound => Self::NotFound(s.message().to_owned()),
            tonic::Code::FailedPrecondition => Self::FailedPrecondition(s.message().to_owned()),
            _ => Self::Unavailable(format!("{}: {}", s.code(), s.message())),
        }
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid(i) => tonic::Status::invalid_argument(i.to_string()),
            ServiceError::NotFound(m) => tonic::Status::not_found(m),
            ServiceError::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
            ServiceError::Unavailable(m) => tonic::Status::unavailable(m),
            ServiceError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                tonic::Status::internal(m)
            }
        }
    }
}

/// Health flips to SERVING once the relational store answers.
pub fn serving_when_store_answers(server: &agent_learning_server::GrpcServer, store: Store) {
    tokio::spawn(server.readiness().serve_when_ready(move || {
        let store = store.clone();
        async move { store.ping().await }
    }));
}

/// Serves until `shutdown`; `stop` (the process's background workers) is cancelled as soon as
/// shutdown begins and again when serving ends, whatever the reason.
pub async fn serve_until(
    server: agent_learning_server::GrpcServer,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let on_signal = stop.clone();
    let served = server
        .serve(listener, async move {
            shutdown.await;
            on_signal.cancel();
        })
        .await;
    stop.cancel();
    served?;
    Ok(())
}
