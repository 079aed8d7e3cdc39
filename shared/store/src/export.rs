//! The record as training data, for the two training sets of Early Experience (implicit world
//! modelling and self-reflection): read in a stable order, one namespace at a time.

use std::collections::{BTreeMap, BTreeSet};

use sea_orm::{ColumnTrait as _, EntityTrait as _, QueryFilter as _, QueryOrder as _};

use crate::entity::{reflection, rollout, transition};
use crate::{Result, Store, StoreError};

/// A real transition: what the environment did after an action.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObservedTransition {
    pub state: String,
    pub action: String,
    pub next_state: String,
}

/// A valid reflection on one branch point, with what every action tried there led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReflectedBranch {
    pub state: String,
    pub expert_action: String,
    /// `(action, next state)` for the expert's action and each alternative, sorted by action.
    pub outcomes: Vec<(String, String)>,
    pub situation: String,
    pub evaluation: String,
    pub alternatives: String,
    pub conclusion: String,
}

impl Store {
    /// Every distinct transition the environment produced in `ns`: the world model's (expert
    /// demos and real branches it was fitted with) and the rollouts of real branches. Imagined
    /// rollouts (source `world_model`) are predictions, not observations, and are left out.
    pub async fn observed_transitions(&self, ns: &str) -> Result<Vec<ObservedTransition>> {
        let db = self.connection();
        let mut out = BTreeSet::new();
        for t in transition::Entity::find()
            .filter(transition::Column::Namespace.eq(ns))
            .all(db)
            .await
            .map_err(StoreError::from)?
        {
            out.insert(ObservedTransition {
                state: t.state,
                action: t.action,
                next_state: t.next_state,
            });
        }
        for r in rollout::Entity::find()
            .filter(rollout::Column::Namespace.eq(ns))
            .filter(rollout::Column::Source.ne("world_model"))
            .all(db)
            .await
            .map_err(StoreError::from)?
        {
            out.insert(ObservedTransition {
                state: r.state,
                action: r.action,
                next_state: r.next_state,
            });
        }
        Ok(out.into_iter().collect())
    }

    /// Every valid reflection of `ns`, oldest first, with its branch point's outcomes.
    pub async fn reflected_branches(&self, ns: &str) -> Result<Vec<ReflectedBranch>> {
        let db = self.connection();
        let reflections = reflection::Entity::find()
            .filter(reflection::Column::Namespace.eq(ns))
            .filter(reflection::Column::Valid.eq(true))
            .order_by_asc(reflection::Column::CreatedAt)
            .order_by_asc(reflection::Column::Id)
            .all(db)
            .await
            .map_err(StoreError::from)?;
        let mut by_group: BTreeMap<String, Vec<rollout::Model>> = BTreeMap::new();
        for r in rollout::Entity::find()
            .filter(rollout::Column::Namespace.eq(ns))
            .all(db)
            .await
            .map_err(StoreError::from)?
        {
            by_group.entry(r.group_id.clone()).or_default().push(r);
        }
        let mut out = Vec::with_capacity(reflections.len());
        for r in reflections {
            // A reflection's id is its branch point's (rollout group's) id.
            let Some(group) = by_group.get(&r.id) else {
                continue;
            };
            let first = &group[0];
            let mut outcomes: Vec<(String, String)> = group
                .iter()
                .map(|g| (g.action.clone(), g.next_state.clone()))
                .collect();
            outcomes.sort();
            outcomes.dedup();
            out.push(ReflectedBranch {
                state: first.state.clone(),
                expert_action: first.expert_action.clone(),
                outcomes,
                situation: r.situation,
                evaluation: r.evaluation,
                alternatives: r.alternatives,
                conclusion: r.conclusion,
            });
        }
        Ok(out)
    }
}
