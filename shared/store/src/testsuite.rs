//! A fresh PostgreSQL database per test (feature `testsuite`, off by default), for the tests of
//! every crate that runs against PostgreSQL.

use sea_orm::{ConnectionTrait as _, Database, DatabaseConnection};

/// A database created for one test on the server at `AGENT_LEARNING_TEST_PG_URL` (default
/// `postgres://postgres@127.0.0.1:5432/test`).
pub struct TestDatabase {
    admin: DatabaseConnection,
    name: String,
    /// Connects to the new database.
    pub url: String,
}

impl TestDatabase {
    /// Creates `agent_learning_<prefix>_<uuid>`; panics, naming the server, when there is none.
    pub async fn create(prefix: &str) -> Self {
        let admin_url = std::env::var("AGENT_LEARNING_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let admin = Database::connect(admin_url.as_str())
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin_url} is required: {e}"));
        let name = format!("agent_learning_{prefix}_{}", uuid::Uuid::new_v4().simple());
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let base = admin_url
            .rsplit_once('/')
            .map_or(admin_url.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        Self { admin, name, url }
    }

    /// Drops the database, closing whatever connections are left.
    pub async fn drop_database(self) {
        self.admin
            .execute_unprepared(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .await
            .unwrap_or_else(|e| panic!("DROP DATABASE {}: {e}", self.name));
    }
}
