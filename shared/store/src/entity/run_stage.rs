use sea_orm::entity::prelude::*;

/// Progress of one stage of a run.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "run_stages")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub run_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub stage: String,
    pub done: i64,
    pub total: i64,
    /// Time spent in the stage, summed over resumptions.
    pub seconds: f64,
    pub finished: bool,
    /// Stage results as JSON (counts, accuracy, version).
    #[sea_orm(column_type = "Text")]
    pub detail: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
