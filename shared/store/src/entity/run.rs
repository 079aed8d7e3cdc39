use sea_orm::entity::prelude::*;

/// A training run, with everything needed to resume it after a crash.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "runs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub namespace: String,
    pub kind: String,
    /// pending, running, succeeded, failed, cancelled.
    pub state: String,
    pub current_stage: String,
    #[sea_orm(column_type = "Text")]
    pub error: String,
    pub env: String,
    /// The run's training configuration, as JSON.
    #[sea_orm(column_type = "Text")]
    pub config: String,
    /// The demonstrations, as validated JSONL.
    #[sea_orm(column_type = "Text")]
    pub demos: String,
    /// The run summary as JSON once finished; empty before.
    #[sea_orm(column_type = "Text")]
    pub summary: String,
    pub created_at: ChronoDateTimeUtc,
    pub updated_at: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
