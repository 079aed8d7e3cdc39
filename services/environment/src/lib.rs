//! The Environment gRPC service: any `Environment` served to remote callers, many episodes at
//! once, each named by the id `Reset` returns; and [`RemoteEnvironment`], a client that
//! implements the same trait, so an environment written in any language plugs in.

mod client;
mod server;

pub use client::{RemoteEnvironment, RemoteError};
pub use server::{EnvFactory, EnvService};

/// Serves one built-in environment until `shutdown` resolves.
pub async fn serve_environment(
    name: &str,
    limits: agent_learning_server::ServerLimits,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut server = agent_learning_server::GrpcServer::new(limits)?;
    EnvService::built_in(name)?.mount(&mut server);
    let readiness = server.readiness();
    tokio::spawn(async move {
        readiness
            .set(agent_learning_server::ServingStatus::Serving)
            .await
    });
    server.serve(listener, shutdown).await?;
    Ok(())
}

use agent_learning_envs::{EnvError, Environment, built_in};

/// An environment by name: a built-in one (`driving`, ...) or `grpc://HOST:PORT` for a remote
/// Environment server.
pub fn open_env(spec: &str) -> Result<Box<dyn Environment>, EnvError> {
    match spec.strip_prefix("grpc://") {
        Some(addr) => RemoteEnvironment::connect(&format!("http://{addr}"))
            .map(|e| Box::new(e) as Box<dyn Environment>)
            .map_err(|e| EnvError::Unknown(format!("{spec}: {e}"))),
        None => built_in(spec).map(|(env, _)| env),
    }
}
