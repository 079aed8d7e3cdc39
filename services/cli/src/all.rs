//! The all-in-one server: every service on one port, built from one context (so they share
//! the embedded backends, the model and the queue), each reaching the others through its gRPC
//! client. The same `runtime::add` path builds each standalone binary.

use std::future::Future;
use std::sync::Arc;

use agent_learning_config::Settings;
use agent_learning_coordinator::Coordinator;
use agent_learning_curator::Curator;
use agent_learning_environment::EnvService;
use agent_learning_explorer::Explorer;
use agent_learning_policy::Policy;
use agent_learning_reflector::Reflector;
use agent_learning_runtime::{Context, add, limits};
use agent_learning_server::GrpcServer;
use agent_learning_world_model::WorldModel;
use tokio::net::TcpListener;

pub async fn serve_all(
    settings: &Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    environment: Option<EnvService>,
) -> anyhow::Result<()> {
    let ctx = Context::new(settings.clone(), listener.local_addr()?)?;
    serve_all_in(ctx, listener, shutdown, environment).await
}

/// [`serve_all`] with the language model given (benchmarks use a zero-latency one).
pub async fn serve_all_with(
    settings: &Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    environment: Option<EnvService>,
    model: Arc<dyn agent_learning_llm::ChatModel>,
) -> anyhow::Result<()> {
    let ctx = Context::new(settings.clone(), listener.local_addr()?)?.with_model(model);
    serve_all_in(ctx, listener, shutdown, environment).await
}

async fn serve_all_in(
    ctx: Context,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    environment: Option<EnvService>,
) -> anyhow::Result<()> {
    // The model loads first: it is the slowest to open and every service but two needs it.
    ctx.model().await?;
    let mut server = GrpcServer::new(limits(ctx.settings()))?;
    add::<Curator>(&ctx, &mut server).await?;
    add::<WorldModel>(&ctx, &mut server).await?;
    add::<Explorer>(&ctx, &mut server).await?;
    add::<Reflector>(&ctx, &mut server).await?;
    add::<Policy>(&ctx, &mut server).await?;
    add::<Coordinator>(&ctx, &mut server).await?;
    if let Some(env) = environment {
        env.mount(&mut server);
    }
    agent_learning_runtime::serve(ctx, server, listener, shutdown).await?;
    Ok(())
}
