//! The standalone reflector service: the Reflect RPC and consumers of the rollouts stream.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    agent_learning_runtime::run_standalone::<agent_learning_reflector::Reflector>(
        "agent-learning reflector service (four-section reflections over gRPC and the rollouts stream)",
    )
    .await?;
    Ok(())
}
