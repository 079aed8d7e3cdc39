//! Domain types shared by every agent-learning service: playbook bullets, insights, stages,
//! delta operations, and the rules that validate them. No transport types live here.

mod pipeline;
mod playbook;
mod tokens;
mod validate;

pub use pipeline::{
    DecisionRecord, PolicyVersion, Reflection, Rollout, RolloutGroup, RolloutSource, Run,
    RunCounts, RunStage, RunState, StageProgress, TokenUsage, Transition, UnknownValue, run_kind,
};
pub use playbook::{
    Bullet, BulletEvent, DeltaKind, DeltaOp, EventKind, Insight, PromotionGates, Stage,
};
pub use tokens::{clip_bytes, estimate_tokens};
pub use validate::{
    InvalidInput, MAX_STATE_BYTES, MAX_TOKEN_BUDGET, check_no_nul, validate_namespace, wilson,
};
