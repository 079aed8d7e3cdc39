//! The record's embedding cache in front of the model: a text any process of the deployment
//! embedded (before a restart too) is read from the record by content hash instead of being
//! embedded again. Reads are one query per call; what was embedded is written behind the
//! caller in batches, so Decide never waits for a write. A cache only: when the record is
//! down, texts are embedded as if nothing were kept, and a lost write costs a forward pass.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use agent_learning_embed::{EmbedError, Embedder};
use agent_learning_store::{Store, embedding_key};
use async_trait::async_trait;
use tokio::sync::mpsc;

/// Vectors written in one statement.
const WRITE_BATCH: usize = 512;
/// Vectors waiting for the writer; more are not kept (embedded again when asked again).
const WRITE_QUEUE: usize = 8 * WRITE_BATCH;

pub struct Recorded {
    inner: Arc<dyn Embedder>,
    store: Store,
    /// The writer's queue, made (and the writer started) by the first call that embeds, on
    /// the runtime that serves it.
    writes: OnceLock<mpsc::Sender<(String, Vec<f32>)>>,
    read: AtomicU64,
    embedded: AtomicU64,
}

impl Recorded {
    pub fn new(inner: Arc<dyn Embedder>, store: Store) -> Self {
        Self {
            inner,
            store,
            writes: OnceLock::new(),
            read: AtomicU64::new(0),
            embedded: AtomicU64::new(0),
        }
    }

    /// Texts read from the record, and texts embedded, since the start.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.read.load(Ordering::Relaxed),
            self.embedded.load(Ordering::Relaxed),
        )
    }

    fn writer(&self) -> &mpsc::Sender<(String, Vec<f32>)> {
        self.writes.get_or_init(|| {
            let (tx, mut rx) = mpsc::channel::<(String, Vec<f32>)>(WRITE_QUEUE);
            let store = self.store.clone();
            let model = self.inner.model_id().to_owned();
            tokio::spawn(async move {
                let mut batch = Vec::with_capacity(WRITE_BATCH);
                while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
                    if let Err(e) = store.keep_embeddings(&model, &batch).await {
                        tracing::warn!(error = %e, vectors = batch.len(), "embedding cache: vectors not kept in the record");
                    }
                    batch.clear();
                }
            });
            tx
        })
    }
}

#[async_trait]
impl Embedder for Recorded {
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn model_id(&self) -> &str {
        self.inner.model_id()
    }

    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let model = self.inner.model_id();
        let keys: Vec<String> = texts.iter().map(|t| embedding_key(model, t)).collect();
        let mut distinct: Vec<String> = keys.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let mut known = match self.store.cached_embeddings(&distinct).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "embedding cache: the record could not be read; embedding every text");
                HashMap::new()
            }
        };
        // A kept vector of another length is not this model's: embedded again (and mended).
        let dim = self.inner.dim();
        known.retain(|_, v| v.len() == dim);
        // Each distinct text not kept, embedded once.
        let mut missing: Vec<String> = Vec::new();
        let mut missing_keys: Vec<String> = Vec::new();
        let mut asked: HashSet<&str> = HashSet::new();
        let mut read = 0u64;
        for (key, text) in keys.iter().zip(&texts) {
            if known.contains_key(key) {
                read += 1;
            } else if asked.insert(key) {
                missing_keys.push(key.clone());
                missing.push(text.clone());
            }
        }
        self.read.fetch_add(read, Ordering::Relaxed);
        if !missing.is_empty() {
            self.embedded
                .fetch_add(missing.len() as u64, Ordering::Relaxed);
            let vectors = self.inner.embed(missing).await?;
            if vectors.len() != missing_keys.len() {
                return Err(EmbedError::Model(format!(
                    "{} vectors for {} texts",
                    vectors.len(),
                    missing_keys.len()
                )));
            }
            let writer = self.writer();
            for (key, v) in missing_keys.into_iter().zip(vectors) {
                // A full queue (the record is slow or down) drops the write: a cache.
                let _ = writer.try_send((key.clone(), v.clone()));
                known.insert(key, v);
            }
        }
        Ok(keys
            .iter()
            .map(|k| known.get(k).cloned().unwrap_or_default())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_learning_embed::testsuite::Counting;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Waits (bounded) until the writer has kept every text of `texts`.
    async fn kept(store: &Store, texts: &[&str]) {
        let keys: Vec<String> = texts.iter().map(|t| embedding_key("counting", t)).collect();
        for _ in 0..200 {
            if store.cached_embeddings(&keys).await.unwrap().len() == keys.len() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("{texts:?} were never kept in the record");
    }

    #[tokio::test]
    async fn a_text_is_embedded_once_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.db");
        let store = Store::open_sqlite(&path, 2).await.unwrap();
        let first = Arc::new(Counting::new(2));
        let r = Recorded::new(first.clone(), store.clone());
        let v = r.embed(strings(&["a", "bb", "a", "ccc"])).await.unwrap();
        assert_eq!(v[0], vec![1.0, 1.0]);
        assert_eq!(v[1], vec![2.0, 2.0]);
        assert_eq!(v[2], v[0]);
        assert_eq!(v[3], vec![3.0, 3.0]);
        assert_eq!(
            first.asked(),
            strings(&["a", "bb", "ccc"]),
            "a text repeated in one call is embedded once"
        );
        assert_eq!(r.stats(), (0, 3));
        kept(&store, &["a", "bb", "ccc"]).await;
        drop(r);
        drop(store);

        // Another process on the same record (or this one restarted).
        let store = Store::open_sqlite(&path, 2).await.unwrap();
        let second = Arc::new(Counting::new(2));
        let r = Recorded::new(second.clone(), store.clone());
        let v = r.embed(strings(&["ccc", "dddd", "a"])).await.unwrap();
        assert_eq!(
            v,
            vec![vec![3.0, 3.0], vec![4.0, 4.0], vec![1.0, 1.0]],
            "read and embedded vectors come back in order"
        );
        assert_eq!(second.asked(), strings(&["dddd"]));
        assert_eq!(r.stats(), (2, 1), "two read from the record, one embedded");

        // A kept vector of the wrong length is embedded again and mended.
        store
            .keep_embeddings("counting", &[(embedding_key("counting", "bb"), vec![7.0])])
            .await
            .unwrap();
        let v = r.embed(strings(&["bb"])).await.unwrap();
        assert_eq!(v, vec![vec![2.0, 2.0]]);
        for _ in 0..200 {
            let key = embedding_key("counting", "bb");
            if store
                .cached_embeddings(std::slice::from_ref(&key))
                .await
                .unwrap()[&key]
                .len()
                == 2
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the damaged vector was never mended");
    }
}
