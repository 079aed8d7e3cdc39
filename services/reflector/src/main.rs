//! The standalone reflector service: the Reflect RPC plus consumers of the rollouts stream.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    agent_learning_runtime::run_standalone(
        "reflector",
        "agent-learning reflector service (four-section reflections; consumes the rollouts stream)",
        |settings, listener, shutdown| {
            agent_learning_reflector::serve(settings, listener, shutdown)
        },
    )
    .await
}
