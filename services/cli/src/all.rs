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
use agent_learning_runtime::{Context, add};
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
    agent_learning_runtime::build_and_serve(ctx, listener, shutdown, |ctx, server| {
        Box::pin(async move {
            // The model loads first: it is the slowest to open and every service but two
            // needs it.
            ctx.model().await?;
            add::<Curator>(ctx, server).await?;
            add::<WorldModel>(ctx, server).await?;
            add::<Explorer>(ctx, server).await?;
            add::<Reflector>(ctx, server).await?;
            add::<Policy>(ctx, server).await?;
            add::<Coordinator>(ctx, server).await?;
            if let Some(env) = environment {
                env.mount(server);
            }
            Ok(())
        })
    })
    .await?;
    Ok(())
}
