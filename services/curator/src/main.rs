//! The standalone Curator service.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    agent_learning_runtime::run_standalone(
        "curator",
        "agent-learning Curator service (ACE playbook curation over gRPC)",
        |settings, listener, shutdown| async move {
            agent_learning_curator::serve_curator(&settings, listener, shutdown).await
        },
    )
    .await
}
