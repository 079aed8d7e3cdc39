//! The standalone explorer service.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    agent_learning_runtime::run_standalone::<agent_learning_explorer::Explorer>(
        "agent-learning explorer service (alternative actions from expert states over gRPC)",
    )
    .await?;
    Ok(())
}
