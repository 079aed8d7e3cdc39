//! The all-in-one server: every service on one port, sharing the embedded backends, the model
//! and the queue, each reaching the others through its gRPC client.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use agent_learning_config::Settings;
use agent_learning_coordinator::Coordinator;
use agent_learning_curator::Curator;
use agent_learning_environment::EnvService;
use agent_learning_explorer::Explorer;
use agent_learning_policy::Policy;
use agent_learning_reflector::Reflector;
use agent_learning_runtime::{Peers, consumer_name, limits, open_backends, open_queue};
use agent_learning_server::GrpcServer;
use agent_learning_world_model::WorldModel;
use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub async fn serve_all(
    settings: &Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    environment: Option<EnvService>,
) -> anyhow::Result<()> {
    let model = {
        let s = settings.clone();
        tokio::task::spawn_blocking(move || agent_learning_llm::open_chat_model(&s))
            .await?
            .context("language model (llm.*)")?
    };
    serve_all_with(settings, listener, shutdown, environment, model).await
}

/// [`serve_all`] with the language model given (benchmarks use a zero-latency one).
pub async fn serve_all_with(
    settings: &Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    environment: Option<EnvService>,
    model: Arc<dyn agent_learning_llm::ChatModel>,
) -> anyhow::Result<()> {
    let own = listener.local_addr()?;
    let backends = open_backends(settings).await?;
    let queue = open_queue(settings, &backends.store).await?;
    let peers = Peers::new(settings, own)?;
    let stop = CancellationToken::new();

    let curator = Curator::open(settings, &backends).await?;
    let world_model = WorldModel::open(settings, &backends, model.clone()).await?;
    let explorer = Arc::new(Explorer::new(
        backends.store.clone(),
        queue.clone(),
        model.clone(),
        peers.world_model.clone(),
        Explorer::defaults(settings),
    ));
    let reflector = Arc::new(Reflector::new(
        backends.store.clone(),
        queue.clone(),
        model.clone(),
        settings.pipeline.reflection_max_chars,
    ));
    let policy = Policy::open(settings, &backends, model.clone(), peers.curator.clone()).await?;
    let coordinator = Coordinator::new(
        backends.store.clone(),
        queue.clone(),
        peers,
        settings.clone(),
        stop.clone(),
    );

    let mut server = GrpcServer::new(limits(settings))?;
    curator.mount(&mut server);
    world_model.mount(&mut server);
    explorer.mount(&mut server);
    reflector.mount(&mut server);
    policy.mount(&mut server);
    coordinator.mount(&mut server);
    if let Some(env) = environment {
        env.mount(&mut server);
    }

    let block = Duration::from_millis(settings.queue.block_ms);
    // 0: reflectors run as their own processes (`reflector`), none here.
    let mut workers = reflector.spawn_consumers(
        settings.pipeline.reflectors,
        &consumer_name("reflector"),
        block,
        stop.clone(),
    );
    workers.push(tokio::spawn(
        agent_learning_curator::stream::consume_reflections(
            curator.clone(),
            queue.clone(),
            consumer_name("curator"),
            block,
            stop.clone(),
        ),
    ));
    let resumed = coordinator.resume_unfinished().await?;
    if resumed > 0 {
        tracing::info!(resumed, "resumed unfinished runs");
    }

    let readiness = server.readiness();
    let probe = curator.clone();
    tokio::spawn(readiness.serve_when_ready(move || {
        let probe = probe.clone();
        async move { probe.ready().await }
    }));
    let served = agent_learning_runtime::serve_until(server, listener, shutdown, stop).await;
    for w in workers {
        let _ = w.await;
    }
    served
}
