//! The standalone Curator service.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    agent_learning_runtime::run_standalone::<agent_learning_curator::Curator>(
        "agent-learning Curator service (ACE playbook curation over gRPC)",
    )
    .await?;
    Ok(())
}
