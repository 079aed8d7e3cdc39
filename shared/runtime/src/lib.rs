//! What every service process shares: a [`Context`] that opens the backends the configuration
//! names (each once, only when a service asks for it), reaches the other services through their
//! clients, and collects background workers and readiness probes; the [`Service`] trait each
//! service implements to build itself from a context and mount itself on a server; and one
//! path that serves a set of services, used by every standalone binary and the all-in-one
//! server alike.

pub mod recorded;
#[cfg(feature = "testsuite")]
pub mod testsuite;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_learning_api::{
    ApiKey, CuratorApi, CuratorClient, ExplorerApi, ExplorerClient, PolicyApi, PolicyClient,
    ReflectorApi, ReflectorClient, WorldModelApi, WorldModelClient,
};
use agent_learning_config::{Settings, Sources};
use agent_learning_embed::Embedder;
use agent_learning_llm::ChatModel;
use agent_learning_queue::Queue;
use agent_learning_server::{GrpcServer, ServerLimits};
use agent_learning_store::Store;
use agent_learning_telemetry::TelemetryOptions;
use agent_learning_vector::VectorIndex;
use clap::{CommandFactory as _, FromArgMatches as _, Parser};
use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a process could not start or serve: what failed (a configuration key, a dependency, a
/// service) and the error underneath.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct RuntimeError {
    pub what: String,
    #[source]
    pub source: BoxError,
}

impl RuntimeError {
    pub fn new(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// Attaches what failed to an error, as `anyhow::Context` would, without anyhow.
pub trait WithWhat<T> {
    fn what(self, what: impl Into<String>) -> Result<T, RuntimeError>;
}

impl<T, E: Into<BoxError>> WithWhat<T> for Result<T, E> {
    fn what(self, what: impl Into<String>) -> Result<T, RuntimeError> {
        self.map_err(|e| RuntimeError::new(what, e))
    }
}

type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// The API keys a server on `bound` requires (`auth.*`), or `None` when it runs without:
/// `auth.mode = disabled`, or `auto` on a loopback address with no key configured. A server
/// on any other address needs keys, and every server with keys needs `auth.internal_key`
/// (the services, and a server's own in-process peers, call each other with it).
pub fn api_keys(
    settings: &Settings,
    bound: SocketAddr,
) -> Result<Option<Arc<agent_learning_server::auth::KeyStore>>> {
    use agent_learning_config::AuthMode;
    use secrecy::ExposeSecret as _;
    let a = &settings.auth;
    let configured = a.keys_file.is_some() || a.keys.is_some() || a.internal_key.is_some();
    let on = match a.mode {
        AuthMode::Disabled => false,
        AuthMode::Required => true,
        AuthMode::Auto => configured || !bound.ip().is_loopback(),
    };
    if !on {
        return Ok(None);
    }
    let Some(internal) = &a.internal_key else {
        let why = if a.mode == AuthMode::Auto && !configured {
            format!(
                "this server listens on {bound}, not on loopback, so callers need API keys: \
                 set auth.internal_key (AGENT_LEARNING__AUTH__INTERNAL_KEY) and auth.keys_file \
                 for other callers, or auth.mode = \"disabled\" to serve without keys"
            )
        } else {
            "API keys are on: set auth.internal_key, the key the services present to each other"
                .to_owned()
        };
        return Err(RuntimeError::new("auth.internal_key", why));
    };
    let store =
        agent_learning_server::auth::KeyStore::load(agent_learning_server::auth::KeySources {
            file: a.keys_file.clone(),
            inline: a.keys.as_ref().map(|k| k.expose_secret().to_owned()),
            internal_key: Some(internal.expose_secret().to_owned()),
        })
        .what("auth")?;
    Ok(Some(Arc::new(store)))
}

pub fn limits(settings: &Settings) -> ServerLimits {
    ServerLimits {
        max_message_bytes: settings.server.max_message_bytes,
        concurrency_limit_per_connection: settings.server.concurrency_limit_per_connection,
        max_in_flight: settings.server.max_in_flight,
        request_timeout: Duration::from_secs(settings.server.request_timeout_secs),
        shutdown_grace: Duration::from_secs(settings.server.shutdown_grace_secs),
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

fn channel(key: &str, url: &str, own: SocketAddr, scheme: &str) -> Result<Channel> {
    let url = if url.is_empty() {
        own_url(own, scheme)
    } else {
        url.to_owned()
    };
    Ok(agent_learning_api::endpoint(&url)
        .what(format!("services.{key}: {url:?}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy())
}

/// This process's own server as a peer sees it.
fn own_url(own: SocketAddr, scheme: &str) -> String {
    let host = if own.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        own.ip().to_string()
    };
    format!("{scheme}://{host}:{}", own.port())
}

async fn wait_for_peer(key: String, url: String, wait: Duration) -> Result<()> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let what = || format!("services.{key} {url}");
    let endpoint = agent_learning_api::endpoint(&url)
        .what(what())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2));
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_millis(100);
    loop {
        let last = match endpoint.connect().await {
            Ok(channel) => match HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
            {
                Ok(_) => return Ok(()),
                // Anything but UNAVAILABLE is an answer from the peer's server.
                Err(status) if status.code() != tonic::Code::Unavailable => return Ok(()),
                Err(status) => status.message().to_owned(),
            },
            Err(e) => {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text = format!("{text}: {s}");
                    source = s.source();
                }
                text
            }
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(RuntimeError::new(
                what(),
                format!("no answer within {}s ({last})", wait.as_secs()),
            ));
        }
        tracing::info!(peer = %what(), error = %last, "waiting for a peer");
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// The other services, through their gRPC clients: services reach each other this way also
/// when they share a process. An empty `services.*` endpoint means this process's own server.
#[derive(Clone)]
pub struct Peers {
    pub world_model: Arc<dyn WorldModelApi>,
    pub explorer: Arc<dyn ExplorerApi>,
    pub reflector: Arc<dyn ReflectorApi>,
    pub policy: Arc<dyn PolicyApi>,
    pub curator: Arc<dyn CuratorApi>,
}

impl Peers {
    pub fn new(settings: &Settings, own: SocketAddr) -> Result<Self> {
        let s = &settings.services;
        let scheme = tls::own_scheme(settings);
        let channel = |key: &str, url: &str| channel(key, url, own, scheme);
        // Calls to this process's own server carry its peer token: they are part of a
        // request the server already let in.
        let key = |url: &str| -> Result<ApiKey> {
            let key = ApiKey::process();
            if url.is_empty() {
                key.with_header(
                    agent_learning_server::PEER_HEADER,
                    agent_learning_server::peer_token(),
                )
                .what("peer token")
            } else {
                Ok(key)
            }
        };
        Ok(Self {
            world_model: Arc::new(WorldModelClient::new_with_key(
                channel("world_model", &s.world_model)?,
                key(&s.world_model)?,
            )),
            explorer: Arc::new(ExplorerClient::new_with_key(
                channel("explorer", &s.explorer)?,
                key(&s.explorer)?,
            )),
            reflector: Arc::new(ReflectorClient::new_with_key(
                channel("reflector", &s.reflector)?,
                key(&s.reflector)?,
            )),
            policy: Arc::new(PolicyClient::new_with_key(
                channel("policy", &s.policy)?,
                key(&s.policy)?,
            )),
            curator: Arc::new(CuratorClient::new_with_key(
                channel("curator", &s.curator)?,
                key(&s.curator)?,
            )),
        })
    }
}

type Probe = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Everything a service is built from. Backends open on first use and are shared by every
/// service built from the same context, so the all-in-one server opens each once and a
/// standalone service opens only what it uses.
pub struct Context {
    settings: Settings,
    own: SocketAddr,
    peers: Peers,
    store: OnceCell<Store>,
    index: OnceCell<Arc<dyn VectorIndex>>,
    embedder: OnceCell<Arc<dyn Embedder>>,
    queue: OnceCell<Arc<dyn Queue>>,
    model: OnceCell<Arc<dyn ChatModel>>,
    stop: CancellationToken,
    workers: Mutex<Vec<JoinHandle<()>>>,
    probes: Mutex<Vec<Probe>>,
    standalone: bool,
}

impl Context {
    /// A context for a server listening on `own` (peers left empty in `services.*` are there).
    pub fn new(settings: Settings, own: SocketAddr) -> Result<Self> {
        {
            use secrecy::ExposeSecret as _;
            // The key this process presents to its peers (and to itself, all in one).
            let key = settings
                .auth
                .internal_key
                .as_ref()
                .map(|k| k.expose_secret());
            agent_learning_api::set_process_key(key).what("auth.internal_key")?;
        }
        tls::apply_client(&settings)?;
        let peers = Peers::new(&settings, own)?;
        Ok(Self {
            settings,
            own,
            peers,
            store: OnceCell::new(),
            index: OnceCell::new(),
            embedder: OnceCell::new(),
            queue: OnceCell::new(),
            model: OnceCell::new(),
            stop: CancellationToken::new(),
            workers: Mutex::new(Vec::new()),
            probes: Mutex::new(Vec::new()),
            standalone: false,
        })
    }

    /// Uses `model` instead of opening the configured one (benchmarks, tests).
    pub fn with_model(self, model: Arc<dyn ChatModel>) -> Self {
        let _ = self.model.set(model);
        self
    }

    /// Uses `embedder` instead of loading the configured one (tests, benchmarks).
    pub fn with_embedder(self, embedder: Arc<dyn Embedder>) -> Self {
        let _ = self.embedder.set(embedder);
        self
    }

    /// Uses `peers` instead of the gRPC clients (tests with fakes).
    pub fn with_peers(mut self, peers: Peers) -> Self {
        self.peers = peers;
        self
    }

    /// Whether the server built from this context hosts one service alone (its own process).
    pub fn standalone(&self) -> bool {
        self.standalone
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn own_addr(&self) -> SocketAddr {
        self.own
    }

    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    pub async fn store(&self) -> Result<Store> {
        let s = &self.settings;
        self.store
            .get_or_try_init(|| async {
                Store::open(s).await.what(match &s.database.url {
                    Some(_) => "database.url".to_owned(),
                    None => format!("sqlite database {}", s.sqlite_path().display()),
                })
            })
            .await
            .cloned()
    }

    pub async fn index(&self) -> Result<Arc<dyn VectorIndex>> {
        self.index
            .get_or_try_init(|| async {
                agent_learning_vector::open(&self.settings).what("vector index (vector.*)")
            })
            .await
            .cloned()
    }

    /// The embedding model behind the in-memory cache and (`embedding.record_cache`) the
    /// record's cache of vectors by content hash.
    pub async fn embedder(&self) -> Result<Arc<dyn Embedder>> {
        self.embedder
            .get_or_try_init(|| async {
                let s = &self.settings;
                let model = agent_learning_embed::open_model(s)
                    .await
                    .what("embedding model")?;
                let model: Arc<dyn Embedder> = if s.embedding.record_cache {
                    Arc::new(recorded::Recorded::new(model, self.store().await?))
                } else {
                    model
                };
                Ok(agent_learning_embed::in_memory(model, s))
            })
            .await
            .cloned()
    }

    pub async fn queue(&self) -> Result<Arc<dyn Queue>> {
        let store = self.store().await?;
        self.queue
            .get_or_try_init(|| async {
                agent_learning_queue::open(&self.settings, &store)
                    .await
                    .what("queue.redis_url")
            })
            .await
            .cloned()
    }

    /// The configured language model, loaded on a blocking thread (the local one reads a file
    /// of about 100 MB).
    pub async fn model(&self) -> Result<Arc<dyn ChatModel>> {
        self.model
            .get_or_try_init(|| async {
                let s = self.settings.clone();
                tokio::task::spawn_blocking(move || agent_learning_llm::open_chat_model(&s))
                    .await
                    .what("language model loader")?
                    .what("language model (llm.*)")
            })
            .await
            .cloned()
    }

    /// Cancelled when the process begins to shut down; background workers stop on it.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// A background task that runs until the stop token is cancelled; awaited at shutdown.
    pub fn spawn_worker(&self, worker: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(worker);
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(handle);
    }

    /// Keeps the gauges `agent_learning_queue_undelivered`, `_pending` and `_dead` of
    /// `stream` and `group` current (sampled every 5 s) for the Prometheus endpoint: the
    /// figures to scale consumers on.
    pub fn report_queue_lag(
        &self,
        queue: Arc<dyn Queue>,
        stream: &'static str,
        group: &'static str,
    ) {
        let stop = self.stop_token();
        self.spawn_worker(async move {
            let labels = [("stream", stream), ("group", group)];
            loop {
                match queue.lag(stream, group).await {
                    Ok(lag) => {
                        metrics::gauge!("agent_learning_queue_undelivered", &labels)
                            .set(lag.undelivered as f64);
                        metrics::gauge!("agent_learning_queue_pending", &labels)
                            .set(lag.pending as f64);
                        metrics::gauge!("agent_learning_queue_dead", &labels).set(lag.dead as f64);
                    }
                    Err(e) => tracing::debug!(error = %e, stream, group, "queue lag"),
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        });
    }

    /// Health stays NOT_SERVING until `probe` (and every other) answers `Ok`.
    pub fn ready_when<F, Fut, E>(&self, probe: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let probe: Probe = Arc::new(move || {
            let fut = probe();
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
        });
        self.probes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(probe);
    }

    /// Waits until each peer named by `keys` (`services.<key>`) that another process serves
    /// answers a health check (any answer: a peer still loading its model counts), for at
    /// most `services.startup_wait_secs`; else fails naming the key and its endpoint. Peers
    /// left empty are this process's own server and are not waited for.
    pub async fn wait_for_peers(&self, keys: &[&str]) -> Result<()> {
        let s = &self.settings.services;
        let wait = Duration::from_secs(s.startup_wait_secs);
        let checks = keys.iter().filter_map(|key| {
            let url = match *key {
                "world_model" => &s.world_model,
                "explorer" => &s.explorer,
                "reflector" => &s.reflector,
                "policy" => &s.policy,
                "curator" => &s.curator,
                _ => {
                    return Some(futures::future::Either::Left(futures::future::ready(Err(
                        RuntimeError::new(format!("services.{key}"), "not a service"),
                    ))));
                }
            };
            (!url.is_empty()).then(|| {
                futures::future::Either::Right(wait_for_peer(key.to_string(), url.clone(), wait))
            })
        });
        futures::future::try_join_all(checks).await.map(drop)
    }

    /// A probe for every backend a service opened: health follows the record, the queue's
    /// server and the index's server of this process, whichever it uses.
    fn backend_probes(&self) -> Vec<Probe> {
        let mut probes: Vec<Probe> = Vec::new();
        if let Some(store) = self.store.get() {
            let store = store.clone();
            probes.push(Arc::new(move || {
                let store = store.clone();
                Box::pin(async move { store.ping().await.map_err(|e| format!("database: {e}")) })
            }));
        }
        if let Some(queue) = self.queue.get() {
            let queue = queue.clone();
            probes.push(Arc::new(move || {
                let queue = queue.clone();
                Box::pin(async move { queue.ping().await.map_err(|e| format!("queue: {e}")) })
            }));
        }
        if let Some(index) = self.index.get() {
            let index = index.clone();
            probes.push(Arc::new(move || {
                let index = index.clone();
                Box::pin(
                    async move { index.ping().await.map_err(|e| format!("vector index: {e}")) },
                )
            }));
        }
        probes
    }
}

/// A service: built from a [`Context`], then mounted on a server.
pub trait Service: Send + Sync + Sized + 'static {
    /// The service's name in logs, consumer names and `agent-learning service NAME`.
    const NAME: &'static str;

    fn build(ctx: &Context) -> impl Future<Output = Result<Arc<Self>>> + Send;

    /// Adds the service's routes to `server`, and its background workers and readiness
    /// probes to `ctx`.
    fn mount(
        self: &Arc<Self>,
        server: &mut GrpcServer,
        ctx: &Context,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// Builds `S` from `ctx` and mounts it on `server`: the one way every service is wired.
pub async fn add<S: Service>(ctx: &Context, server: &mut GrpcServer) -> Result<Arc<S>> {
    let service = S::build(ctx).await.what(format!("{} start", S::NAME))?;
    service.mount(server, ctx).await?;
    Ok(service)
}

/// How often health re-checks the dependencies once they answer.
const FOLLOW_EVERY: Duration = Duration::from_secs(3);
/// A probe that takes longer than this counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps health following the dependencies until `stop`: SERVING while every probe answers,
/// NOT_SERVING while one does not (a database or index that went away), checked every
/// [`FOLLOW_EVERY`] and sooner at start.
async fn follow_dependencies(
    readiness: agent_learning_server::Readiness,
    probes: Vec<Probe>,
    stop: CancellationToken,
) {
    use agent_learning_server::ServingStatus;
    let mut serving: Option<bool> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut failure = None;
        for p in &probes {
            match tokio::time::timeout(PROBE_TIMEOUT, p()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = Some(e),
                Err(_) => failure = Some(format!("no answer within {PROBE_TIMEOUT:?}")),
            }
            if failure.is_some() {
                break;
            }
        }
        let ok = failure.is_none();
        if stop.is_cancelled() {
            return; // shutting down: the server reports NOT_SERVING itself
        }
        if serving != Some(ok) {
            if ok {
                readiness.set(ServingStatus::Serving).await;
                tracing::info!("dependencies answer, serving");
            } else {
                readiness.set(ServingStatus::NotServing).await;
                tracing::warn!(error = %failure.unwrap_or_default(), "a dependency does not answer, not serving");
            }
            serving = Some(ok);
        }
        let pause = if ok {
            backoff = Duration::from_millis(100);
            FOLLOW_EVERY
        } else {
            backoff = (backoff * 2).min(FOLLOW_EVERY);
            backoff
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Serves `server` until `shutdown`; health is SERVING while every probe of `ctx` answers and
/// NOT_SERVING while one does not.
/// Background workers stop as soon as shutdown begins and are awaited before returning.
pub async fn serve(
    ctx: Context,
    server: GrpcServer,
    listener: impl Into<Arc<TcpListener>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let mut probes = ctx.backend_probes();
    probes.extend(std::mem::take(
        &mut *ctx.probes.lock().unwrap_or_else(|e| e.into_inner()),
    ));
    tokio::spawn(follow_dependencies(
        server.readiness(),
        probes,
        ctx.stop.clone(),
    ));
    let stop = ctx.stop.clone();
    let on_signal = stop.clone();
    let served = server
        .serve(listener, async move {
            shutdown.await;
            on_signal.cancel();
        })
        .await;
    stop.cancel();
    let workers = std::mem::take(&mut *ctx.workers.lock().unwrap_or_else(|e| e.into_inner()));
    for w in workers {
        let _ = w.await;
    }
    served.what("server")
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

/// Builds what `build` adds to a server while `listener` answers health checks with
/// NOT_SERVING (loading a model takes seconds: probes see a process starting, not a refused
/// connection), then serves it until `shutdown`. A shutdown during the build ends it there.
pub async fn build_and_serve<B>(
    ctx: Context,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    build: B,
) -> Result<()>
where
    B: for<'a> FnOnce(&'a Context, &'a mut GrpcServer) -> BoxFuture<'a, Result<()>>,
{
    let bound = listener.local_addr().what("listener")?;
    let keys = api_keys(ctx.settings(), bound)?;
    let tls = tls::server(ctx.settings())?;
    let starting = agent_learning_server::Starting::answer(listener, tls.clone())
        .await
        .what("server")?;
    let mut shutdown = Box::pin(shutdown);
    let mut server = GrpcServer::new(limits(ctx.settings()))
        .what("server")?
        .with_keys(keys)
        .with_tls(tls);
    tokio::select! {
        built = build(&ctx, &mut server) => built?,
        _ = &mut shutdown => {
            tracing::info!("shutdown requested while starting");
            ctx.stop.cancel();
            return Ok(());
        }
    }
    serve(ctx, server, starting.finish(), shutdown).await
}

/// Serves `S` alone on `listener` until `shutdown`.
pub async fn serve_one<S: Service>(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let own = listener.local_addr().what("listener")?;
    let mut ctx = Context::new(settings, own)?;
    ctx.standalone = true;
    build_and_serve(ctx, listener, shutdown, |ctx, server| {
        Box::pin(async move { add::<S>(ctx, server).await.map(drop) })
    })
    .await
}

/// The `main` of a standalone service binary: flags, configuration, telemetry, listener, then
/// `S` until SIGTERM or Ctrl-C.
pub async fn run_standalone<S: Service>(about: &'static str) -> Result<()> {
    let matches = Args::command().about(about).get_matches();
    let args = Args::from_arg_matches(&matches).what("arguments")?;
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
    })
    .what("configuration")?;
    let _telemetry = agent_learning_telemetry::init(&TelemetryOptions {
        service_name: format!("agent-learning-{}", S::NAME),
        log_format: settings.telemetry.log_format,
        log_filter: settings.telemetry.log_filter.clone(),
        otlp_endpoint: settings.telemetry.otlp_endpoint.clone(),
        metrics_addr: settings.telemetry.metrics_addr.clone(),
    })
    .what("telemetry")?;
    let listener = TcpListener::bind(&settings.server.addr)
        .await
        .what(format!("server.addr {}", settings.server.addr))?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(service = S::NAME, %addr, "listening");
    }
    serve_one::<S>(
        settings,
        listener,
        Box::pin(agent_learning_server::shutdown_signal())
            as Pin<Box<dyn Future<Output = ()> + Send>>,
    )
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tonic_health::pb::health_check_response::ServingStatus as Status;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    use super::*;

    async fn status(client: &mut HealthClient<Channel>) -> i32 {
        status_of(client, "test.Service").await
    }

    async fn status_of(client: &mut HealthClient<Channel>, service: &str) -> i32 {
        client
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .map(|r| r.into_inner().status)
            .unwrap_or(-1)
    }

    async fn until(client: &mut HealthClient<Channel>, want: Status) {
        for _ in 0..200 {
            if status(client).await == want as i32 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("health never became {want:?}");
    }

    #[tokio::test]
    async fn a_peer_that_never_answers_fails_the_start_naming_its_key() {
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("runtime-peers-{}", std::process::id()));
        let settings = Settings::load(&Sources {
            file: None,
            overrides: vec![
                ("data_dir".into(), dir.display().to_string()),
                (
                    "services.explorer".into(),
                    format!("http://127.0.0.1:{port}"),
                ),
                ("services.startup_wait_secs".into(), "1".into()),
            ],
        })
        .unwrap();
        let ctx = Context::new(settings, "127.0.0.1:1".parse().unwrap()).unwrap();
        // Left empty, world_model is this process's own server: not waited for.
        let err = ctx
            .wait_for_peers(&["world_model", "explorer"])
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("services.explorer http://127.0.0.1:{port}")),
            "{text}"
        );
        assert!(text.contains("no answer within 1s"), "{text}");
    }

    #[test]
    fn keys_are_required_off_loopback() {
        let load = |overrides: &[(&str, &str)]| {
            Settings::load(&Sources {
                file: None,
                overrides: overrides
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })
            .unwrap()
        };
        let open: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let loopback: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        // Nothing configured: fine on loopback, refused elsewhere, naming what to set.
        assert!(api_keys(&load(&[]), loopback).unwrap().is_none());
        let err = api_keys(&load(&[]), open).unwrap_err();
        assert_eq!(err.what, "auth.internal_key");
        assert!(err.source.to_string().contains("0.0.0.0:50051"), "{err}");
        // Explicitly disabled: no keys anywhere.
        assert!(
            api_keys(&load(&[("auth.mode", "disabled")]), open)
                .unwrap()
                .is_none()
        );
        // Keys without the internal one: refused, on loopback too.
        let err = api_keys(&load(&[("auth.keys", "")]), loopback);
        assert!(err.unwrap().is_none(), "a blank value is no key");
        let err = api_keys(&load(&[("auth.mode", "required")]), loopback).unwrap_err();
        assert_eq!(err.what, "auth.internal_key");
        let keys = api_keys(&load(&[("auth.internal_key", "k")]), open)
            .unwrap()
            .unwrap();
        assert_eq!(keys.authenticate("k").unwrap().id, "internal");
    }

    #[tokio::test]
    async fn health_follows_the_dependencies_both_ways() {
        let limits = ServerLimits {
            max_message_bytes: 1 << 20,
            concurrency_limit_per_connection: 16,
            max_in_flight: 0,
            request_timeout: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(1),
        };
        let mut server = GrpcServer::new(limits).unwrap();
        server.track("test.Service");
        let up = Arc::new(AtomicBool::new(false));
        let probe: Probe = {
            let up = up.clone();
            Arc::new(move || {
                let ok = up.load(Ordering::SeqCst);
                Box::pin(async move {
                    if ok {
                        Ok(())
                    } else {
                        Err("database down".into())
                    }
                })
            })
        };
        let stop = CancellationToken::new();
        tokio::spawn(follow_dependencies(
            server.readiness(),
            vec![probe],
            stop.clone(),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = tokio::spawn(server.serve(listener, stop.clone().cancelled_owned()));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let mut client = HealthClient::new(channel);

        until(&mut client, Status::NotServing).await;
        up.store(true, Ordering::SeqCst);
        until(&mut client, Status::Serving).await;
        up.store(false, Ordering::SeqCst);
        until(&mut client, Status::NotServing).await;
        // The process still answers: liveness stays SERVING while readiness is down.
        assert_eq!(
            status_of(&mut client, agent_learning_server::LIVENESS).await,
            Status::Serving as i32
        );
        up.store(true, Ordering::SeqCst);
        until(&mut client, Status::Serving).await;
        stop.cancel();
        serving.await.unwrap().unwrap();
    }
}
