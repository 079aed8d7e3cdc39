//! `agent-learning export`: the record as fine-tuning data, the two training sets of Early
//! Experience in OpenAI's chat fine-tuning JSONL (one `{"messages": [...]}` a line):
//!
//! - implicit world modelling: a state and an action, answered by the next state the
//!   environment produced (expert demos and real branches; imagined rollouts are left out);
//! - self-reflection: a state and what each action tried there led to, answered by the
//!   reflection's reasoning and the expert's action (valid reflections only).

use std::io::Write;
use std::path::PathBuf;

use agent_learning_config::Settings;
use agent_learning_store::{ObservedTransition, ReflectedBranch, Store};
use anyhow::Context as _;
use serde_json::json;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// OpenAI chat fine-tuning JSONL.
    ChatJsonl,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Set {
    /// Both training sets.
    All,
    /// State + action -> next state.
    WorldModel,
    /// State + alternatives' outcomes -> rationale + expert action.
    Reflection,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The namespace whose record is exported.
    #[arg(long)]
    pub namespace: String,
    #[arg(long, value_enum, default_value = "chat-jsonl")]
    pub format: Format,
    #[arg(long, value_enum, default_value = "all")]
    pub set: Set,
    /// Write here instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

const WORLD_MODEL_SYSTEM: &str = "You predict what the environment does. Given a state and an \
     action, answer with the state that follows, and nothing else.";
const REFLECTION_SYSTEM: &str = "You choose the next action. Given the state and what each \
     candidate action led to, reason about which is best, then end with `Action: <action>`.";

pub fn world_model_example(t: &ObservedTransition) -> serde_json::Value {
    json!({"messages": [
        {"role": "system", "content": WORLD_MODEL_SYSTEM},
        {"role": "user", "content": format!("State:\n{}\n\nAction: {}", t.state, t.action)},
        {"role": "assistant", "content": t.next_state},
    ]})
}

pub fn reflection_example(b: &ReflectedBranch) -> serde_json::Value {
    let outcomes: Vec<String> = b
        .outcomes
        .iter()
        .map(|(action, next)| format!("- {action} led to:\n{next}"))
        .collect();
    let reasoning: Vec<&str> = [&b.situation, &b.evaluation, &b.alternatives, &b.conclusion]
        .into_iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect();
    json!({"messages": [
        {"role": "system", "content": REFLECTION_SYSTEM},
        {"role": "user", "content": format!(
            "State:\n{}\n\nWhat each action led to:\n{}",
            b.state,
            outcomes.join("\n")
        )},
        {"role": "assistant", "content": format!(
            "{}\n\nAction: {}",
            reasoning.join("\n\n"),
            b.expert_action
        )},
    ]})
}

pub async fn run(settings: &Settings, args: &ExportArgs) -> anyhow::Result<()> {
    agent_learning_domain::validate_namespace("--namespace", &args.namespace)?;
    let store = Store::open(settings).await.context("the record")?;
    let Format::ChatJsonl = args.format;
    let mut lines = Vec::new();
    let (mut world, mut reflections) = (0, 0);
    if matches!(args.set, Set::All | Set::WorldModel) {
        for t in store.observed_transitions(&args.namespace).await? {
            lines.push(world_model_example(&t).to_string());
            world += 1;
        }
    }
    if matches!(args.set, Set::All | Set::Reflection) {
        for b in store.reflected_branches(&args.namespace).await? {
            lines.push(reflection_example(&b).to_string());
            reflections += 1;
        }
    }
    if world + reflections == 0 {
        anyhow::bail!(
            "namespace {:?} has no transitions or valid reflections in the record",
            args.namespace
        );
    }
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| path.display().to_string())?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    for line in &lines {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    eprintln!(
        "{world} world-modelling and {reflections} self-reflection examples from {:?}",
        args.namespace
    );
    Ok(())
}
