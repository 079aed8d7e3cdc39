use sea_orm::entity::prelude::*;

/// A four-section reflection on one branch point.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "reflections")]
pub struct Model {
    /// Equal to the rollout group's id: one reflection per branch point.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub namespace: String,
    pub run_id: String,
    #[sea_orm(column_type = "Text")]
    pub situation: String,
    #[sea_orm(column_type = "Text")]
    pub evaluation: String,
    #[sea_orm(column_type = "Text")]
    pub alternatives: String,
    #[sea_orm(column_type = "Text")]
    pub conclusion: String,
    pub valid: bool,
    /// Why the reflection is not valid; empty when it is.
    #[sea_orm(column_type = "Text")]
    pub problem: String,
    /// JSON array of the rollout ids reflected on.
    #[sea_orm(column_type = "Text")]
    pub rollout_ids: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// Set once published to the reflections stream.
    pub published: bool,
    pub created_at: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
