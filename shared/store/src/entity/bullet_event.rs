use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "bullet_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub seq: i64,
    pub namespace: String,
    pub bullet_id: String,
    pub kind: String,
    pub insight_id: Option<String>,
    pub from_stage: Option<String>,
    pub to_stage: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub detail: String,
    pub at: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
