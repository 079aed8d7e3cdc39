//! Environments for agent-learning: the `Environment` trait (the seed's `reset`/`step`
//! protocol plus optional capabilities), four built-in simulators each with a rule-based
//! expert, a seeded random source, and the JSONL format of expert demonstrations.

pub mod demos;
mod devops;
mod driving;
mod review;
mod rng;
mod support;

use std::collections::BTreeMap;

pub use demos::{Demo, DemoError, DemoStep, generate_demos, parse_demos, read_demos, write_demos};
pub use devops::{DevOps, DevOpsExpert};
pub use driving::{ACTIONS as DRIVING_ACTIONS, Driving, DrivingExpert};
pub use review::{CodeReview, ReviewExpert};
pub use rng::Rng;
pub use support::{Support, SupportExpert};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EnvError {
    #[error("action {action:?} is not valid here; valid actions: {valid}")]
    InvalidAction { action: String, valid: String },
    #[error("the episode is over; reset to start another")]
    Done,
    #[error("step before reset")]
    NotStarted,
    #[error("snapshot: {0}")]
    Snapshot(String),
    #[error("unknown environment {0:?}; built-in: driving, support, devops, code-review")]
    Unknown(String),
    #[error("remote environment: {0}")]
    Remote(String),
}

/// The result of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub state: String,
    pub done: bool,
}

/// How an episode ended. Used only for evaluation, never for training (training is
/// reward-free).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub success: bool,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

/// A sequential task. `reset` and `step` are the protocol; the rest are capabilities an
/// environment may offer.
pub trait Environment: Send {
    fn name(&self) -> &'static str;
    /// Starts an episode; the same seed gives the same episode.
    fn reset(&mut self, seed: u64) -> Result<String, EnvError>;
    fn step(&mut self, action: &str) -> Result<Step, EnvError>;
    /// Valid actions in the current state.
    fn actions(&self) -> Option<Vec<String>> {
        None
    }
    /// The whole episode state, to branch from it later with `restore`.
    fn snapshot(&self) -> Option<Vec<u8>> {
        None
    }
    fn restore(&mut self, _snapshot: &[u8]) -> Result<String, EnvError> {
        Err(EnvError::Snapshot(format!(
            "{} cannot restore",
            self.name()
        )))
    }
    /// Set once the episode is done.
    fn outcome(&self) -> Option<Outcome> {
        None
    }
}

/// A policy that knows the task: picks the action for the current state of its environment.
pub trait Expert {
    fn act(&mut self, env: &dyn Environment) -> String;
}

/// Names of the built-in environments.
pub const BUILT_IN: [&str; 4] = ["driving", "support", "devops", "code-review"];

/// An environment with the expert that knows it.
pub type WithExpert = (Box<dyn Environment>, Box<dyn Expert>);

/// A constructor of a built-in environment, by name.
pub fn factory(name: &str) -> Result<fn() -> Box<dyn Environment>, EnvError> {
    Ok(match name {
        "driving" => || Box::new(Driving::default()),
        "support" => || Box::new(Support::default()),
        "devops" => || Box::new(DevOps::default()),
        "code-review" => || Box::new(CodeReview::default()),
        other => return Err(EnvError::Unknown(other.to_owned())),
    })
}

/// A built-in environment and its expert, by name.
pub fn built_in(name: &str) -> Result<WithExpert, EnvError> {
    Ok(match name {
        "driving" => (Box::new(Driving::default()), Box::new(DrivingExpert)),
        "support" => (Box::new(Support::default()), Box::new(SupportExpert)),
        "devops" => (Box::new(DevOps::default()), Box::new(DevOpsExpert)),
        "code-review" => (Box::new(CodeReview::default()), Box::new(ReviewExpert)),
        other => return Err(EnvError::Unknown(other.to_owned())),
    })
}

/// Runs the expert for one episode; returns the steps and the outcome.
pub fn run_expert(
    env: &mut dyn Environment,
    expert: &mut dyn Expert,
    seed: u64,
    max_steps: usize,
) -> Result<(Vec<DemoStep>, Outcome), EnvError> {
    let mut state = env.reset(seed)?;
    let mut steps = Vec::new();
    for _ in 0..max_steps {
        let action = expert.act(env);
        let step = env.step(&action)?;
        steps.push(DemoStep {
            state: std::mem::replace(&mut state, step.state.clone()),
            action,
            next_state: step.state,
            done: step.done,
        });
        if step.done {
            break;
        }
    }
    let outcome = env.outcome().unwrap_or(Outcome {
        success: false,
        metrics: BTreeMap::from([("truncated".to_owned(), 1.0)]),
    });
    Ok((steps, outcome))
}

pub(crate) fn invalid(action: &str, valid: &[String]) -> EnvError {
    EnvError::InvalidAction {
        action: action.to_owned(),
        valid: valid.join(", "),
    }
}
