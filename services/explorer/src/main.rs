//! The standalone explorer service.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    agent_learning_runtime::run_standalone(
        "explorer",
        "agent-learning explorer service (alternative-action rollouts over gRPC)",
        agent_learning_explorer::serve,
    )
    .await
}
