//! Stage pins: a bullet whose stage was set by hand keeps it; votes no longer move it (but
//! harmful evidence still quarantines it, see `restage`).

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Bullets {
    Table,
    StagePinned,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Bullets::Table)
                .add_column(boolean(Bullets::StagePinned).default(false))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Bullets::Table)
                .drop_column(Bullets::StagePinned)
                .to_owned(),
        )
        .await
    }
}
