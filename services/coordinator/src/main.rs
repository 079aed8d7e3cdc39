//! The standalone coordinator service.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    agent_learning_runtime::run_standalone(
        "coordinator",
        "agent-learning coordinator service (training runs over gRPC)",
        |settings, listener, shutdown| {
            agent_learning_coordinator::serve(settings, listener, shutdown)
        },
    )
    .await
}
