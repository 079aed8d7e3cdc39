//! The Environment gRPC service: any `Environment` served to remote callers, many episodes at
//! once, each named by the id `Reset` returns. Its client, [`RemoteEnvironment`], implements
//! the same trait and lives in `agent-learning-api`, so the explorer reaches any environment
//! without depending on this crate.

mod server;

pub use agent_learning_api::{RemoteEnvironment, RemoteError, open_env};
pub use server::{EnvFactory, EnvService};

#[derive(Debug, thiserror::Error)]
pub enum EnvServeError {
    #[error(transparent)]
    Env(#[from] agent_learning_envs::EnvError),
    #[error(transparent)]
    Serve(#[from] agent_learning_server::ServeError),
}

/// Serves one built-in environment on `server` (its limits, keys and TLS) until `shutdown`
/// resolves.
pub async fn serve_environment(
    name: &str,
    mut server: agent_learning_server::GrpcServer,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), EnvServeError> {
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
