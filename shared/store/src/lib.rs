//! The relational record of agent-learning, through sea-orm: SQLite (WAL) embedded by default,
//! PostgreSQL in production. The database is the source of truth; the vector index is derived
//! from it and rebuilt from it.

mod decisions;
mod embeddings;
pub mod entity;
mod export;
mod live;
mod migration;
mod outbox;
mod pending;
mod playbook;
mod policies;
mod reflections;
mod rollouts;
mod runs;
#[cfg(feature = "testsuite")]
pub mod testsuite;
mod transitions;

use std::path::Path;
use std::time::Duration;

use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbBackend, DbErr};
use sea_orm_migration::MigratorTrait;

pub use embeddings::embedding_key;
pub use export::{ObservedTransition, ReflectedBranch};
pub use live::{LiveEpisodeRecord, NewLiveEpisode};
pub use outbox::Outbox;
pub use pending::PendingRun;
pub use playbook::{
    AppliedInsight, BulletPage, CurationChange, HealthCounts, IndexedBullet, ListFilter, NewBullet,
    decode_embedding, encode_embedding,
};
pub use runs::{NewRun, StageUpdate};
pub use transitions::StoredTransition;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(DbErr),
    /// A row with the same key exists (a unique constraint refused the write).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Rejected(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("database url: {0}")]
    Url(String),
}

/// Whether a database error is the connection's (refused, dropped, pool exhausted) rather than
/// the statement's: the kind an outage causes, worth trying again. sqlx reports a lost
/// connection inside query errors, so their text decides.
pub fn is_transient_db(e: &DbErr) -> bool {
    match e {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => true,
        DbErr::Query(_) | DbErr::Exec(_) => {
            let text = e.to_string().to_ascii_lowercase();
            [
                "connection",
                "pool timed out",
                "broken pipe",
                "reset by peer",
                "io error",
                "i/o",
                "timed out",
            ]
            .iter()
            .any(|k| text.contains(k))
        }
        _ => false,
    }
}

impl StoreError {
    /// An outage (see [`is_transient_db`]), not a refusal of the request.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Db(e) if is_transient_db(e))
    }

    /// An outage, told to another caller than the one it happened to (a database error
    /// cannot be copied): transient, with the same text.
    pub fn outage(text: String) -> Self {
        StoreError::Db(DbErr::Conn(sea_orm::RuntimeErr::Internal(text)))
    }
}

impl From<DbErr> for StoreError {
    fn from(e: DbErr) -> Self {
        match e.sql_err() {
            Some(sea_orm::SqlErr::UniqueConstraintViolation(m)) => StoreError::Conflict(m),
            _ => StoreError::Db(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The first key of the namespace advisory locks, so they cannot meet another user's locks.
const NAMESPACE_LOCK_CLASS: i32 = 0x0a1e_0001;

/// A namespace held by [`Store::lock_namespace`]; released by [`NamespaceLock::release`] or
/// when dropped (the transaction that holds it rolls back).
#[must_use = "the namespace is held until the guard is released"]
pub struct NamespaceLock {
    txn: Option<sea_orm::DatabaseTransaction>,
}

impl NamespaceLock {
    pub async fn release(self) -> Result<()> {
        if let Some(txn) = self.txn {
            txn.commit().await?;
        }
        Ok(())
    }
}

fn is_contention(e: &DbErr) -> bool {
    let m = e.to_string().to_lowercase();
    m.contains("unique")
        || m.contains("duplicate")
        || m.contains("locked")
        || m.contains("already exists")
}

/// The relational store. Cheap to clone: a pool handle.
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
}

impl Store {
    /// Connects to `url` (`sqlite://...` or `postgres://...`) and applies pending migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let backend = if url.starts_with("sqlite:") {
            DbBackend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            DbBackend::Postgres
        } else {
            return Err(StoreError::Url(format!(
                "expected a sqlite:// or postgres:// URL, got {:?}",
                url.split(':').next().unwrap_or_default()
            )));
        };
        let mut opts = ConnectOptions::new(url.to_owned());
        opts.max_connections(max_connections)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .sqlx_logging(false);
        if backend == DbBackend::Sqlite {
            opts.map_sqlx_sqlite_opts(|o| {
                // WAL: readers do not block the writer. NORMAL sync is durable across a process
                // kill (the WAL is in the OS cache); only a power loss may drop the last commits.
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .create_if_missing(true)
                    .foreign_keys(true)
            });
        }
        let db = Database::connect(opts).await?;
        // Processes starting together on one database race to migrate it: the losers see the
        // winner's migration record; the schema is then up to date.
        let mut attempt = 0;
        loop {
            match migration::Migrator::up(&db, None).await {
                Ok(()) => break,
                Err(e) if attempt < 5 && is_contention(&e) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Self { db })
    }

    /// The store the configuration names: `database.url`, else the SQLite file in `data_dir`.
    pub async fn open(settings: &agent_learning_config::Settings) -> Result<Self> {
        use secrecy::ExposeSecret as _;
        std::fs::create_dir_all(&settings.data_dir).map_err(|e| {
            StoreError::Url(format!("data_dir {}: {e}", settings.data_dir.display()))
        })?;
        match &settings.database.url {
            Some(url) if !url.expose_secret().trim().is_empty() => {
                Self::connect(url.expose_secret(), settings.database.max_connections).await
            }
            _ => {
                Self::open_sqlite(&settings.sqlite_path(), settings.database.max_connections).await
            }
        }
    }

    /// The embedded default: a SQLite file.
    pub async fn open_sqlite(path: &Path, max_connections: u32) -> Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::Url(format!("cannot create {}: {e}", parent.display())))?;
        }
        Self::connect(&format!("sqlite://{}", path.display()), max_connections).await
    }

    /// A transaction that holds the write lock from its start. SQLite's default (deferred)
    /// transaction reads first and upgrades to a writer on its first write, which fails at once
    /// with SQLITE_BUSY when another connection committed in between; taking the lock first
    /// makes it wait its turn (`busy_timeout`) instead. On PostgreSQL it is a plain transaction.
    pub async fn begin_write(&self) -> Result<sea_orm::DatabaseTransaction> {
        use sea_orm::{ConnectionTrait as _, TransactionTrait as _};
        let txn = self.db.begin().await?;
        if self.backend() == DbBackend::Sqlite {
            // A write statement that changes nothing: the transaction becomes the writer.
            txn.execute_unprepared("UPDATE namespaces SET name = name WHERE 1 = 0")
                .await?;
        }
        Ok(txn)
    }

    pub async fn ping(&self) -> Result<()> {
        self.db.ping().await?;
        Ok(())
    }

    /// Serializes the writers of one namespace's playbook across processes: on PostgreSQL a
    /// transaction holding the namespace's advisory lock (`pg_advisory_xact_lock`) until the
    /// guard is released or dropped, so a curator replica searches the index only after the
    /// previous one wrote to it. SQLite is the embedded, one-process mode: its writers are
    /// serialized in process and the guard holds nothing.
    pub async fn lock_namespace(&self, namespace: &str) -> Result<NamespaceLock> {
        use sea_orm::{ConnectionTrait as _, Statement, TransactionTrait as _};
        if self.backend() != DbBackend::Postgres {
            return Ok(NamespaceLock { txn: None });
        }
        let txn = self.db.begin().await?;
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1, hashtext($2))",
            [NAMESPACE_LOCK_CLASS.into(), namespace.into()],
        ))
        .await?;
        Ok(NamespaceLock { txn: Some(txn) })
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    pub async fn close(self) -> Result<()> {
        self.db.close().await?;
        Ok(())
    }

    /// Drops every table and re-creates the schema. For tests against a shared server.
    pub async fn reset_for_tests(&self) -> Result<()> {
        migration::Migrator::fresh(&self.db).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::ConnectionTrait as _;

    #[tokio::test]
    async fn rejects_unknown_urls() {
        let err = Store::connect("mysql://x", 1).await.unwrap_err();
        assert!(
            err.to_string().contains("sqlite:// or postgres://"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_write_transaction_holds_the_lock_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("x.db"), 2)
            .await
            .unwrap();
        let first = store.begin_write().await.unwrap();
        // A second writer waits for the first instead of failing later on its upgrade.
        let second = {
            let store = store.clone();
            tokio::spawn(async move { store.begin_write().await.map(|_| ()) })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!second.is_finished(), "the second writer must wait");
        first.commit().await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), second)
            .await
            .expect("the second writer proceeds once the first commits")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn sqlite_runs_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(&dir.path().join("x.db"), 2)
            .await
            .unwrap();
        store
            .connection()
            .execute_unprepared("SELECT 1")
            .await
            .unwrap();
        let row = store
            .db
            .query_one_raw(sea_orm::Statement::from_string(
                DbBackend::Sqlite,
                "PRAGMA journal_mode",
            ))
            .await
            .unwrap()
            .unwrap();
        let mode: String = row.try_get_by_index(0).unwrap();
        assert_eq!(mode, "wal");
    }
}
