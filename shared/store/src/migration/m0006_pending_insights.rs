//! Insights waiting for their batch: a live run that curates every `curate_every` reflections
//! keeps each valid reflection's insight here until the batch is full (or the run ends), so a
//! curator restarted between two reflections loses none of them.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum PendingInsights {
    Table,
    Id,
    RunId,
    Namespace,
    Section,
    Content,
    Source,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(PendingInsights::Table)
                .if_not_exists()
                .col(string(PendingInsights::Id).primary_key())
                .col(string(PendingInsights::RunId))
                .col(string(PendingInsights::Namespace))
                .col(string(PendingInsights::Section))
                .col(text(PendingInsights::Content))
                .col(text(PendingInsights::Source))
                .col(timestamp_with_time_zone(PendingInsights::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("pending_insights_run")
                .table(PendingInsights::Table)
                .col(PendingInsights::RunId)
                .if_not_exists()
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(
            Table::drop()
                .table(PendingInsights::Table)
                .if_exists()
                .to_owned(),
        )
        .await
    }
}
