//! Rollouts: every action tried at a branch point, stored once by id.

use agent_learning_domain::RolloutGroup;
use chrono::Utc;
use sea_orm::sea_query::OnConflict;
use sea_orm::{EntityTrait, Set};

use crate::entity::rollout;
use crate::{Result, Store};

impl Store {
    /// Stores the group's rollouts; those stored before (same id) are left as they are.
    pub async fn insert_rollouts(&self, g: &RolloutGroup) -> Result<()> {
        if g.rollouts.is_empty() {
            return Ok(());
        }
        let now = Utc::now();
        let models: Vec<rollout::ActiveModel> = g
            .rollouts
            .iter()
            .map(|ro| rollout::ActiveModel {
                id: Set(ro.id.clone()),
                run_id: Set(ro.run_id.clone()),
                namespace: Set(g.namespace.clone()),
                group_id: Set(g.id.clone()),
                demo_id: Set(ro.demo_id.clone()),
                step_index: Set(ro.step_index as i32),
                state: Set(ro.state.clone()),
                expert_action: Set(ro.expert_action.clone()),
                action: Set(ro.action.clone()),
                next_state: Set(ro.next_state.clone()),
                done: Set(ro.done),
                source: Set(ro.source.as_str().to_owned()),
                published: Set(false),
                created_at: Set(now),
            })
            .collect();
        rollout::Entity::insert_many(models)
            .on_conflict(
                OnConflict::column(rollout::Column::Id)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(self.connection())
            .await?;
        Ok(())
    }
}
