use sea_orm::entity::prelude::*;

/// One branch explored from an expert state: the expert's own step or an alternative.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "rollouts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub run_id: String,
    pub namespace: String,
    /// The branch point (run, demo, step) the rollout belongs to; one reflection per group.
    pub group_id: String,
    pub demo_id: String,
    pub step_index: i32,
    #[sea_orm(column_type = "Text")]
    pub state: String,
    #[sea_orm(column_type = "Text")]
    pub expert_action: String,
    #[sea_orm(column_type = "Text")]
    pub action: String,
    #[sea_orm(column_type = "Text")]
    pub next_state: String,
    pub done: bool,
    /// expert, env or world_model.
    pub source: String,
    /// Set once the group was published to the rollouts stream.
    pub published: bool,
    pub created_at: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
