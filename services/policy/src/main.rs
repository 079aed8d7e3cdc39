//! The standalone policy service.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    agent_learning_runtime::run_standalone::<agent_learning_policy::Policy>(
        "agent-learning policy service (Compile, Decide, Feedback over gRPC)",
    )
    .await?;
    Ok(())
}
