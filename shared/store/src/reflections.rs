//! Reflections, one per branch point, stored once.

use agent_learning_domain::{Reflection, TokenUsage};
use chrono::Utc;
use sea_orm::sea_query::OnConflict;
use sea_orm::{EntityTrait, Set};

use crate::entity::reflection;
use crate::{Result, Store, StoreError};

fn from_model(m: reflection::Model) -> Result<Reflection> {
    let rollout_ids = serde_json::from_str(&m.rollout_ids)
        .map_err(|e| StoreError::Corrupt(format!("reflection {} rollout_ids: {e}", m.id)))?;
    Ok(Reflection {
        id: m.id,
        namespace: m.namespace,
        run_id: m.run_id,
        situation: m.situation,
        evaluation: m.evaluation,
        alternatives: m.alternatives,
        conclusion: m.conclusion,
        valid: m.valid,
        problem: m.problem,
        rollout_ids,
        usage: TokenUsage {
            prompt_tokens: m.prompt_tokens.max(0) as u64,
            completion_tokens: m.completion_tokens.max(0) as u64,
        },
    })
}

impl Store {
    pub async fn reflection(&self, id: &str) -> Result<Option<Reflection>> {
        reflection::Entity::find_by_id(id.to_owned())
            .one(self.connection())
            .await?
            .map(from_model)
            .transpose()
    }

    /// Stores `r` unless a reflection with its id exists, and returns the stored one: of two
    /// replicas racing on the same branch point, the first insert wins.
    pub async fn insert_reflection(&self, r: &Reflection) -> Result<Reflection> {
        let model = reflection::ActiveModel {
            id: Set(r.id.clone()),
            namespace: Set(r.namespace.clone()),
            run_id: Set(r.run_id.clone()),
            situation: Set(r.situation.clone()),
            evaluation: Set(r.evaluation.clone()),
            alternatives: Set(r.alternatives.clone()),
            conclusion: Set(r.conclusion.clone()),
            valid: Set(r.valid),
            problem: Set(r.problem.clone()),
            rollout_ids: Set(serde_json::to_string(&r.rollout_ids)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?),
            prompt_tokens: Set(r.usage.prompt_tokens as i64),
            completion_tokens: Set(r.usage.completion_tokens as i64),
            published: Set(false),
            created_at: Set(Utc::now()),
        };
        reflection::Entity::insert(model)
            .on_conflict(
                OnConflict::column(reflection::Column::Id)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(self.connection())
            .await?;
        self.reflection(&r.id)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                what: "reflection",
                id: r.id.clone(),
            })
    }
}
