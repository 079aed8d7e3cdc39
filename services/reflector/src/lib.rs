//! The reflector service. A reflection compares the expert's action at a branch point with the
//! alternatives explored from the same state, in four sections (Situation, Evaluation,
//! Alternatives, Conclusion), checked for structure before it is stored and published to the
//! reflections stream. Reflectors consume the rollouts stream as one consumer group, so any
//! number of replicas share the work; a reflection's id is its branch point's id, so an entry
//! delivered twice (a crashed replica's, claimed by another) is reflected once.

pub mod grpc;

use std::sync::Arc;
use std::time::Duration;

use agent_learning_api::{ApiError, ReflectRequest, ReflectorApi};
use agent_learning_domain::{
    InvalidInput, Reflection, RolloutGroup, RolloutSource, RunState, TokenUsage, clip_bytes,
    validate_namespace,
};
use agent_learning_llm::{ChatModel, LlmError, Message, prompts};
use agent_learning_proto::convert::{group_from_pb, reflection_to_pb};
use agent_learning_proto::v1 as pb;
use agent_learning_queue::{ConsumerOptions, Queue, QueueError, consume, streams};
use agent_learning_runtime::{Context, RuntimeError, Service, consumer_name};
use agent_learning_server::GrpcServer;
use agent_learning_store::{Outbox, Store, StoreError};
use async_trait::async_trait;
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ReflectorError {
    #[error("invalid argument: {0}")]
    Invalid(#[from] InvalidInput),
    #[error("model: {0}")]
    Model(#[source] LlmError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl From<ReflectorError> for ApiError {
    fn from(e: ReflectorError) -> Self {
        match e {
            ReflectorError::Invalid(i) => ApiError::Invalid(i),
            ReflectorError::Model(m) => ApiError::unavailable("model", m),
            ReflectorError::Queue(q) => ApiError::unavailable("reflections stream", q),
            ReflectorError::Store(s) => ApiError::internal("reflector record", s),
        }
    }
}

type Result<T, E = ReflectorError> = std::result::Result<T, E>;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ReflectorError {
    InvalidInput::new(field, reason).into()
}

pub const SECTIONS: [&str; 4] = ["Situation", "Evaluation", "Alternatives", "Conclusion"];
const DIRECT_NS: Uuid = Uuid::from_u128(0x1d4b_77e0_3a9f_4e21_b5c8_0f6e_2a3d_9c17);
/// Longest state shown to the model, in bytes.
const STATE_IN_PROMPT: usize = 1500;
const MAX_ALTERNATIVES: usize = 32;
/// Lessons of an episode shown to the model.
const EPISODE_BULLETS: usize = 12;
/// Steps of an episode shown to the model: the first two and the last ones.
const EPISODE_STEPS: usize = 8;
/// Longest state of an episode step shown to the model, in bytes.
const EPISODE_STATE: usize = 240;

#[derive(Clone)]
pub struct Reflector {
    store: Store,
    queue: Arc<dyn Queue>,
    model: Arc<dyn ChatModel>,
    max_chars: usize,
}

/// Lowercase words of `s`, joined by single spaces; `_` and `-` split words.
fn words(s: &str) -> String {
    s.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why a reflection's text cannot be used, if it cannot: every section present, non-empty,
/// within `max_chars`, and not all the same.
pub fn check_structure(sections: &[(String, String)], max_chars: usize) -> Result<(), String> {
    for name in SECTIONS {
        let Some((_, text)) = sections.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) else {
            return Err(format!("section {name} is missing"));
        };
        let text = text.trim();
        if text.is_empty() {
            return Err(format!("section {name} is empty"));
        }
        if text.chars().count() > max_chars {
            return Err(format!(
                "section {name} is longer than {max_chars} characters"
            ));
        }
    }
    let conclusion = section(sections, "Conclusion");
    if conclusion.split_whitespace().count() < 3 {
        return Err("the conclusion is shorter than three words".into());
    }
    let texts: Vec<&str> = sections.iter().map(|(_, t)| t.trim()).collect();
    if texts.windows(2).all(|w| w[0] == w[1]) {
        return Err("every section says the same thing".into());
    }
    Ok(())
}

/// Why a well-formed reflection still says nothing, if it does: a section that runs into
/// another section's header, or a section that repeats the instructions it was given (small
/// models parrot their prompt).
pub fn check_content(sections: &[(String, String)], instructions: &str) -> Result<(), String> {
    let instructions = words(instructions);
    for (name, text) in sections {
        let lower = text.to_lowercase();
        if let Some(other) = SECTIONS.iter().find(|o| {
            !o.eq_ignore_ascii_case(name) && lower.contains(&format!("{}:", o.to_lowercase()))
        }) {
            return Err(format!("section {name} runs into the {other} header"));
        }
        let w = words(text);
        if w.split(' ').count() >= 3 && instructions.contains(&w) {
            return Err(format!(
                "section {name} repeats the instructions instead of answering them"
            ));
        }
    }
    Ok(())
}

/// Why a conclusion is not a rule an agent can follow, if it is not: it must name one of the
/// actions at stake (every word of it, in any form of spacing or case). Small models otherwise
/// conclude "the decision was a good decision".
pub fn check_names_an_action(
    sections: &[(String, String)],
    actions: &[String],
) -> Result<(), String> {
    if actions.is_empty() {
        return Ok(());
    }
    let conclusion = words(&section(sections, "Conclusion"));
    let conclusion: Vec<&str> = conclusion.split(' ').collect();
    let named = actions.iter().any(|a| {
        let a = words(a);
        !a.is_empty() && a.split(' ').all(|w| conclusion.contains(&w))
    });
    if named {
        Ok(())
    } else {
        Err("the conclusion names none of the actions at stake".into())
    }
}

fn section(sections: &[(String, String)], name: &str) -> String {
    sections
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, t)| t.trim().to_owned())
        .unwrap_or_default()
}

impl Reflector {
    pub fn new(
        store: Store,
        queue: Arc<dyn Queue>,
        model: Arc<dyn ChatModel>,
        max_chars: usize,
    ) -> Self {
        Self {
            store,
            queue,
            model,
            max_chars,
        }
    }

    /// The reflection of a branch point: the stored one if it exists (published if it was not
    /// yet), else a new one, stored and published.
    pub async fn reflect_group(&self, g: &RolloutGroup) -> Result<Reflection> {
        validate_namespace("namespace", &g.namespace)?;
        if g.id.trim().is_empty() {
            return Err(invalid("id", "must not be empty"));
        }
        let stored = match self.store.reflection(&g.id).await? {
            Some(existing) => existing,
            // Two replicas may have raced on the same entry: the first insert wins.
            None => self.store.insert_reflection(&self.write(g).await?).await?,
        };
        self.publish(&stored).await?;
        Ok(stored)
    }

    /// Valid reflections go to the reflections stream, once.
    async fn publish(&self, r: &Reflection) -> Result<()> {
        self.store
            .publish_once(Outbox::Reflection(&r.id), || async {
                if r.valid {
                    let payload = reflection_to_pb(r.clone()).encode_to_vec();
                    self.queue
                        .publish(streams::REFLECTIONS, &r.id, &payload)
                        .await?;
                }
                Ok::<(), ReflectorError>(())
            })
            .await?;
        Ok(())
    }

    /// Asks the model; a model whose output stays unusable gives an invalid reflection (kept,
    /// counted, never curated); a model that cannot be reached is an error (retried).
    async fn write(&self, g: &RolloutGroup) -> Result<Reflection> {
        let alternatives: Vec<&agent_learning_domain::Rollout> = g
            .rollouts
            .iter()
            .filter(|r| r.action != g.expert_action)
            .collect();
        let listed = if alternatives.is_empty() {
            "(none: the expert action was the only one available)".to_owned()
        } else {
            alternatives
                .iter()
                .map(|r| {
                    let how = if r.source == RolloutSource::WorldModel {
                        "predicted by the world model"
                    } else {
                        "observed"
                    };
                    format!(
                        "- {} ({how}{}):\n{}",
                        r.action,
                        if r.done { ", the episode ended" } else { "" },
                        clip_bytes(&r.next_state, STATE_IN_PROMPT)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        let prompt = prompts::render(
            &prompts::REFLECT,
            &[
                ("state", clip_bytes(&g.state, STATE_IN_PROMPT)),
                ("expert_action", &g.expert_action),
                (
                    "expert_next_state",
                    clip_bytes(&g.expert_next_state, STATE_IN_PROMPT),
                ),
                ("alternatives", &listed),
            ],
        );
        let rollout_ids: Vec<String> = g.rollouts.iter().map(|r| r.id.clone()).collect();
        let r = Reflection {
            id: g.id.clone(),
            namespace: g.namespace.clone(),
            run_id: g.run_id.clone(),
            rollout_ids,
            ..Default::default()
        };
        let mut actions = vec![g.expert_action.clone()];
        actions.extend(g.rollouts.iter().map(|r| r.action.clone()));
        self.ask(r, prompt, &prompts::REFLECT, &actions).await
    }

    /// Puts the prompt to the model and checks the four sections it answers.
    async fn ask(
        &self,
        mut r: Reflection,
        prompt: String,
        template: &prompts::Template,
        actions: &[String],
    ) -> Result<Reflection> {
        let messages = [Message::user(prompt)];
        match self
            .model
            .sections(&messages, &SECTIONS, self.max_chars)
            .await
        {
            Ok(s) => {
                r.situation = section(&s.sections, "Situation");
                r.evaluation = section(&s.sections, "Evaluation");
                r.alternatives = section(&s.sections, "Alternatives");
                r.conclusion = section(&s.sections, "Conclusion");
                r.usage = TokenUsage {
                    prompt_tokens: s.usage.prompt_tokens,
                    completion_tokens: s.usage.completion_tokens,
                };
                let instructions = format!("{}\n{}", template.text, prompts::SECTIONS.text);
                match check_structure(&s.sections, self.max_chars)
                    .and_then(|()| check_content(&s.sections, &instructions))
                    .and_then(|()| check_names_an_action(&s.sections, actions))
                {
                    Ok(()) => r.valid = true,
                    Err(problem) => r.problem = problem,
                }
            }
            Err(LlmError::InvalidOutput(p) | LlmError::Malformed(p)) => {
                r.problem = format!("the model's answer was unusable: {p}");
            }
            Err(LlmError::InvalidRequest(p)) => {
                r.problem = format!("the reflection could not be put to the model: {p}");
            }
            Err(e) => return Err(ReflectorError::Model(e)),
        }
        if !r.valid {
            tracing::warn!(reflection = %r.id, problem = %r.problem, "invalid reflection");
        }
        metrics::counter!(
            "agent_learning_reflections_total",
            "valid" => if r.valid { "true" } else { "false" },
        )
        .increment(1);
        Ok(r)
    }

    /// The reflection on a finished live episode: the stored one if it exists (published if
    /// it was not yet), else a new one, stored and published. Its id is the episode's.
    pub async fn reflect_episode(&self, e: &pb::LiveEpisode) -> Result<Reflection> {
        validate_namespace("namespace", &e.namespace)?;
        if e.id.trim().is_empty() {
            return Err(invalid("id", "must not be empty"));
        }
        let stored = match self.store.reflection(&e.id).await? {
            Some(existing) => existing,
            None => {
                let prompt = self.episode_prompt(e).await?;
                let r = Reflection {
                    id: e.id.clone(),
                    namespace: e.namespace.clone(),
                    run_id: e.run_id.clone(),
                    ..Default::default()
                };
                let mut actions: Vec<String> = Vec::new();
                for step in &e.steps {
                    if !actions.contains(&step.action) {
                        actions.push(step.action.clone());
                    }
                }
                let r = self
                    .ask(r, prompt, &prompts::REFLECT_EPISODE, &actions)
                    .await?;
                self.store.insert_reflection(&r).await?
            }
        };
        self.publish(&stored).await?;
        Ok(stored)
    }

    /// The episode as the model reads it: the outcome, the lessons its decisions were shown,
    /// and its steps (the first and the last ones of a long episode).
    async fn episode_prompt(&self, e: &pb::LiveEpisode) -> Result<String> {
        let outcome = match (e.outcome_known, e.success, e.truncated) {
            (_, _, true) => "failed: it reached the step limit without finishing",
            (true, true, _) => "succeeded",
            (true, false, _) => "failed",
            (false, _, _) => "ended; the environment does not say whether it succeeded",
        };
        let mut ids: Vec<Uuid> = Vec::new();
        for s in &e.steps {
            for b in &s.bullet_ids {
                if let Ok(id) = Uuid::parse_str(b)
                    && !ids.contains(&id)
                {
                    ids.push(id);
                }
            }
        }
        ids.truncate(EPISODE_BULLETS);
        let bullets = self.store.bullets_by_ids(&e.namespace, &ids).await?;
        let bullets = if bullets.is_empty() {
            "(none)".to_owned()
        } else {
            bullets
                .iter()
                .map(|b| format!("- {}", clip_bytes(&b.content, 400)))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let n = e.steps.len();
        let shown: Vec<usize> = if n <= EPISODE_STEPS {
            (0..n).collect()
        } else {
            (0..2).chain(n - (EPISODE_STEPS - 2)..n).collect()
        };
        let mut steps = String::new();
        let mut previous = None;
        for i in shown {
            if previous.is_some_and(|p| p + 1 != i) {
                steps.push_str(&format!(
                    "... ({} steps not shown) ...\n",
                    i - previous.unwrap_or(0) - 1
                ));
            }
            previous = Some(i);
            let s = &e.steps[i];
            let effect = if s.invalid {
                " (refused: not allowed in that state)"
            } else if s.state.trim() == s.next_state.trim() {
                " (changed nothing)"
            } else {
                ""
            };
            steps.push_str(&format!(
                "Step {}. State: {}\nAction: {}{effect}\n",
                i + 1,
                clip_bytes(s.state.trim(), EPISODE_STATE),
                s.action
            ));
        }
        if let Some(last) = e.steps.last() {
            steps.push_str(&format!(
                "Final state: {}",
                clip_bytes(last.next_state.trim(), EPISODE_STATE)
            ));
        }
        Ok(prompts::render(
            &prompts::REFLECT_EPISODE,
            &[
                ("outcome", outcome),
                ("bullets", &bullets),
                ("steps", &steps),
            ],
        ))
    }

    /// The direct Reflect RPC: the same reflection path, keyed by the request's content.
    pub async fn reflect(&self, req: ReflectRequest) -> Result<Reflection> {
        validate_namespace("namespace", &req.namespace)?;
        if req.state.trim().is_empty() {
            return Err(invalid("state", "must not be empty"));
        }
        if req.expert_action.trim().is_empty() {
            return Err(invalid("expert_action", "must not be empty"));
        }
        if req.alternatives.len() > MAX_ALTERNATIVES {
            return Err(invalid(
                "alternatives",
                format!("at most {MAX_ALTERNATIVES}"),
            ));
        }
        agent_learning_domain::check_no_nul("state", &req.state)?;
        agent_learning_domain::check_no_nul("expert_action", &req.expert_action)?;
        agent_learning_domain::check_no_nul("expert_next_state", &req.expert_next_state)?;
        for (i, a) in req.alternatives.iter().enumerate() {
            agent_learning_domain::check_no_nul(&format!("alternatives[{i}].action"), &a.action)?;
            agent_learning_domain::check_no_nul(
                &format!("alternatives[{i}].next_state"),
                &a.next_state,
            )?;
        }
        let mut key = format!(
            "{}\u{1f}{}\u{1f}{}",
            req.namespace, req.state, req.expert_action
        );
        for a in &req.alternatives {
            key.push('\u{1f}');
            key.push_str(&a.action);
            key.push('\u{1e}');
            key.push_str(&a.next_state);
        }
        let id = Uuid::new_v5(&DIRECT_NS, key.as_bytes()).to_string();
        let g = RolloutGroup {
            id,
            namespace: req.namespace,
            run_id: String::new(),
            demo_id: String::new(),
            step_index: 0,
            state: req.state,
            expert_action: req.expert_action,
            expert_next_state: req.expert_next_state,
            rollouts: req.alternatives,
        };
        self.reflect_group(&g).await
    }

    /// Runs `n` consumers of the rollouts stream and `n` of the episodes stream until
    /// `shutdown`.
    pub fn spawn_consumers(
        &self,
        ctx: &Context,
        n: u32,
        consumer: &str,
        block: Duration,
        shutdown: CancellationToken,
    ) {
        for (stream, name) in [
            (streams::ROLLOUTS, consumer.to_owned()),
            (streams::EPISODES, format!("{consumer}-episodes")),
        ] {
            for i in 0..n {
                let me = self.clone();
                let opts = ConsumerOptions {
                    stream: stream.into(),
                    group: streams::REFLECTORS.into(),
                    consumer: format!("{name}-{i}"),
                    batch: 1,
                    block,
                };
                ctx.spawn_worker(consume(
                    self.queue.clone(),
                    opts,
                    shutdown.clone(),
                    move |d| {
                        let me = me.clone();
                        async move {
                            match me.take(stream, &d).await {
                                Ok(()) => Ok(()),
                                Err(ReflectorError::Invalid(e)) => {
                                    tracing::warn!(stream, key = %d.key, error = %e, "entry rejected; skipped");
                                    Ok(())
                                }
                                Err(e) => Err(e),
                            }
                        }
                    },
                ));
            }
        }
    }

    /// One entry of a stream the reflectors consume: a branch point of a training run, or a
    /// live episode. A cancelled run's entries are dropped, not reflected; an entry that is
    /// not what its stream carries is skipped.
    async fn take(&self, stream: &str, d: &agent_learning_queue::Delivery) -> Result<()> {
        let (run_id, what) = if stream == streams::EPISODES {
            match pb::LiveEpisode::decode(d.payload.as_slice()) {
                Ok(e) => (e.run_id.clone(), Work::Episode(e)),
                Err(e) => {
                    tracing::warn!(key = %d.key, error = %e, "episodes entry is not a LiveEpisode; skipped");
                    return Ok(());
                }
            }
        } else {
            match pb::RolloutGroup::decode(d.payload.as_slice())
                .map_err(|e| e.to_string())
                .and_then(|g| group_from_pb(g).map_err(|e| e.to_string()))
            {
                Ok(g) => (g.run_id.clone(), Work::Group(g)),
                Err(e) => {
                    tracing::warn!(key = %d.key, error = %e, "rollouts entry is not a RolloutGroup; skipped");
                    return Ok(());
                }
            }
        };
        if !run_id.is_empty() && self.store.run_state(&run_id).await? == Some(RunState::Cancelled) {
            tracing::info!(key = %d.key, run = %run_id, "run cancelled; entry skipped");
            return Ok(());
        }
        let r = match &what {
            Work::Group(g) => self.reflect_group(g).await?,
            Work::Episode(e) => self.reflect_episode(e).await?,
        };
        tracing::info!(reflection = %r.id, valid = r.valid, deliveries = d.deliveries, stream, "reflected");
        Ok(())
    }
}

/// What an entry asks a reflector to reflect on.
enum Work {
    Group(RolloutGroup),
    Episode(pb::LiveEpisode),
}

#[async_trait]
impl ReflectorApi for Reflector {
    async fn reflect(&self, req: ReflectRequest) -> Result<Reflection, ApiError> {
        Ok(Reflector::reflect(self, req).await?)
    }
}

impl Service for Reflector {
    const NAME: &'static str = "reflector";

    async fn build(ctx: &Context) -> Result<Arc<Self>, RuntimeError> {
        Ok(Arc::new(Self::new(
            ctx.store().await?,
            ctx.queue().await?,
            ctx.model().await?,
            ctx.settings().pipeline.reflection_max_chars,
        )))
    }

    /// The Reflect RPC and `pipeline.reflectors` consumers of the rollouts stream (none
    /// when 0: reflectors then run as their own processes).
    async fn mount(
        self: &Arc<Self>,
        server: &mut GrpcServer,
        ctx: &Context,
    ) -> Result<(), RuntimeError> {
        grpc::mount(self.clone(), server);
        let s = ctx.settings();
        // A reflector process of its own always consumes; in a shared server 0 means none.
        let n = if ctx.standalone() {
            s.pipeline.reflectors.max(1)
        } else {
            s.pipeline.reflectors
        };
        self.spawn_consumers(
            ctx,
            n,
            &consumer_name("reflector"),
            Duration::from_millis(s.queue.block_ms),
            ctx.stop_token(),
        );
        for stream in [
            agent_learning_queue::streams::ROLLOUTS,
            agent_learning_queue::streams::EPISODES,
        ] {
            ctx.report_queue_lag(
                ctx.queue().await?,
                stream,
                agent_learning_queue::streams::REFLECTORS,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(parts: &[(&str, &str)]) -> Vec<(String, String)> {
        parts
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn structure_is_checked() {
        let good = s(&[
            ("Situation", "A red light ahead."),
            ("Evaluation", "Braking stops in time."),
            ("Alternatives", "Accelerating runs the light."),
            ("Conclusion", "Brake early at red lights."),
        ]);
        assert_eq!(check_structure(&good, 100), Ok(()));
        let mut missing = good.clone();
        missing.remove(2);
        assert!(
            check_structure(&missing, 100)
                .unwrap_err()
                .contains("Alternatives")
        );
        let mut empty = good.clone();
        empty[0].1 = "  ".into();
        assert!(
            check_structure(&empty, 100)
                .unwrap_err()
                .contains("Situation")
        );
        let mut short = good.clone();
        short[3].1 = "Brake.".into();
        assert!(
            check_structure(&short, 100)
                .unwrap_err()
                .contains("conclusion")
        );
        assert!(check_structure(&good, 10).unwrap_err().contains("longer"));
        let good_content = check_content(&good, "Say what matters. End with one rule.");
        assert_eq!(good_content, Ok(()));
        let echo = s(&[
            ("Situation", "What matters in this state."),
            ("Evaluation", "Braking stops in time."),
            ("Alternatives", "Accelerating runs the light."),
            ("Conclusion", "Brake early at red lights."),
        ]);
        assert!(
            check_content(&echo, "Say what matters in this state, and why.")
                .unwrap_err()
                .contains("repeats the instructions")
        );
        let leak = s(&[
            ("Situation", "A light. Evaluation: fine."),
            ("Evaluation", "Braking stops in time."),
            ("Alternatives", "Accelerating runs the light."),
            ("Conclusion", "Brake early at red lights."),
        ]);
        assert!(
            check_content(&leak, "")
                .unwrap_err()
                .contains("Evaluation header")
        );
        let same = s(&[
            ("Situation", "x y z"),
            ("Evaluation", "x y z"),
            ("Alternatives", "x y z"),
            ("Conclusion", "x y z"),
        ]);
        assert!(check_structure(&same, 100).unwrap_err().contains("same"));
        let actions = ["close_ticket".to_owned(), "ask for details".to_owned()];
        assert_eq!(check_names_an_action(&good, &[]), Ok(()));
        let vague = s(&[("Conclusion", "The decision was a good decision.")]);
        assert!(
            check_names_an_action(&vague, &actions)
                .unwrap_err()
                .contains("names none")
        );
        let rule = s(&[(
            "Conclusion",
            "When the fix is confirmed, Close ticket at once.",
        )]);
        assert_eq!(check_names_an_action(&rule, &actions), Ok(()));
        let other = s(&[("Conclusion", "Ask the customer for the details first.")]);
        assert_eq!(check_names_an_action(&other, &actions), Ok(()));
    }
}
