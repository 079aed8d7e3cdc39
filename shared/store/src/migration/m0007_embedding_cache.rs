//! Vectors of embedded texts by content hash: a text is embedded once, whichever stage,
//! process or restart asks for it again.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum EmbeddingCache {
    Table,
    Key,
    Model,
    Embedding,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(EmbeddingCache::Table)
                .if_not_exists()
                .col(string(EmbeddingCache::Key).primary_key())
                .col(string(EmbeddingCache::Model))
                .col(blob(EmbeddingCache::Embedding))
                .col(timestamp_with_time_zone(EmbeddingCache::CreatedAt))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(
            Table::drop()
                .table(EmbeddingCache::Table)
                .if_exists()
                .to_owned(),
        )
        .await
    }
}
