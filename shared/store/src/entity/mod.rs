//! sea-orm entities of the relational record.

pub mod applied_insight;
pub mod bullet;
pub mod bullet_event;
pub mod decision;
pub mod embedding_cache;
pub mod feedback_request;
pub mod live_episode;
pub mod namespace;
pub mod pending_insight;
pub mod policy;
pub mod queue_entry;
pub mod queue_group;
pub mod queue_pending;
pub mod reflection;
pub mod rollout;
pub mod run;
pub mod run_lease;
pub mod run_stage;
pub mod transition;
