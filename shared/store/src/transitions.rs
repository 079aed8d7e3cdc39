//! Transitions the world model learned from, with the embedding of their state, so the vector
//! index can be rebuilt from the record.

use std::collections::HashMap;

use agent_learning_domain::Transition;
use chrono::Utc;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use uuid::Uuid;

use crate::entity::transition;
use crate::{Result, Store, StoreError, decode_embedding, encode_embedding};

/// A transition as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTransition {
    pub id: Uuid,
    pub namespace: String,
    pub transition: Transition,
    /// Where it came from: `expert`, `env`, a demo file.
    pub source: String,
    pub embedding: Vec<f32>,
}

fn from_model(m: transition::Model) -> Result<StoredTransition> {
    let id = Uuid::parse_str(&m.id)
        .map_err(|e| StoreError::Corrupt(format!("transition id {:?}: {e}", m.id)))?;
    Ok(StoredTransition {
        id,
        embedding: decode_embedding(&m.embedding)?,
        namespace: m.namespace,
        transition: Transition {
            state: m.state,
            action: m.action,
            next_state: m.next_state,
            done: m.done,
        },
        source: m.source,
    })
}

impl Store {
    /// Which of `ids` are stored.
    pub async fn known_transitions(&self, ids: &[Uuid]) -> Result<Vec<Uuid>> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let known: Vec<String> = transition::Entity::find()
            .filter(transition::Column::Id.is_in(ids))
            .select_only()
            .column(transition::Column::Id)
            .into_tuple()
            .all(self.connection())
            .await?;
        Ok(known
            .iter()
            .filter_map(|k| Uuid::parse_str(k).ok())
            .collect())
    }

    /// Stores the transitions whose id is new; returns how many were.
    pub async fn insert_transitions(&self, items: &[StoredTransition]) -> Result<u64> {
        if items.is_empty() {
            return Ok(0);
        }
        let now = Utc::now();
        let models: Vec<transition::ActiveModel> = items
            .iter()
            .map(|t| transition::ActiveModel {
                id: Set(t.id.to_string()),
                namespace: Set(t.namespace.clone()),
                state: Set(t.transition.state.clone()),
                action: Set(t.transition.action.clone()),
                next_state: Set(t.transition.next_state.clone()),
                done: Set(t.transition.done),
                source: Set(t.source.clone()),
                embedding: Set(encode_embedding(&t.embedding)),
                created_at: Set(now),
            })
            .collect();
        Ok(transition::Entity::insert_many(models)
            .on_conflict(
                OnConflict::column(transition::Column::Id)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(self.connection())
            .await?)
    }

    /// The transitions stored under `ids`, without their embeddings (not read from the record).
    pub async fn transitions_by_ids(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, Transition>> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let rows: Vec<(String, String, String, String, bool)> = transition::Entity::find()
            .filter(transition::Column::Id.is_in(ids))
            .select_only()
            .column(transition::Column::Id)
            .column(transition::Column::State)
            .column(transition::Column::Action)
            .column(transition::Column::NextState)
            .column(transition::Column::Done)
            .into_tuple()
            .all(self.connection())
            .await?;
        rows.into_iter()
            .map(|(id, state, action, next_state, done)| {
                let parsed = Uuid::parse_str(&id)
                    .map_err(|e| StoreError::Corrupt(format!("transition id {id:?}: {e}")))?;
                Ok((
                    parsed,
                    Transition {
                        state,
                        action,
                        next_state,
                        done,
                    },
                ))
            })
            .collect()
    }

    /// Up to `limit` transitions with ids after `after`, in id order: a full scan in pages.
    pub async fn transitions_after(
        &self,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<StoredTransition>> {
        let mut q = transition::Entity::find().order_by_asc(transition::Column::Id);
        if let Some(a) = after {
            q = q.filter(transition::Column::Id.gt(a.to_string()));
        }
        q.limit(limit)
            .all(self.connection())
            .await?
            .into_iter()
            .map(from_model)
            .collect()
    }

    /// Transitions stored in `ns`, or in every namespace when `None`.
    pub async fn count_transitions(&self, ns: Option<&str>) -> Result<u64> {
        let mut q = transition::Entity::find();
        if let Some(ns) = ns {
            q = q.filter(transition::Column::Namespace.eq(ns));
        }
        Ok(q.count(self.connection()).await?)
    }
}
