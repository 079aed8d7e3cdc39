//! The learning pipeline's records: runs and their stages, rollouts, reflections, policies and
//! decisions, as the services and the store share them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Stage;

/// A stored value that names no member of its closed set: the record was written by something
/// else, or is corrupt. Never silently read as a default.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}")]
pub struct UnknownValue {
    pub what: &'static str,
    pub value: String,
}

impl UnknownValue {
    fn new(what: &'static str, value: &str) -> Self {
        Self {
            what,
            value: value.to_owned(),
        }
    }
}

/// Declares a closed set stored as lowercase text: `as_str`, `parse` (an error for anything
/// else) and `ALL` in order.
macro_rules! closed_set {
    ($(#[$meta:meta])* $name:ident, $what:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue::new($what, s)),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

closed_set!(
    /// Where a run is in its life.
    RunState, "run state", {
        Pending => "pending",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

impl RunState {
    pub fn terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

closed_set!(
    /// The offline stages of a training run, in the order they run.
    RunStage, "run stage", {
        Fit => "fit",
        Explore => "explore",
        Reflect => "reflect",
        Curate => "curate",
        Compile => "compile",
        Live => "live",
    }
);

impl RunStage {
    /// The stages of a training run, in order.
    pub const TRAINING: &'static [RunStage] = &[
        RunStage::Fit,
        RunStage::Explore,
        RunStage::Reflect,
        RunStage::Curate,
        RunStage::Compile,
    ];
    /// The stages of a live-loop run.
    pub const LIVE: &'static [RunStage] = &[RunStage::Live];
}

/// What a run does: the offline pipeline, or the live loop.
pub mod run_kind {
    pub const TRAINING: &str = "training";
    pub const LIVE: &str = "live";
}

closed_set!(
    /// How a rollout's outcome was found.
    RolloutSource, "rollout source", {
        Expert => "expert",
        Env => "env",
        WorldModel => "world_model",
    }
);

/// Tokens a model call (or a run) spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// One step of an episode: the state, the action taken, what followed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub state: String,
    pub action: String,
    pub next_state: String,
    pub done: bool,
}

/// A training run as the record holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub id: String,
    pub namespace: String,
    pub kind: String,
    pub state: RunState,
    /// The stage being (or last) driven; `None` before the first.
    pub current_stage: Option<RunStage>,
    pub error: String,
    pub env: String,
    /// The run's training configuration, as JSON.
    pub config: String,
    /// The demonstrations, as validated JSONL.
    pub demos: String,
    /// The run summary as JSON once finished; empty before.
    pub summary: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A run's progress in one stage.
#[derive(Debug, Clone, PartialEq)]
pub struct StageProgress {
    pub stage: RunStage,
    pub done: u64,
    pub total: u64,
    /// Time spent in the stage, summed over resumptions.
    pub seconds: f64,
    pub finished: bool,
    /// Stage results as JSON (counts, accuracy, version).
    pub detail: String,
}

/// What a run has produced so far, counted in the record.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RunCounts {
    pub groups: u64,
    pub rollouts: u64,
    pub rollouts_by_source: BTreeMap<String, u64>,
    pub reflections: u64,
    pub reflections_valid: u64,
    pub curated: u64,
    /// Valid reflections' insights waiting for the run's next curation batch.
    pub pending_insights: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// One action tried from an expert state: the expert's own, or an alternative.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub id: String,
    pub run_id: String,
    pub demo_id: String,
    pub step_index: u32,
    pub state: String,
    pub expert_action: String,
    pub action: String,
    pub next_state: String,
    pub done: bool,
    pub source: RolloutSource,
    pub group_id: String,
}

/// Every rollout from one branch point (run, demo, step): the unit a reflection is about.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutGroup {
    pub id: String,
    pub namespace: String,
    pub run_id: String,
    pub demo_id: String,
    pub step_index: u32,
    pub state: String,
    pub expert_action: String,
    pub expert_next_state: String,
    pub rollouts: Vec<Rollout>,
}

/// A four-section reflection on one branch point.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Reflection {
    /// The branch point's id: one reflection per branch point.
    pub id: String,
    pub namespace: String,
    pub run_id: String,
    pub situation: String,
    pub evaluation: String,
    pub alternatives: String,
    pub conclusion: String,
    pub valid: bool,
    /// Why the reflection is not valid; empty when it is.
    pub problem: String,
    pub rollout_ids: Vec<String>,
    pub usage: TokenUsage,
}

/// A compiled, versioned policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyVersion {
    pub namespace: String,
    pub version: i64,
    pub instructions_template: String,
    pub exemplars_k: u32,
    /// The lowest playbook stage the policy uses; never quarantined.
    pub min_stage: Stage,
    pub token_budget: u32,
    pub created_at: DateTime<Utc>,
}

/// A decision the policy made, as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionRecord {
    pub id: String,
    pub namespace: String,
    pub policy_version: i64,
    pub state: String,
    pub action: String,
    pub reasoning: String,
    pub bullet_ids: Vec<String>,
    pub exemplar_ids: Vec<String>,
    pub fallback: bool,
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_sets_round_trip_and_refuse_the_unknown() {
        for s in RunStage::ALL {
            assert_eq!(RunStage::parse(s.as_str()), Ok(*s));
        }
        for s in RunState::ALL {
            assert_eq!(RunState::parse(s.as_str()), Ok(*s));
        }
        assert_eq!(
            RolloutSource::parse("world_model"),
            Ok(RolloutSource::WorldModel)
        );
        let e = RunStage::parse("compiel").unwrap_err();
        assert_eq!(e.to_string(), "unknown run stage \"compiel\"");
        assert!(
            RunState::parse("").is_err(),
            "no default for an empty value"
        );
        assert_eq!(
            RunStage::TRAINING
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>(),
            ["fit", "explore", "reflect", "curate", "compile"]
        );
        assert_eq!(RunStage::LIVE, [RunStage::Live]);
        assert_eq!(RunStage::ALL.len(), 6);
    }
}
