//! Decisions the policy made, kept so that feedback can reach the bullets each one used.

use agent_learning_domain::DecisionRecord;
use sea_orm::{ActiveModelTrait, EntityTrait, Set};

use crate::entity::decision;
use crate::{Result, Store, StoreError};

fn json_ids(field: &str, id: &str, s: &str) -> Result<Vec<String>> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("decision {id} {field}: {e}")))
}

fn model(d: &DecisionRecord) -> Result<decision::ActiveModel> {
    let ids =
        |v: &[String]| serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()));
    Ok(decision::ActiveModel {
        id: Set(d.id.clone()),
        namespace: Set(d.namespace.clone()),
        policy_version: Set(d.policy_version),
        state: Set(d.state.clone()),
        action: Set(d.action.clone()),
        reasoning: Set(d.reasoning.clone()),
        bullet_ids: Set(ids(&d.bullet_ids)?),
        exemplar_ids: Set(ids(&d.exemplar_ids)?),
        fallback: Set(d.fallback),
        created_at: Set(d.created_at),
    })
}

impl Store {
    pub async fn insert_decision(&self, d: &DecisionRecord) -> Result<()> {
        model(d)?.insert(self.connection()).await?;
        Ok(())
    }

    /// Several decisions in one statement (one transaction): all or none.
    pub async fn insert_decisions(&self, ds: &[DecisionRecord]) -> Result<()> {
        if ds.is_empty() {
            return Ok(());
        }
        let models = ds.iter().map(model).collect::<Result<Vec<_>>>()?;
        decision::Entity::insert_many(models)
            .exec_without_returning(self.connection())
            .await?;
        Ok(())
    }

    pub async fn decision(&self, id: &str) -> Result<Option<DecisionRecord>> {
        let Some(m) = decision::Entity::find_by_id(id.to_owned())
            .one(self.connection())
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(DecisionRecord {
            bullet_ids: json_ids("bullet_ids", &m.id, &m.bullet_ids)?,
            exemplar_ids: json_ids("exemplar_ids", &m.id, &m.exemplar_ids)?,
            id: m.id,
            namespace: m.namespace,
            policy_version: m.policy_version,
            state: m.state,
            action: m.action,
            reasoning: m.reasoning,
            fallback: m.fallback,
            created_at: m.created_at,
        }))
    }
}
