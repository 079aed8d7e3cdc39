//! gRPC serving shared by every agent-learning process: health checking that starts
//! `NOT_SERVING` and flips to `SERVING` once dependencies answer, server reflection, explicit
//! limits, RPC metrics, an answer while the process starts, and a graceful shutdown on
//! SIGINT/SIGTERM with a bounded drain.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::net::{TcpListener, TcpStream};
use tonic::service::RoutesBuilder;
pub use tonic::transport::ServerTlsConfig;
pub use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

/// Transport limits applied to every service of a server.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Largest gRPC message accepted or sent; every service adapter applies it.
    pub max_message_bytes: usize,
    pub concurrency_limit_per_connection: usize,
    /// Requests handled at once by the whole server (health checks aside); one more is
    /// answered RESOURCE_EXHAUSTED at once instead of waiting in a queue. 0: no limit.
    pub max_in_flight: usize,
    pub request_timeout: Duration,
    /// After a shutdown signal, how long in-flight requests may still run.
    pub shutdown_grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

pub mod auth;

/// The health-check service name that answers `SERVING` whenever the process answers at all,
/// whatever its backends do: for liveness probes. The whole server's status (`""`), which
/// follows the backends, is for readiness; a liveness probe on it would restart every pod
/// during a database outage.
pub const LIVENESS: &str = "liveness";

/// A gRPC server under construction: add services, then `serve`.
pub struct GrpcServer {
    routes: RoutesBuilder,
    health: HealthReporter,
    services: Vec<&'static str>,
    limits: ServerLimits,
    status: Arc<tokio::sync::Mutex<Option<ServingStatus>>>,
    keys: Option<Arc<auth::KeyStore>>,
    tls: Option<ServerTlsConfig>,
}

impl GrpcServer {
    pub fn new(limits: ServerLimits) -> Result<Self, ServeError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(agent_learning_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(agent_learning_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        let mut routes = RoutesBuilder::default();
        routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        Ok(Self {
            routes,
            health,
            services: Vec::new(),
            limits,
            status: Arc::default(),
            keys: None,
            tls: None,
        })
    }

    /// Serves TLS (mutual TLS when the config names client CAs); `None`: plaintext.
    pub fn with_tls(mut self, tls: Option<ServerTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// Every call but health checks needs one of these keys (see [`auth`]); `None`: no keys.
    pub fn with_keys(mut self, keys: Option<Arc<auth::KeyStore>>) -> Self {
        self.keys = keys;
        self
    }

    pub fn limits(&self) -> &ServerLimits {
        &self.limits
    }

    /// The routes to add a service to; pair it with [`GrpcServer::track`] for its health.
    pub fn routes_mut(&mut self) -> &mut RoutesBuilder {
        &mut self.routes
    }

    /// Reports `name` (a fully-qualified service name) through health checking.
    pub fn track(&mut self, name: &'static str) {
        self.services.push(name);
    }

    /// A handle that flips every tracked service, and the server as a whole, to `SERVING`.
    pub fn readiness(&self) -> Readiness {
        Readiness {
            health: self.health.clone(),
            services: self.services.clone(),
            status: self.status.clone(),
        }
    }

    /// Serves on an already-bound listener until `shutdown` resolves, then drains in-flight
    /// requests for at most the grace period. Health starts `NOT_SERVING`.
    pub async fn serve(
        self,
        listener: impl Into<Arc<TcpListener>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let readiness = self.readiness();
        readiness.initial(ServingStatus::NotServing).await;
        self.health
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        let limits = self.limits;
        let keys = self.keys.clone();
        let max_body = limits.max_message_bytes;
        let in_flight = (limits.max_in_flight > 0)
            .then(|| Arc::new(tokio::sync::Semaphore::new(limits.max_in_flight)));
        let max_in_flight = limits.max_in_flight;
        let listener = listener.into();
        let addr = listener.local_addr()?;
        let incoming = accept(listener);

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            shutdown.await;
            readiness.set(ServingStatus::NotServing).await;
            let _ = signalled_tx.send(());
            let _ = stop_tx.send(());
        });

        info!(%addr, tls = self.tls.is_some(), "grpc server listening");
        let server = builder(self.tls)?
            .concurrency_limit_per_connection(limits.concurrency_limit_per_connection)
            .timeout(limits.request_timeout)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .layer(tower::layer::layer_fn(|inner| Metered { inner }))
            .layer(tower::layer::layer_fn(move |inner| InFlight {
                inner,
                permits: in_flight.clone(),
                max: max_in_flight,
            }))
            .layer(tower::layer::layer_fn(move |inner| auth::Authed {
                inner,
                keys: keys.clone(),
                max_body,
            }))
            .add_routes(self.routes.routes())
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            });
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => return result.map_err(Into::into),
            _ = signalled_rx => {}
        }
        info!(
            grace_secs = limits.shutdown_grace.as_secs(),
            "shutting down, draining requests"
        );
        match tokio::time::timeout(limits.shutdown_grace, server).await {
            Ok(result) => result.map_err(Into::into),
            Err(_) => {
                warn!("grace period over, dropping remaining requests");
                Ok(())
            }
        }
    }
}

/// A server builder, with TLS when `tls` is set. Handshakes that take longer than 10 s are
/// dropped (a client that connects and says nothing does not hold a connection).
fn builder(tls: Option<ServerTlsConfig>) -> Result<tonic::transport::Server, ServeError> {
    let server = tonic::transport::Server::builder();
    match tls {
        None => Ok(server),
        Some(tls) => {
            install_crypto_provider();
            Ok(server.tls_config(tls.timeout(Duration::from_secs(10)))?)
        }
    }
}

/// Makes aws-lc-rs the process's TLS provider (tonic's server and the Redis client ask rustls
/// for the default one; two are compiled in). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Connections accepted from a listener that may be shared with a server that answered before
/// (see [`Starting`]). `TCP_NODELAY` is set on each: the builder's setting does not reach
/// sockets of our own listener, and small responses would wait on delayed ACKs (~40 ms a call).
fn accept(
    listener: Arc<TcpListener>,
) -> impl Stream<Item = Result<TcpStream, std::io::Error>> + Send + 'static {
    futures::stream::unfold(listener, |l| async move {
        loop {
            match l.accept().await {
                Ok((socket, _)) => {
                    let _ = socket.set_nodelay(true);
                    return Some((Ok(socket), l));
                }
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: keep listening.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}

/// The method label of an RPC: its gRPC path for ours, health and reflection, else `other`
/// (a client cannot grow the metric's label set with made-up paths).
fn method_label(path: &str) -> String {
    let known = path.starts_with("/agent_learning.") || path.starts_with("/grpc.");
    if known && path.len() <= 96 {
        path.to_owned()
    } else {
        "other".to_owned()
    }
}

/// Counts every RPC by method and status code (`agent_learning_rpc_requests_total`) and times
/// it to its response headers (`agent_learning_rpc_duration_seconds`). The code is the one in
/// the response headers (every error of a unary call is answered there); a stream that fails
/// after it started counts as `Ok`.
#[derive(Clone)]
struct Metered<S> {
    inner: S,
}

pub(crate) type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for Metered<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_label(req.uri().path());
        let started = Instant::now();
        let call = self.inner.call(req);
        Box::pin(async move {
            let mut response = call.await;
            if let Ok(r) = &mut response {
                oversize_is_invalid_argument(r.headers_mut());
            }
            let code = match &response {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from),
                Err(_) => tonic::Code::Internal,
            };
            metrics::counter!(
                "agent_learning_rpc_requests_total",
                "method" => method.clone(),
                "code" => format!("{code:?}"),
            )
            .increment(1);
            metrics::histogram!("agent_learning_rpc_duration_seconds", "method" => method)
                .record(started.elapsed().as_secs_f64());
            response
        })
    }
}

/// A request over `server.max_message_bytes` is the caller's input over a limit: tonic answers
/// OUT_OF_RANGE while decoding it, every other input limit is INVALID_ARGUMENT, so this one is
/// too (its message, which names the size and the limit, stays).
fn oversize_is_invalid_argument(headers: &mut http::HeaderMap) {
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|m| m.contains("length%20too%20large") || m.contains("length too large"));
    if out_of_range && too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
}

/// The header a process's clients put on calls to its own server (the all-in-one server's
/// services reach each other through it), carrying [`peer_token`]: a Decide already counted
/// in flight is not refused halfway by its own RenderContext call when the server is full.
pub const PEER_HEADER: &str = "x-agent-learning-peer";

/// A random token of this process, for [`PEER_HEADER`]; never logged, never sent elsewhere.
pub fn peer_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        use std::hash::{BuildHasher as _, Hasher as _};
        let word = |salt: u64| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(salt);
            h.write_u32(std::process::id());
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            h.finish()
        };
        format!("{:016x}{:016x}", word(1), word(2))
    })
}

/// Sheds load: while `max` requests are in flight, one more is answered RESOURCE_EXHAUSTED at
/// once (a client backs off or tries another replica) instead of queueing behind them.
/// Health checks always pass, so probes see a busy server, not a dead one; so do the process's
/// calls to itself (see [`PEER_HEADER`]).
#[derive(Clone)]
struct InFlight<S> {
    inner: S,
    permits: Option<Arc<tokio::sync::Semaphore>>,
    max: usize,
}

impl<S, B, RB> tower::Service<http::Request<B>> for InFlight<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let Some(permits) = &self.permits else {
            return Box::pin(self.inner.call(req));
        };
        let own_peer = req
            .headers()
            .get(PEER_HEADER)
            .is_some_and(|v| v.as_bytes() == peer_token().as_bytes());
        if own_peer || req.uri().path().starts_with("/grpc.health.") {
            return Box::pin(self.inner.call(req));
        }
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let call = self.inner.call(req);
                Box::pin(async move {
                    let response = call.await;
                    drop(permit);
                    response
                })
            }
            Err(_) => {
                let busy = tonic::Status::resource_exhausted(format!(
                    "server busy: {} requests in flight (server.max_in_flight); retry with backoff",
                    self.max
                ))
                .into_http::<RB>();
                Box::pin(async move { Ok(busy) })
            }
        }
    }
}

/// Answers only health checks (and those with `NOT_SERVING`); every other call gets
/// `UNAVAILABLE`, which clients retry, instead of `UNIMPLEMENTED`.
#[derive(Clone)]
struct OnlyHealth<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for OnlyHealth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path().starts_with("/grpc.health.") {
            return Box::pin(self.inner.call(req));
        }
        let refused = tonic::Status::unavailable("starting: loading models and opening backends")
            .into_http::<RB>();
        Box::pin(async move { Ok(refused) })
    }
}

/// A listener answering while the process starts (loading models, opening backends): health
/// says `NOT_SERVING` and every other call `UNAVAILABLE`, so probes and clients see a process
/// that is starting rather than a refused connection. [`Starting::finish`] stops it and hands
/// the listener to the real server.
pub struct Starting {
    listener: Arc<TcpListener>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Starting {
    pub async fn answer(
        listener: TcpListener,
        tls: Option<ServerTlsConfig>,
    ) -> Result<Self, ServeError> {
        let listener = Arc::new(listener);
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        health
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let incoming = accept(listener.clone());
        let server = builder(tls)?
            .layer(tower::layer::layer_fn(|inner| OnlyHealth { inner }))
            .add_service(health_service)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stopped.await;
            });
        tokio::spawn(async move {
            // Keeps the reporter alive: dropping it would end health watches early.
            let _health = health;
            if let Err(e) = server.await {
                warn!(error = %e, "start-up health server");
            }
        });
        Ok(Self {
            listener,
            stop: Some(stop),
        })
    }

    /// Stops answering (connections open now are closed gracefully and reconnect) and returns
    /// the listener.
    pub fn finish(mut self) -> Arc<TcpListener> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.listener.clone()
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Flips health status for a server's services.
#[derive(Clone)]
pub struct Readiness {
    health: HealthReporter,
    services: Vec<&'static str>,
    // The last status set, so the server's initial NOT_SERVING never overwrites a SERVING
    // that a readiness task reported first.
    status: Arc<tokio::sync::Mutex<Option<ServingStatus>>>,
}

impl Readiness {
    async fn apply(&self, status: ServingStatus) {
        for name in &self.services {
            self.health.set_service_status(*name, status).await;
        }
        self.health.set_service_status("", status).await;
    }

    pub async fn set(&self, status: ServingStatus) {
        let mut current = self.status.lock().await;
        self.apply(status).await;
        *current = Some(status);
    }

    /// Sets `status` unless a status was already set.
    async fn initial(&self, status: ServingStatus) {
        let mut current = self.status.lock().await;
        if current.is_none() {
            self.apply(status).await;
            *current = Some(status);
        }
    }

    /// Polls `check` until it succeeds, then reports `SERVING`.
    pub async fn serve_when_ready<F, Fut, E>(self, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let mut delay = Duration::from_millis(100);
        loop {
            match check().await {
                Ok(()) => {
                    self.set(ServingStatus::Serving).await;
                    info!("dependencies answer, serving");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "dependencies not ready");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            warn!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => info!("received SIGINT"),
        _ = term => info!("received SIGTERM"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A service that answers after `delay`.
    #[derive(Clone)]
    struct Slow {
        delay: Duration,
    }

    impl tower::Service<http::Request<()>> for Slow {
        type Response = http::Response<String>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let delay = self.delay;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(http::Response::new("done".to_owned()))
            })
        }
    }

    fn code(r: &http::Response<String>) -> Option<String> {
        r.headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned())
    }

    #[tokio::test]
    async fn a_full_server_sheds_at_once_and_health_still_answers() {
        use tower::Service as _;
        let mut svc = InFlight {
            inner: Slow {
                delay: Duration::from_millis(300),
            },
            permits: Some(Arc::new(tokio::sync::Semaphore::new(2))),
            max: 2,
        };
        let call = |svc: &mut InFlight<Slow>, path: &str| {
            svc.call(http::Request::builder().uri(path).body(()).unwrap())
        };
        let a = call(&mut svc, "/agent_learning.v1.Policy/Decide");
        let b = call(&mut svc, "/agent_learning.v1.Policy/Decide");
        // Third while two are in flight: refused without waiting for them.
        let c = call(&mut svc, "/agent_learning.v1.Policy/Decide")
            .await
            .unwrap();
        assert_eq!(code(&c).as_deref(), Some("8"), "RESOURCE_EXHAUSTED");
        let health = call(&mut svc, "/grpc.health.v1.Health/Check");
        let (a, b, health) = tokio::join!(a, b, health);
        for r in [a.unwrap(), b.unwrap(), health.unwrap()] {
            assert_eq!(code(&r), None, "answered by the service");
        }
        // Permits come back once answered.
        let d = call(&mut svc, "/agent_learning.v1.Policy/Decide")
            .await
            .unwrap();
        assert_eq!(code(&d), None);
    }
}
