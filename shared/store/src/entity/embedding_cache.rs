use sea_orm::entity::prelude::*;

/// A text's vector, by content hash, so the text is embedded once whatever asks for it again.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "embedding_cache")]
pub struct Model {
    /// SHA-256 (hex) of the embedding model's id, a NUL and the text: see
    /// [`crate::embedding_key`].
    #[sea_orm(primary_key, auto_increment = false)]
    pub key: String,
    pub model: String,
    /// Little-endian f32s.
    #[sea_orm(column_type = "Blob")]
    pub embedding: Vec<u8>,
    pub created_at: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
