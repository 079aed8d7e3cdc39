//! Vectors of recently embedded texts, so a text asked for again (a state a policy sees often,
//! the state Decide embeds for its exemplars and RenderContext embeds for the playbook, a
//! duplicate in one batch) costs a lookup instead of a forward pass.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use crate::{EmbedError, Embedder};

/// Each cached text's vector, and when it was last used (a tick of the cache's clock).
type Entries = HashMap<String, (Arc<[f32]>, u64)>;

/// Wraps an embedder with a cache of the last `capacity` distinct texts' vectors (by exact
/// text: no hash collision can return another text's vector). Texts repeated in one call are
/// embedded once.
pub struct Cached {
    inner: Arc<dyn Embedder>,
    capacity: usize,
    entries: std::sync::Mutex<Entries>,
    clock: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Cached {
    pub fn new(inner: Arc<dyn Embedder>, capacity: usize) -> Self {
        Self {
            inner,
            capacity: capacity.max(1),
            entries: Default::default(),
            clock: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Texts served from the cache, and texts embedded, since the start.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Embedder for Cached {
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn model_id(&self) -> &str {
        self.inner.model_id()
    }

    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut out: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        // Distinct texts not cached, and where each goes.
        let mut missing: Vec<String> = Vec::new();
        let mut slots: HashMap<&str, Vec<usize>> = HashMap::new();
        {
            let mut entries = self.lock();
            for (i, t) in texts.iter().enumerate() {
                if let Some((v, used)) = entries.get_mut(t.as_str()) {
                    *used = self.clock.fetch_add(1, Ordering::Relaxed);
                    out[i] = Some(v.to_vec());
                    continue;
                }
                let at = slots.entry(t.as_str()).or_default();
                if at.is_empty() {
                    missing.push(t.clone());
                }
                at.push(i);
            }
        }
        let hits = out.iter().filter(|v| v.is_some()).count() as u64;
        self.hits.fetch_add(hits, Ordering::Relaxed);
        self.misses
            .fetch_add(missing.len() as u64, Ordering::Relaxed);
        if !missing.is_empty() {
            let vectors = self.inner.embed(missing.clone()).await?;
            if vectors.len() != missing.len() {
                return Err(EmbedError::Model(format!(
                    "{} vectors for {} texts",
                    vectors.len(),
                    missing.len()
                )));
            }
            let mut entries = self.lock();
            for (text, v) in missing.into_iter().zip(vectors) {
                for &i in &slots[text.as_str()] {
                    out[i] = Some(v.clone());
                }
                let used = self.clock.fetch_add(1, Ordering::Relaxed);
                entries.insert(text, (v.into(), used));
            }
            if entries.len() > self.capacity {
                // Keep the most recently used half: eviction stays amortised O(1) per insert.
                let mut ages: Vec<u64> = entries.values().map(|(_, u)| *u).collect();
                let keep = self.capacity / 2;
                let cut = ages.len() - keep;
                let (_, nth, _) = ages.select_nth_unstable(cut);
                let threshold = *nth;
                entries.retain(|_, (_, u)| *u >= threshold);
            }
        }
        Ok(out.into_iter().map(|v| v.unwrap_or_default()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testsuite::Counting;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test]
    async fn each_text_is_embedded_once_while_it_is_kept() {
        let inner = Arc::new(Counting::new(1));
        let c = Cached::new(inner.clone(), 4);
        let v = c.embed(strings(&["a", "bb", "a", "ccc"])).await.unwrap();
        assert_eq!(v, vec![vec![1.0], vec![2.0], vec![1.0], vec![3.0]]);
        assert_eq!(inner.asked(), strings(&["a", "bb", "ccc"]));
        let v = c.embed(strings(&["ccc", "a"])).await.unwrap();
        assert_eq!(v, vec![vec![3.0], vec![1.0]]);
        assert_eq!(inner.asked().len(), 3, "both were cached");
        assert_eq!(
            c.stats(),
            (2, 3),
            "two served from the cache, three embedded"
        );
        // Past the capacity, the most recently used half stays.
        c.embed(strings(&["d", "e"])).await.unwrap();
        inner.clear();
        c.embed(strings(&["e", "d", "a"])).await.unwrap();
        assert_eq!(inner.asked(), strings(&["a"]));
    }
}
