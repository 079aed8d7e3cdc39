//! The vector index behind semantic de-duplication and retrieval: the `VectorIndex` trait, the
//! in-process Qdrant engine (`qdrant-edge`, persisted under the data dir) and a Qdrant server
//! through `qdrant-client`. Both honour the same contract (see `tests/contract.rs`).

mod edge;
mod remote;
mod upkeep;

use std::collections::BTreeMap;

use async_trait::async_trait;
use uuid::Uuid;

pub use edge::{EdgeIndex, EdgeTuning, Layout, SearchMode};
pub use remote::RemoteIndex;
pub use upkeep::Upkeep;

#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    #[error("vector index: collection {0} does not exist")]
    NoCollection(String),
    #[error("vector index: {0}")]
    Engine(String),
    #[error("vector index: point {id} has {got} dimensions, the collection {want}")]
    Dimension { id: Uuid, got: usize, want: usize },
}

pub type Result<T, E = VectorError> = std::result::Result<T, E>;

/// A point: an id, a vector, and keyword payload fields to filter on.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub id: Uuid,
    pub vector: Vec<f32>,
    pub payload: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: Uuid,
    /// Cosine similarity.
    pub score: f32,
}

/// One of the searches of [`VectorIndex::search_batch`].
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    pub vector: Vec<f32>,
    pub limit: usize,
    pub filter: Filter,
}

/// Conjunction of "field is one of these values" conditions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub must: Vec<(String, Vec<String>)>,
}

impl Filter {
    pub fn eq(mut self, field: &str, value: impl Into<String>) -> Self {
        self.must.push((field.to_owned(), vec![value.into()]));
        self
    }

    pub fn any(mut self, field: &str, values: Vec<String>) -> Self {
        self.must.push((field.to_owned(), values));
        self
    }
}

/// Cosine-similarity vector storage, by collection.
#[async_trait]
pub trait VectorIndex: Send + Sync {
    /// Creates the collection (cosine distance, `dim` dimensions, keyword indexes on
    /// `keyword_fields`) unless it exists.
    async fn ensure_collection(
        &self,
        collection: &str,
        dim: usize,
        keyword_fields: &[&str],
    ) -> Result<()>;
    /// Inserts or replaces points by id.
    async fn upsert(&self, collection: &str, points: Vec<Point>) -> Result<()>;
    /// Removes points; unknown ids are ignored.
    async fn delete(&self, collection: &str, ids: Vec<Uuid>) -> Result<()>;
    /// The `limit` nearest points passing `filter`, most similar first.
    async fn search(
        &self,
        collection: &str,
        vector: Vec<f32>,
        limit: usize,
        filter: Filter,
    ) -> Result<Vec<Hit>>;
    /// Several searches of one collection, answered in the order asked: one request to a
    /// Qdrant server; the in-process engine runs them on every core.
    async fn search_batch(&self, collection: &str, searches: Vec<Search>) -> Result<Vec<Vec<Hit>>>;
    /// Points in id order after `after`, with their payloads but not their vectors.
    async fn scroll(
        &self,
        collection: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<(Uuid, BTreeMap<String, String>)>>;
    async fn count(&self, collection: &str) -> Result<u64>;
    /// Builds search indexes over what was written; searches stay correct without it.
    async fn optimize(&self, collection: &str) -> Result<()>;
    /// Answers while the index's server does (the in-process engine always does).
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

/// The index the configuration names: a Qdrant server at `vector.qdrant_url`, else the
/// in-process engine under the data directory.
pub fn open(settings: &agent_learning_config::Settings) -> Result<std::sync::Arc<dyn VectorIndex>> {
    use secrecy::ExposeSecret as _;
    Ok(match &settings.vector.qdrant_url {
        Some(url) => std::sync::Arc::new(
            RemoteIndex::connect(
                url,
                settings
                    .vector
                    .qdrant_api_key
                    .as_ref()
                    .map(|k| k.expose_secret().to_owned()),
            )?
            .with_hnsw_ef(settings.vector.search_ef()),
        ),
        None => std::sync::Arc::new(EdgeIndex::open_tuned(
            &settings.vector_dir(),
            EdgeTuning {
                full_scan_threshold_kb: settings.vector.full_scan_threshold_kb,
                indexing_threshold_kb: settings.vector.indexing_threshold_kb,
                hnsw_ef: settings.vector.search_ef(),
                quantize: settings.vector.quantize,
            },
        )?),
    })
}
