use sea_orm::entity::prelude::*;

/// One Decide answer, kept so feedback can reach the bullets it used.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "decisions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub namespace: String,
    pub policy_version: i64,
    #[sea_orm(column_type = "Text")]
    pub state: String,
    #[sea_orm(column_type = "Text")]
    pub action: String,
    #[sea_orm(column_type = "Text")]
    pub reasoning: String,
    /// JSON arrays of ids.
    #[sea_orm(column_type = "Text")]
    pub bullet_ids: String,
    #[sea_orm(column_type = "Text")]
    pub exemplar_ids: String,
    pub fallback: bool,
    pub created_at: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
