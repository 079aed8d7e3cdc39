use sea_orm::entity::prelude::*;

/// The idempotency record of Curate: an insight id is applied at most once per namespace.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "applied_insights")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub namespace: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub insight_id: String,
    pub bullet_id: String,
    pub kind: String,
    pub similarity: f64,
    pub applied_at: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
