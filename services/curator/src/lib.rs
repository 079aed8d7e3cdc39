//! The Curator service: ACE curation of insights into a staged, de-duplicated playbook.
//! [`Curator`] holds the logic with no transport types; [`grpc`] adapts it to the
//! `agent_learning.v1.Curator` contract.

mod curator;
pub mod grpc;
mod judge;
mod render;
pub mod stream;
mod wiring;

pub use curator::{
    BatchFlushed, Curator, CuratorError, CuratorOptions, FeedbackItem, Health, PlaybookPage,
    PlaybookQuery, ReconcileReport, dedup_filter, unless_refused,
};
pub use judge::{Judgement, MergeJudge, Nearest, ThresholdJudge};
pub use wiring::curator_options;
