//! Keeping a collection searchable as it grows: after a number of writes its search structures
//! (the HNSW graph, the 8-bit vectors) are rebuilt on a background task, one rebuild at a time,
//! so a search's cost follows the graph instead of a scan of everything written since.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{Result, VectorIndex};

/// Writes before a collection's first rebuild: about where the engine starts building graphs
/// (`vector.indexing_threshold_kb` of 1,000 KB holds some 660 MiniLM vectors).
const FIRST_REBUILD: usize = 1000;

/// Counts one collection's writes and optimizes it in the background: once the points written
/// since the last optimization reach the points there were then (at least [`FIRST_REBUILD`]),
/// capped at `after_writes`. A small collection is rebuilt as it doubles, so what a search
/// scans unindexed stays at most about the size of what it walks as a graph; a large one after
/// every `after_writes` writes.
#[derive(Clone)]
pub struct Upkeep {
    index: Arc<dyn VectorIndex>,
    collection: String,
    after_writes: usize,
    pending: Arc<AtomicUsize>,
    /// Points in the collection at the last optimization (as counted here).
    size: Arc<AtomicUsize>,
    /// Held while the collection is optimized: one optimization at a time, and
    /// `optimize_now` returns only once a background one in flight has finished too.
    running: Arc<tokio::sync::Mutex<()>>,
}

impl Upkeep {
    /// `after_writes` of 0 never optimizes in the background.
    pub fn new(index: Arc<dyn VectorIndex>, collection: &str, after_writes: usize) -> Self {
        Self {
            index,
            collection: collection.to_owned(),
            after_writes,
            pending: Arc::new(AtomicUsize::new(0)),
            size: Arc::new(AtomicUsize::new(0)),
            running: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The points the collection held when this process opened it.
    pub fn opened_with(&self, points: u64) {
        self.size.store(
            usize::try_from(points).unwrap_or(usize::MAX),
            Ordering::SeqCst,
        );
    }

    fn due(&self) -> bool {
        let threshold = self
            .size
            .load(Ordering::SeqCst)
            .max(FIRST_REBUILD)
            .min(self.after_writes);
        self.pending.load(Ordering::SeqCst) >= threshold
    }

    /// Counts `n` points written; when due, starts an optimization on a background task unless
    /// one is running (which then looks again when it ends). Searches keep answering meanwhile.
    /// Call from within a Tokio runtime.
    pub fn note_writes(&self, n: usize) {
        if self.after_writes == 0 || n == 0 {
            return;
        }
        self.pending.fetch_add(n, Ordering::SeqCst);
        if !self.due() {
            return;
        }
        let Ok(running) = self.running.clone().try_lock_owned() else {
            return;
        };
        let upkeep = self.clone();
        tokio::spawn(async move {
            while upkeep.due() {
                let writes = upkeep.pending.swap(0, Ordering::SeqCst);
                upkeep.size.fetch_add(writes, Ordering::SeqCst);
                let started = std::time::Instant::now();
                match upkeep.index.optimize(&upkeep.collection).await {
                    Ok(()) => tracing::info!(
                        collection = upkeep.collection,
                        writes,
                        secs = started.elapsed().as_secs_f64(),
                        "vector index optimized"
                    ),
                    Err(e) => {
                        tracing::warn!(
                            collection = upkeep.collection,
                            error = %e,
                            "vector index optimization failed"
                        );
                        break;
                    }
                }
            }
            drop(running);
        });
    }

    /// Optimizes now (after an optimization already running in the background, if one is);
    /// for after bulk loads.
    pub async fn optimize_now(&self) -> Result<()> {
        let _one_at_a_time = self.running.lock().await;
        let writes = self.pending.swap(0, Ordering::SeqCst);
        self.size.fetch_add(writes, Ordering::SeqCst);
        self.index.optimize(&self.collection).await
    }
}
