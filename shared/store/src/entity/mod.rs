//! sea-orm entities of the relational record.

pub mod applied_insight;
pub mod bullet;
pub mod bullet_event;
pub mod feedback_request;
pub mod namespace;
