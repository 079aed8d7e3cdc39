//! Bullets by the hash of their content, so curation finds an exact restatement by lookup
//! whatever the graph search of a large playbook returns. Bullets kept before this migration
//! get their hash here.

use sea_orm::ConnectionTrait;
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

use crate::playbook::content_hash;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Bullets {
    Table,
    Id,
    Content,
    ContentHash,
}

/// Bullets hashed per statement.
const CHUNK: u64 = 1000;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Bullets::Table)
                .add_column(string_null(Bullets::ContentHash))
                .to_owned(),
        )
        .await?;
        let db = m.get_connection();
        loop {
            let select = Query::select()
                .columns([Bullets::Id, Bullets::Content])
                .from(Bullets::Table)
                .and_where(Expr::col(Bullets::ContentHash).is_null())
                .limit(CHUNK)
                .to_owned();
            let rows = db.query_all(&select).await?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                let id: String = row.try_get("", "id")?;
                let content: String = row.try_get("", "content")?;
                let update = Query::update()
                    .table(Bullets::Table)
                    .value(Bullets::ContentHash, content_hash(&content))
                    .and_where(Expr::col(Bullets::Id).eq(id))
                    .to_owned();
                db.execute(&update).await?;
            }
        }
        m.create_index(
            Index::create()
                .name("bullets_content_hash")
                .table(Bullets::Table)
                .col(Bullets::ContentHash)
                .if_not_exists()
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("bullets_content_hash")
                .table(Bullets::Table)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Bullets::Table)
                .drop_column(Bullets::ContentHash)
                .to_owned(),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectOptions, ConnectionTrait, Database, DbBackend, Statement};
    use sea_orm_migration::MigratorTrait;

    use crate::migration::Migrator;
    use crate::playbook::content_hash;

    #[tokio::test]
    async fn bullets_kept_before_get_their_hash() {
        let mut opts = ConnectOptions::new("sqlite::memory:");
        opts.max_connections(1)
            .min_connections(1)
            .sqlx_logging(false);
        let db = Database::connect(opts).await.unwrap();
        Migrator::up(&db, Some(7)).await.unwrap();
        let kept = [("b1", "keep distance"), ("b2", "the exit is on the right")];
        for (id, content) in kept {
            db.execute_unprepared(&format!(
                "INSERT INTO bullets (id, namespace, section, content, helpful, harmful, \
                 evidence, stage, sources, deleted, embedding, created_at, updated_at) VALUES \
                 ('{id}', 'ns', 'facts', '{content}', 0, 0, 1, 'shadow', '[]', false, x'', \
                 '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z')"
            ))
            .await
            .unwrap();
        }
        Migrator::up(&db, None).await.unwrap();
        let rows = db
            .query_all_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT id, content_hash FROM bullets ORDER BY id",
            ))
            .await
            .unwrap();
        assert_eq!(rows.len(), kept.len());
        for (row, (id, content)) in rows.iter().zip(kept) {
            assert_eq!(row.try_get::<String>("", "id").unwrap(), id);
            assert_eq!(
                row.try_get::<Option<String>>("", "content_hash").unwrap(),
                Some(content_hash(content)),
                "bullet {id}"
            );
        }
    }
}
