//! The coordinator service. `StartTraining` validates the demos, the environment and the
//! configuration, then records the run (demos included) in one transaction: a run never
//! half-imports. A driver takes the run through its stages — world-model fit, exploration,
//! reflection (until every branch point is reflected), curation (until the curator has taken
//! every valid reflection), policy compile — persisting each stage's progress. After a crash
//! the driver picks up unfinished runs where they stopped; every stage is idempotent, so
//! resuming duplicates nothing.

mod config;
mod driver;
mod grpc;
mod runs;

use std::collections::HashMap;
use std::sync::Arc;

use agent_learning_config::Settings;
use agent_learning_proto::service_names;
use agent_learning_proto::v1::coordinator_server::CoordinatorServer;
use agent_learning_queue::Queue;
use agent_learning_runtime::Peers;
use agent_learning_server::GrpcServer;
use agent_learning_store::Store;
use tokio::sync::{Mutex, broadcast};
use tokio_util::sync::CancellationToken;

pub use config::TrainingConfig;
pub use runs::{RunState, STAGES};

/// A run being driven in this process.
struct Active {
    cancel: CancellationToken,
    events: broadcast::Sender<agent_learning_proto::v1::RunEvent>,
}

pub struct Coordinator {
    store: Store,
    queue: Arc<dyn Queue>,
    peers: Peers,
    settings: Settings,
    active: Mutex<HashMap<String, Active>>,
    shutdown: CancellationToken,
}

impl Coordinator {
    pub fn new(
        store: Store,
        queue: Arc<dyn Queue>,
        peers: Peers,
        settings: Settings,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            queue,
            peers,
            settings,
            active: Mutex::new(HashMap::new()),
            shutdown,
        })
    }

    /// Resumes every run a previous process left pending or running.
    pub async fn resume_unfinished(self: &Arc<Self>) -> anyhow::Result<usize> {
        let ids = runs::unfinished(&self.store).await?;
        for id in &ids {
            tracing::info!(run = %id, "resuming run");
            self.drive(id.clone()).await;
        }
        Ok(ids.len())
    }

    pub fn mount(self: &Arc<Self>, server: &mut GrpcServer) {
        let max = server.limits().max_message_bytes;
        server.routes_mut().add_service(
            CoordinatorServer::new(grpc::CoordinatorService(self.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        );
        server.track(service_names::COORDINATOR);
    }
}

/// Serves the coordinator alone (the standalone `coordinator` binary); the stage services are
/// reached at `services.*`.
pub async fn serve(
    settings: Settings,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = agent_learning_runtime::open_store(&settings).await?;
    let queue = agent_learning_runtime::open_queue(&settings, &store).await?;
    let peers = Peers::new(&settings, listener.local_addr()?)?;
    let stop = CancellationToken::new();
    let coordinator = Coordinator::new(store.clone(), queue, peers, settings.clone(), stop.clone());
    let mut server = GrpcServer::new(agent_learning_runtime::limits(&settings))?;
    coordinator.mount(&mut server);
    coordinator.resume_unfinished().await?;
    agent_learning_runtime::serving_when_store_answers(&server, store);
    agent_learning_runtime::serve_until(server, listener, shutdown, stop).await
}
