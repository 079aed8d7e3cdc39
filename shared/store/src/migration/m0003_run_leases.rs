//! Run leases: which coordinator drives a run, until when. A run is driven by exactly one
//! coordinator at a time; a lease that is not renewed expires and any coordinator takes it.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum RunLeases {
    Table,
    RunId,
    Holder,
    ExpiresAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(RunLeases::Table)
                .if_not_exists()
                .col(string(RunLeases::RunId).primary_key())
                .col(string(RunLeases::Holder))
                .col(timestamp_with_time_zone(RunLeases::ExpiresAt))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(RunLeases::Table).if_exists().to_owned())
            .await
    }
}
