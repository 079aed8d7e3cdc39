use sea_orm::entity::prelude::*;

/// A (state, action, next_state) transition the world model learned from.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "transitions")]
pub struct Model {
    /// UUIDv5 of namespace, state, action and next state: the same transition is stored once.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub namespace: String,
    #[sea_orm(column_type = "Text")]
    pub state: String,
    #[sea_orm(column_type = "Text")]
    pub action: String,
    #[sea_orm(column_type = "Text")]
    pub next_state: String,
    pub done: bool,
    pub source: String,
    /// Embedding of state and action (little-endian f32s), so the index can be rebuilt.
    #[sea_orm(column_type = "Blob")]
    pub embedding: Vec<u8>,
    pub created_at: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
