//! The standalone coordinator service.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    agent_learning_runtime::run_standalone::<agent_learning_coordinator::Coordinator>(
        "agent-learning coordinator service (training runs over gRPC)",
    )
    .await?;
    Ok(())
}
