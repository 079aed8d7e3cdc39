//! The standalone world-model service.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    agent_learning_runtime::run_standalone::<agent_learning_world_model::WorldModel>(
        "agent-learning world-model service (Fit, Predict, Evaluate over gRPC)",
    )
    .await?;
    Ok(())
}
