use sea_orm::entity::prelude::*;

/// One entry of an embedded queue stream, in publication order.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "queue_entries")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub seq: i64,
    pub stream: String,
    /// The publisher's idempotency key, handed to consumers with the payload.
    pub key: String,
    #[sea_orm(column_type = "Blob")]
    pub payload: Vec<u8>,
    pub created_at: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
