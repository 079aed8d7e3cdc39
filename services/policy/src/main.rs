//! The standalone policy service.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    agent_learning_runtime::run_standalone(
        "policy",
        "agent-learning policy service (Compile, Decide, Feedback over gRPC)",
        agent_learning_policy::serve,
    )
    .await
}
