//! The standalone world-model service.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    agent_learning_runtime::run_standalone(
        "world-model",
        "agent-learning world-model service (transition retrieval + model prediction over gRPC)",
        |settings, listener, shutdown| {
            agent_learning_world_model::serve(settings, listener, shutdown)
        },
    )
    .await
}
