//! Transitions in the record and in the vector index: stored once (UUIDv5 of their content),
//! searched by the embedding of their state, filtered by action and source. The world model
//! predicts from them; the policy shows the nearest ones as exemplars.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use agent_learning_domain::Transition;
use agent_learning_embed::{EmbedError, Embedder};
use agent_learning_store::{Store, StoreError, StoredTransition};
use agent_learning_vector::{Filter, Point, Upkeep, VectorError, VectorIndex};
use uuid::Uuid;

const ID_NS: Uuid = Uuid::from_u128(0x3c1e_9b7a_52d4_4f0e_8a6b_0d9c_2e7f_41a3);
/// Transitions embedded per index write.
const BATCH: usize = 256;
/// Rows read per page when the index is rebuilt from the record.
const HEAL_PAGE: u64 = 1000;
/// Transitions kept in memory for `nearest` (the exemplars Decide shows are a small set read
/// again and again). A row never changes once stored (its id is its content), so no entry can
/// go stale.
const ROW_CACHE: usize = 16_384;

#[derive(Debug, thiserror::Error)]
pub enum TransitionsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vector(#[from] VectorError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
}

type Result<T, E = TransitionsError> = std::result::Result<T, E>;

/// A stored transition found by similarity.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub id: Uuid,
    pub state: String,
    pub action: String,
    pub next_state: String,
    pub done: bool,
    pub similarity: f32,
}

pub fn transition_id(ns: &str, t: &Transition) -> Uuid {
    let key = format!(
        "{ns}\u{1f}{}\u{1f}{}\u{1f}{}",
        t.state, t.action, t.next_state
    );
    Uuid::new_v5(&ID_NS, key.as_bytes())
}

#[derive(Clone)]
pub struct Transitions {
    store: Store,
    index: Arc<dyn VectorIndex>,
    embedder: Arc<dyn Embedder>,
    collection: String,
    rows: Arc<quick_cache::sync::Cache<Uuid, Arc<Transition>>>,
    /// Rebuilds the index's graph as transitions arrive (`vector.optimize_after_writes`):
    /// without it every search scans all the transitions stored.
    upkeep: Upkeep,
}

impl Transitions {
    pub fn new(
        store: Store,
        index: Arc<dyn VectorIndex>,
        embedder: Arc<dyn Embedder>,
        collection_prefix: &str,
        optimize_after_writes: usize,
    ) -> Self {
        let collection = format!("{collection_prefix}_transitions");
        Self {
            upkeep: Upkeep::new(index.clone(), &collection, optimize_after_writes),
            store,
            index,
            embedder,
            collection,
            rows: Arc::new(quick_cache::sync::Cache::new(ROW_CACHE)),
        }
    }

    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    /// The embedding of one text.
    pub async fn embed_one(&self, text: &str) -> Result<Vec<f32>> {
        self.embedder
            .embed(vec![text.to_owned()])
            .await?
            .pop()
            .ok_or_else(|| EmbedError::Worker("the embedder returned no vector".into()).into())
    }

    /// Creates the collection and re-indexes what the record holds and the index lacks (a lost
    /// or new vector directory). Call once at start.
    pub async fn start(&self) -> Result<u64> {
        self.index
            .ensure_collection(
                &self.collection,
                self.embedder.dim(),
                &["namespace", "action", "source"],
            )
            .await?;
        let rows = self.store.count_transitions(None).await?;
        let indexed = self.index.count(&self.collection).await?;
        self.upkeep.opened_with(indexed);
        if indexed >= rows {
            return Ok(0);
        }
        let mut after = None;
        let mut healed = 0;
        loop {
            let page = self.store.transitions_after(after, HEAL_PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            let written = page.len();
            healed += written as u64;
            let points = page
                .into_iter()
                .map(|t| {
                    point(
                        t.id,
                        &t.namespace,
                        &t.transition.action,
                        &t.source,
                        t.embedding,
                    )
                })
                .collect();
            self.index.upsert(&self.collection, points).await?;
            self.upkeep.note_writes(written);
        }
        tracing::info!(healed, "transition index reconciled with the record");
        Ok(healed)
    }

    /// Stores the transitions not stored before; returns (stored, duplicates).
    pub async fn add(&self, ns: &str, items: &[Transition], source: &str) -> Result<(u64, u64)> {
        let mut stored = 0;
        let mut duplicates = 0;
        for chunk in items.chunks(BATCH) {
            let mut unique: BTreeMap<Uuid, &Transition> = BTreeMap::new();
            for t in chunk {
                if unique.insert(transition_id(ns, t), t).is_some() {
                    duplicates += 1;
                }
            }
            let ids: Vec<Uuid> = unique.keys().copied().collect();
            let known: HashSet<Uuid> = self
                .store
                .known_transitions(&ids)
                .await?
                .into_iter()
                .collect();
            unique.retain(|id, _| !known.contains(id));
            duplicates += known.len() as u64;
            if unique.is_empty() {
                continue;
            }
            let fresh: Vec<(Uuid, &Transition)> = unique.into_iter().collect();
            let vectors = self
                .embedder
                .embed(fresh.iter().map(|(_, t)| t.state.clone()).collect())
                .await?;
            let rows: Vec<StoredTransition> = fresh
                .iter()
                .zip(vectors)
                .map(|((id, t), v)| StoredTransition {
                    id: *id,
                    namespace: ns.to_owned(),
                    transition: (*t).clone(),
                    source: source.to_owned(),
                    embedding: v,
                })
                .collect();
            // Record first: the index is derived from it and healed from it on start.
            let inserted = self.store.insert_transitions(&rows).await?;
            stored += inserted;
            duplicates += rows.len() as u64 - inserted.min(rows.len() as u64);
            let points: Vec<Point> = rows
                .into_iter()
                .map(|t| point(t.id, ns, &t.transition.action, source, t.embedding))
                .collect();
            let written = points.len();
            self.index.upsert(&self.collection, points).await?;
            self.upkeep.note_writes(written);
        }
        Ok((stored, duplicates))
    }

    /// The `k` stored transitions whose state is nearest `state_vector`, most similar first;
    /// restricted to `action` and `source` when given.
    pub async fn nearest(
        &self,
        ns: &str,
        state_vector: Vec<f32>,
        k: usize,
        action: Option<&str>,
        source: Option<&str>,
    ) -> Result<Vec<Found>> {
        let mut filter = Filter::default().eq("namespace", ns);
        if let Some(a) = action {
            filter = filter.eq("action", a);
        }
        if let Some(s) = source {
            filter = filter.eq("source", s);
        }
        let hits = self
            .index
            .search(&self.collection, state_vector, k, filter)
            .await?;
        if hits.is_empty() {
            return Ok(Vec::new());
        }
        let mut rows: HashMap<Uuid, Arc<Transition>> = HashMap::with_capacity(hits.len());
        let mut missing = Vec::new();
        for h in &hits {
            match self.rows.get(&h.id) {
                Some(t) => _ = rows.insert(h.id, t),
                None => missing.push(h.id),
            }
        }
        if !missing.is_empty() {
            for (id, t) in self.store.transitions_by_ids(&missing).await? {
                let t = Arc::new(t);
                self.rows.insert(id, t.clone());
                rows.insert(id, t);
            }
        }
        // A hit the record lacks (an index point whose row was never written) is left out.
        Ok(hits
            .into_iter()
            .filter_map(|h| {
                let t = rows.get(&h.id)?;
                Some(Found {
                    id: h.id,
                    state: t.state.clone(),
                    action: t.action.clone(),
                    next_state: t.next_state.clone(),
                    done: t.done,
                    similarity: h.score,
                })
            })
            .collect())
    }
}

fn point(id: Uuid, ns: &str, action: &str, source: &str, vector: Vec<f32>) -> Point {
    Point {
        id,
        vector,
        payload: BTreeMap::from([
            ("namespace".to_owned(), ns.to_owned()),
            ("action".to_owned(), action.to_owned()),
            ("source".to_owned(), source.to_owned()),
        ]),
    }
}
