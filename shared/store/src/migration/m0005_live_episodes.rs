//! Live-loop episodes: one row per finished episode of a live run, with what it did (the
//! encoded `LiveEpisode`), so that a restarted coordinator neither runs an episode twice nor
//! loses one, and publishes and votes on each exactly once.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum LiveEpisodes {
    Table,
    Id,
    RunId,
    Namespace,
    Idx,
    Seed,
    Steps,
    Decisions,
    OutcomeKnown,
    Success,
    Truncated,
    Payload,
    Published,
    Voted,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(LiveEpisodes::Table)
                .if_not_exists()
                .col(string(LiveEpisodes::Id).primary_key())
                .col(string(LiveEpisodes::RunId))
                .col(string(LiveEpisodes::Namespace))
                .col(integer(LiveEpisodes::Idx))
                .col(big_integer(LiveEpisodes::Seed))
                .col(integer(LiveEpisodes::Steps))
                .col(integer(LiveEpisodes::Decisions))
                .col(boolean(LiveEpisodes::OutcomeKnown))
                .col(boolean(LiveEpisodes::Success))
                .col(boolean(LiveEpisodes::Truncated))
                .col(blob(LiveEpisodes::Payload))
                .col(boolean(LiveEpisodes::Published))
                .col(boolean(LiveEpisodes::Voted))
                .col(timestamp_with_time_zone(LiveEpisodes::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("live_episodes_run_idx")
                .table(LiveEpisodes::Table)
                .col(LiveEpisodes::RunId)
                .col(LiveEpisodes::Idx)
                .unique()
                .if_not_exists()
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(
            Table::drop()
                .table(LiveEpisodes::Table)
                .if_exists()
                .to_owned(),
        )
        .await
    }
}
