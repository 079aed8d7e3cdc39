use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "bullets")]
pub struct Model {
    /// UUID, as text so SQLite and PostgreSQL agree.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub namespace: String,
    pub section: String,
    #[sea_orm(column_type = "Text")]
    pub content: String,
    pub helpful: i64,
    pub harmful: i64,
    pub evidence: i64,
    pub stage: String,
    /// JSON array of provenance strings, most recent last.
    #[sea_orm(column_type = "Text")]
    pub sources: String,
    pub deleted: bool,
    /// Set by a manual stage change: votes no longer move the bullet, except that harmful
    /// evidence still quarantines it.
    pub stage_pinned: bool,
    /// Little-endian f32s of the content's embedding, so the vector index can be rebuilt
    /// without re-embedding.
    #[sea_orm(column_type = "Blob")]
    pub embedding: Vec<u8>,
    /// SHA-256 of the content, in hex ([`crate::playbook::content_hash`]): exact restatements
    /// are found by lookup. Set on every write of the content.
    pub content_hash: Option<String>,
    pub created_at: ChronoDateTimeUtc,
    pub updated_at: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
