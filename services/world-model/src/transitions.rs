//! Transitions in the record and in the vector index: stored once (UUIDv5 of their content),
//! searched by the embedding of their state, filtered by action and source.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use agent_learning_embed::Embedder;
use agent_learning_store::entity::transition;
use agent_learning_store::{Store, decode_embedding, encode_embedding};
use agent_learning_vector::{Filter, Point, VectorIndex};
use chrono::Utc;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use uuid::Uuid;

use agent_learning_runtime::ServiceError;

const ID_NS: Uuid = Uuid::from_u128(0x3c1e_9b7a_52d4_4f0e_8a6b_0d9c_2e7f_41a3);
/// Transitions embedded per index write.
const BATCH: usize = 256;

/// One transition with where it came from (`expert`, `env`, a demo file).
#[derive(Debug, Clone, PartialEq)]
pub struct NewTransition {
    pub state: String,
    pub action: String,
    pub next_state: String,
    pub done: bool,
}

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

pub fn transition_id(ns: &str, t: &NewTransition) -> Uuid {
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
}

impl Transitions {
    pub fn new(
        store: Store,
        index: Arc<dyn VectorIndex>,
        embedder: Arc<dyn Embedder>,
        collection_prefix: &str,
    ) -> Self {
        Self {
            store,
            index,
            embedder,
            collection: format!("{collection_prefix}_transitions"),
        }
    }

    /// The transitions of the configured backends, with the index reconciled.
    pub async fn open(
        settings: &agent_learning_config::Settings,
        backends: &agent_learning_runtime::Backends,
    ) -> Result<Self, ServiceError> {
        let t = Self::new(
            backends.store.clone(),
            backends.index.clone(),
            backends.embedder.clone(),
            &settings.vector.collection_prefix,
        );
        t.start().await?;
        Ok(t)
    }

    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }

    /// Creates the collection and re-indexes what the record holds and the index lacks (a lost
    /// or new vector directory).
    pub async fn start(&self) -> Result<u64, ServiceError> {
        self.index
            .ensure_collection(
                &self.collection,
                self.embedder.dim(),
                &["namespace", "action", "source"],
            )
            .await?;
        let rows = transition::Entity::find()
            .count(self.store.connection())
            .await?;
        let indexed = self.index.count(&self.collection).await?;
        if indexed >= rows {
            return Ok(0);
        }
        let mut after: Option<String> = None;
        let mut healed = 0;
        loop {
            let mut q = transition::Entity::find().order_by_asc(transition::Column::Id);
            if let Some(a) = &after {
                q = q.filter(transition::Column::Id.gt(a.clone()));
            }
            let page = q.limit(1000).all(self.store.connection()).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            let points = page
                .into_iter()
                .map(|m| {
                    Ok(point(
                        parse_id(&m.id)?,
                        &m.namespace,
                        &m.action,
                        &m.source,
                        decode_embedding(&m.embedding)?,
                    ))
                })
                .collect::<Result<Vec<_>, ServiceError>>()?;
            healed += points.len() as u64;
            self.index.upsert(&self.collection, points).await?;
        }
        tracing::info!(healed, "transition index reconciled with the record");
        Ok(healed)
    }

    /// Stores the transitions not stored before; returns (stored, duplicates).
    pub async fn add(
        &self,
        ns: &str,
        items: &[NewTransition],
        source: &str,
    ) -> Result<(u64, u64), ServiceError> {
        let mut stored = 0;
        let mut duplicates = 0;
        for chunk in items.chunks(BATCH) {
            let mut unique: BTreeMap<Uuid, &NewTransition> = BTreeMap::new();
            for t in chunk {
                if unique.insert(transition_id(ns, t), t).is_some() {
                    duplicates += 1;
                }
            }
            let ids: Vec<String> = unique.keys().map(Uuid::to_string).collect();
            let known: Vec<String> = transition::Entity::find()
                .filter(transition::Column::Id.is_in(ids))
                .select_only()
                .column(transition::Column::Id)
                .into_tuple()
                .all(self.store.connection())
                .await?;
            for k in &known {
                if let Ok(id) = Uuid::parse_str(k)
                    && unique.remove(&id).is_some()
                {
                    duplicates += 1;
                }
            }
            if unique.is_empty() {
                continue;
            }
            let fresh: Vec<(Uuid, &NewTransition)> = unique.into_iter().collect();
            let vectors = self
                .embedder
                .embed(fresh.iter().map(|(_, t)| t.state.clone()).collect())
                .await?;
            let now = Utc::now();
            let models: Vec<transition::ActiveModel> = fresh
                .iter()
                .zip(&vectors)
                .map(|((id, t), v)| transition::ActiveModel {
                    id: Set(id.to_string()),
                    namespace: Set(ns.to_owned()),
                    state: Set(t.state.clone()),
                    action: Set(t.action.clone()),
                    next_state: Set(t.next_state.clone()),
                    done: Set(t.done),
                    source: Set(source.to_owned()),
                    embedding: Set(encode_embedding(v)),
                    created_at: Set(now),
                })
                .collect();
            // Record first: the index is derived from it and healed from it on start.
            let inserted = transition::Entity::insert_many(models)
                .on_conflict(
                    OnConflict::column(transition::Column::Id)
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(self.store.connection())
                .await?;
            stored += inserted;
            duplicates += fresh.len() as u64 - inserted.min(fresh.len() as u64);
            let points = fresh
                .iter()
                .zip(vectors)
                .map(|((id, t), v)| point(*id, ns, &t.action, source, v))
                .collect();
            self.index.upsert(&self.collection, points).await?;
        }
        Ok((stored, duplicates))
    }

    /// The `k` stored transitions whose state is nearest `state`, most similar first;
    /// restricted to `action` and `source` when given.
    pub async fn nearest(
        &self,
        ns: &str,
        state_vector: Vec<f32>,
        k: usize,
        action: Option<&str>,
        source: Option<&str>,
    ) -> Result<Vec<Found>, ServiceError> {
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
        let ids: Vec<String> = hits.iter().map(|h| h.id.to_string()).collect();
        let rows: HashMap<String, transition::Model> = transition::Entity::find()
            .filter(transition::Column::Id.is_in(ids))
            .all(self.store.connection())
            .await?
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect();
        Ok(hits
            .into_iter()
            .filter_map(|h| {
                let m = rows.get(&h.id.to_string())?;
                Some(Found {
                    id: h.id,
                    state: m.state.clone(),
                    action: m.action.clone(),
                    next_state: m.next_state.clone(),
                    done: m.done,
                    similarity: h.score,
                })
            })
            .collect())
    }

    pub async fn count(&self, ns: &str) -> Result<u64, ServiceError> {
        Ok(transition::Entity::find()
            .filter(transition::Column::Namespace.eq(ns))
            .count(self.store.connection())
            .await?)
    }
}

fn parse_id(s: &str) -> Result<Uuid, ServiceError> {
    Uuid::parse_str(s).map_err(|e| ServiceError::Internal(format!("transition id {s:?}: {e}")))
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
