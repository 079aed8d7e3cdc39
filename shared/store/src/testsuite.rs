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
    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub async fn drop_database(self) {
        self.admin
            .execute_unprepared(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .await
            .unwrap_or_else(|e| panic!("DROP DATABASE {}: {e}", self.name));
    }
}

/// What a training run left in the record, counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordCounts {
    pub rollouts: u64,
    pub reflections: u64,
    pub valid_reflections: u64,
    pub applied_insights: u64,
    pub bullets: u64,
}

/// Counts the record and asserts that a run of `groups` branch points with `alternatives`
/// each did every piece of work exactly once, whatever happened on the way: every rollout
/// stored once and reflected on by exactly one reflection, each valid reflection curated
/// exactly once, and at least one bullet, at most one per valid reflection.
pub async fn assert_each_once(
    store: &crate::Store,
    groups: u64,
    alternatives: u64,
) -> RecordCounts {
    use crate::entity::{applied_insight, bullet, reflection, rollout};
    use sea_orm::{EntityTrait as _, PaginatorTrait as _};
    let db = store.connection();
    let rollouts = rollout::Entity::find().all(db).await.unwrap();
    assert_eq!(
        rollouts.len() as u64,
        groups * (1 + alternatives),
        "rollouts"
    );
    let reflections = reflection::Entity::find().all(db).await.unwrap();
    assert_eq!(
        reflections.len() as u64,
        groups,
        "one reflection per branch point"
    );
    let mut reflected: Vec<String> = reflections
        .iter()
        .flat_map(|r| serde_json::from_str::<Vec<String>>(&r.rollout_ids).unwrap())
        .collect();
    reflected.sort();
    let mut ids: Vec<String> = rollouts.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    assert_eq!(reflected, ids, "every rollout reflected on exactly once");
    let valid = reflections.iter().filter(|r| r.valid).count() as u64;
    let applied = applied_insight::Entity::find().count(db).await.unwrap();
    assert_eq!(applied, valid, "each valid reflection curated exactly once");
    let bullets = bullet::Entity::find().count(db).await.unwrap();
    assert!(
        bullets >= 1 && bullets <= valid,
        "{bullets} bullets from {valid} reflections"
    );
    RecordCounts {
        rollouts: rollouts.len() as u64,
        reflections: reflections.len() as u64,
        valid_reflections: valid,
        applied_insights: applied,
        bullets,
    }
}
