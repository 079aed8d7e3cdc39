//! Compiled policy versions, numbered per namespace.

use agent_learning_domain::{PolicyVersion, Stage};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set};

use crate::entity::policy;
use crate::{Result, Store, StoreError};

fn from_model(m: policy::Model) -> Result<PolicyVersion> {
    let min_stage = Stage::parse(&m.min_stage)
        .filter(|s| *s != Stage::Quarantined)
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "policy {} v{}: min_stage {:?}",
                m.namespace, m.version, m.min_stage
            ))
        })?;
    Ok(PolicyVersion {
        namespace: m.namespace,
        version: m.version,
        instructions_template: m.instructions_template,
        exemplars_k: m.exemplars_k.max(0) as u32,
        min_stage,
        token_budget: m.token_budget.max(0) as u32,
        created_at: m.created_at,
    })
}

impl Store {
    pub async fn latest_policy(&self, ns: &str) -> Result<Option<PolicyVersion>> {
        policy::Entity::find()
            .filter(policy::Column::Namespace.eq(ns))
            .order_by_desc(policy::Column::Version)
            .one(self.connection())
            .await?
            .map(from_model)
            .transpose()
    }

    pub async fn policy(&self, ns: &str, version: i64) -> Result<Option<PolicyVersion>> {
        policy::Entity::find_by_id((ns.to_owned(), version))
            .one(self.connection())
            .await?
            .map(from_model)
            .transpose()
    }

    /// Stores `p` as given; [`StoreError::Conflict`] when its version exists already.
    pub async fn insert_policy(&self, p: &PolicyVersion) -> Result<PolicyVersion> {
        let m = policy::ActiveModel {
            namespace: Set(p.namespace.clone()),
            version: Set(p.version),
            instructions_template: Set(p.instructions_template.clone()),
            exemplars_k: Set(p.exemplars_k as i32),
            min_stage: Set(p.min_stage.as_str().to_owned()),
            token_budget: Set(p.token_budget as i32),
            created_at: Set(p.created_at),
        };
        from_model(m.insert(self.connection()).await?)
    }
}
