//! gRPC serving shared by every agent-learning process: health checking that starts
//! `NOT_SERVING` and flips to `SERVING` once dependencies answer, server reflection, explicit
//! limits, and a graceful shutdown on SIGINT/SIGTERM with a bounded drain.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;
pub use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

/// Transport limits applied to every service of a server.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Largest gRPC message accepted or sent; every service adapter applies it.
    pub max_message_bytes: usize,
    pub concurrency_limit_per_connection: usize,
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

/// A gRPC server under construction: add services, then `serve`.
pub struct GrpcServer {
    routes: RoutesBuilder,
    health: HealthReporter,
    services: Vec<&'static str>,
    limits: ServerLimits,
    status: Arc<tokio::sync::Mutex<Option<ServingStatus>>>,
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
        })
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
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let readiness = self.readiness();
        readiness.initial(ServingStatus::NotServing).await;
        let limits = self.limits;
        let addr = listener.local_addr()?;
        // Our own listener: the builder's tcp_nodelay does not reach accepted sockets, so set it
        // here, or small responses wait on delayed ACKs (~40 ms a call).
        let incoming = tonic::transport::server::TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(Duration::from_secs(60)));

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            shutdown.await;
            readiness.set(ServingStatus::NotServing).await;
            let _ = signalled_tx.send(());
            let _ = stop_tx.send(());
        });

        info!(%addr, "grpc server listening");
        let server = tonic::transport::Server::builder()
            .concurrency_limit_per_connection(limits.concurrency_limit_per_connection)
            .timeout(limits.request_timeout)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
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
