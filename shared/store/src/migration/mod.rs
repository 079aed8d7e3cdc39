//! Schema migrations, applied at start-up.

use sea_orm_migration::prelude::*;

mod m0001_playbook;
mod m0002_pipeline;
mod m0003_run_leases;
mod m0004_stage_pins;
mod m0005_live_episodes;
mod m0006_pending_insights;
mod m0007_embedding_cache;
mod m0008_bullet_content_hash;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_playbook::Migration),
            Box::new(m0002_pipeline::Migration),
            Box::new(m0003_run_leases::Migration),
            Box::new(m0004_stage_pins::Migration),
            Box::new(m0005_live_episodes::Migration),
            Box::new(m0006_pending_insights::Migration),
            Box::new(m0007_embedding_cache::Migration),
            Box::new(m0008_bullet_content_hash::Migration),
        ]
    }
}
