use sea_orm::entity::prelude::*;

/// One finished episode of a live-loop run.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "live_episodes")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub run_id: String,
    pub namespace: String,
    /// The episode's index in its run (seed order).
    pub idx: i32,
    pub seed: i64,
    pub steps: i32,
    pub decisions: i32,
    pub outcome_known: bool,
    pub success: bool,
    pub truncated: bool,
    /// The encoded `LiveEpisode`, as published on the episodes stream.
    pub payload: Vec<u8>,
    /// Set once published on the episodes stream (or found not to be reflected on).
    pub published: bool,
    /// Set once its bullets got the outcome's votes (or it had none to give).
    pub voted: bool,
    pub created_at: ChronoDateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
