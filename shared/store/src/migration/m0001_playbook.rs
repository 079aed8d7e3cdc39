use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Namespaces {
    Table,
    Name,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Bullets {
    Table,
    Id,
    Namespace,
    Section,
    Content,
    Helpful,
    Harmful,
    Evidence,
    Stage,
    Sources,
    Deleted,
    Embedding,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum BulletEvents {
    Table,
    Seq,
    Namespace,
    BulletId,
    Kind,
    InsightId,
    FromStage,
    ToStage,
    Detail,
    At,
}

#[derive(DeriveIden)]
enum AppliedInsights {
    Table,
    Namespace,
    InsightId,
    BulletId,
    Kind,
    Similarity,
    AppliedAt,
}

#[derive(DeriveIden)]
enum FeedbackRequests {
    Table,
    Namespace,
    FeedbackId,
    AppliedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Namespaces::Table)
                .if_not_exists()
                .col(string(Namespaces::Name).primary_key())
                .col(timestamp_with_time_zone(Namespaces::CreatedAt))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(Bullets::Table)
                .if_not_exists()
                .col(string(Bullets::Id).primary_key())
                .col(string(Bullets::Namespace))
                .col(string(Bullets::Section))
                .col(text(Bullets::Content))
                .col(big_integer(Bullets::Helpful))
                .col(big_integer(Bullets::Harmful))
                .col(big_integer(Bullets::Evidence))
                .col(string(Bullets::Stage))
                .col(text(Bullets::Sources))
                .col(boolean(Bullets::Deleted))
                .col(blob(Bullets::Embedding))
                .col(timestamp_with_time_zone(Bullets::CreatedAt))
                .col(timestamp_with_time_zone(Bullets::UpdatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("bullets_ns_section")
                .table(Bullets::Table)
                .col(Bullets::Namespace)
                .col(Bullets::Section)
                .col(Bullets::Id)
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("bullets_ns_stage")
                .table(Bullets::Table)
                .col(Bullets::Namespace)
                .col(Bullets::Stage)
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(BulletEvents::Table)
                .if_not_exists()
                .col(big_pk_auto(BulletEvents::Seq))
                .col(string(BulletEvents::Namespace))
                .col(string(BulletEvents::BulletId))
                .col(string(BulletEvents::Kind))
                .col(string_null(BulletEvents::InsightId))
                .col(string_null(BulletEvents::FromStage))
                .col(string_null(BulletEvents::ToStage))
                .col(text(BulletEvents::Detail))
                .col(timestamp_with_time_zone(BulletEvents::At))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("bullet_events_bullet")
                .table(BulletEvents::Table)
                .col(BulletEvents::Namespace)
                .col(BulletEvents::BulletId)
                .col(BulletEvents::Seq)
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(AppliedInsights::Table)
                .if_not_exists()
                .col(string(AppliedInsights::Namespace))
                .col(string(AppliedInsights::InsightId))
                .col(string(AppliedInsights::BulletId))
                .col(string(AppliedInsights::Kind))
                .col(double(AppliedInsights::Similarity))
                .col(timestamp_with_time_zone(AppliedInsights::AppliedAt))
                .primary_key(
                    Index::create()
                        .col(AppliedInsights::Namespace)
                        .col(AppliedInsights::InsightId),
                )
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(FeedbackRequests::Table)
                .if_not_exists()
                .col(string(FeedbackRequests::Namespace))
                .col(string(FeedbackRequests::FeedbackId))
                .col(timestamp_with_time_zone(FeedbackRequests::AppliedAt))
                .primary_key(
                    Index::create()
                        .col(FeedbackRequests::Namespace)
                        .col(FeedbackRequests::FeedbackId),
                )
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            FeedbackRequests::Table.into_iden(),
            AppliedInsights::Table.into_iden(),
            BulletEvents::Table.into_iden(),
            Bullets::Table.into_iden(),
            Namespaces::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(t).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
