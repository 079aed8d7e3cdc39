//! The policy service. `Compile` stores a versioned policy: the instructions template, how many
//! expert exemplars to show (the nearest demo steps by state embedding), the lowest playbook
//! stage it uses and the playbook's token budget. `Decide` assembles the prompt from those
//! (the playbook through the Curator's RenderContext) and returns an action that is always one
//! of `valid_actions`: the local model is constrained to them; a remote model's answer is
//! repaired once, then the nearest exemplar's action is used and marked as a fallback.

mod decisions;
pub mod grpc;
mod versions;

use std::sync::Arc;

use agent_learning_api::{
    ApiError, CompileRequest, CuratorApi, DecideRequest, Decision, FeedbackItem, PolicyApi,
};
use agent_learning_config::PolicySettings;
use agent_learning_domain::{
    DecisionRecord, InvalidInput, PolicyVersion, Stage, TokenUsage, clip_bytes, validate_namespace,
};
use agent_learning_llm::{ChatModel, LlmError, Message, prompts};
use agent_learning_runtime::{Context, RuntimeError, Service, WithWhat as _};
use agent_learning_server::GrpcServer;
use agent_learning_store::{Store, StoreError};
use agent_learning_transitions::{Transitions, TransitionsError};
use async_trait::async_trait;
use chrono::Utc;
use uuid::Uuid;

const MAX_ACTIONS: usize = 256;
const MAX_STATE: usize = agent_learning_domain::MAX_STATE_BYTES;
const MAX_TEMPLATE: usize = 16 * 1024;
/// Longest exemplar state shown in a prompt, in bytes.
const EXEMPLAR_STATE: usize = 600;
/// Past steps a Decide may carry.
pub const MAX_HISTORY: usize = 16;
/// Compiles racing for the next version number retry this often.
const COMPILE_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid argument: {0}")]
    Invalid(#[from] InvalidInput),
    #[error("namespace {0} has no compiled policy: train it or call Compile")]
    Untrained(String),
    #[error("policy {ns} version {version} not found")]
    NoSuchVersion { ns: String, version: i64 },
    #[error("decision {0} not found")]
    NoSuchDecision(String),
    #[error("policy version contention; retry")]
    Contention,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transitions(#[from] TransitionsError),
    #[error("model: {0}")]
    Model(#[source] LlmError),
    #[error("the decision writer stopped")]
    WriterStopped,
    #[error("curator {what}: {source}")]
    Curator {
        what: &'static str,
        #[source]
        source: ApiError,
    },
}

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::Invalid(i) => ApiError::Invalid(i),
            PolicyError::Untrained(_) => ApiError::FailedPrecondition(e.to_string()),
            PolicyError::NoSuchVersion { .. } | PolicyError::NoSuchDecision(_) => {
                ApiError::NotFound(e.to_string())
            }
            PolicyError::Contention => ApiError::Unavailable {
                message: e.to_string(),
                source: None,
            },
            PolicyError::Store(s) => ApiError::internal("policy record", s),
            PolicyError::WriterStopped => ApiError::Unavailable {
                message: e.to_string(),
                source: None,
            },
            PolicyError::Transitions(t) => ApiError::unavailable("exemplars", t),
            PolicyError::Model(m) => ApiError::unavailable("model", m),
            PolicyError::Curator { what, source } => match source {
                ApiError::NotFound(m) => ApiError::NotFound(m),
                // A full curator is a full service: the caller backs off, as from us.
                busy if busy.code() == tonic::Code::ResourceExhausted => ApiError::Remote(
                    tonic::Status::resource_exhausted(format!("curator {what}: {busy}")),
                ),
                other => ApiError::unavailable(format!("curator {what}"), other),
            },
        }
    }
}

type Result<T, E = PolicyError> = std::result::Result<T, E>;

pub struct Policy {
    store: Store,
    transitions: Transitions,
    model: Arc<dyn ChatModel>,
    curator: Arc<dyn CuratorApi>,
    defaults: PolicySettings,
    versions: versions::Versions,
    decisions: decisions::DecisionLog,
}

impl Policy {
    pub fn new(
        store: Store,
        transitions: Transitions,
        model: Arc<dyn ChatModel>,
        curator: Arc<dyn CuratorApi>,
        defaults: PolicySettings,
    ) -> Self {
        Self {
            decisions: decisions::DecisionLog::new(store.clone()),
            versions: versions::Versions::default(),
            store,
            transitions,
            model,
            curator,
            defaults,
        }
    }

    pub async fn compile(&self, r: CompileRequest) -> Result<PolicyVersion> {
        validate_namespace("namespace", &r.namespace)?;
        let template = r
            .instructions_template
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| self.defaults.instructions_template.clone());
        agent_learning_domain::check_no_nul("instructions_template", &template)?;
        if template.len() > MAX_TEMPLATE {
            return Err(InvalidInput::new(
                "instructions_template",
                format!("{} bytes is more than {MAX_TEMPLATE}", template.len()),
            )
            .into());
        }
        if r.token_budget
            .is_some_and(|b| b > agent_learning_domain::MAX_TOKEN_BUDGET)
        {
            return Err(InvalidInput::new(
                "token_budget",
                format!(
                    "must be at most {} (0: the default)",
                    agent_learning_domain::MAX_TOKEN_BUDGET
                ),
            )
            .into());
        }
        if r.exemplars_k.is_some_and(|k| k > 20) {
            return Err(InvalidInput::new("exemplars_k", "must be at most 20").into());
        }
        let min_stage = r.min_stage.unwrap_or(self.defaults.min_stage);
        if min_stage == Stage::Quarantined {
            return Err(InvalidInput::new(
                "min_stage",
                "quarantined bullets are never used by a policy",
            )
            .into());
        }
        let k = r
            .exemplars_k
            .filter(|k| *k > 0)
            .unwrap_or(self.defaults.exemplars_k);
        let budget = r
            .token_budget
            .filter(|b| *b > 0)
            .unwrap_or(self.defaults.token_budget);
        // Versions count up per namespace; two compiles racing retry on the key conflict.
        for _ in 0..COMPILE_ATTEMPTS {
            let latest = self.store.latest_policy(&r.namespace).await?;
            let p = PolicyVersion {
                namespace: r.namespace.clone(),
                version: latest.map(|m| m.version).unwrap_or(0) + 1,
                instructions_template: template.clone(),
                exemplars_k: k,
                min_stage,
                token_budget: budget,
                created_at: Utc::now(),
            };
            match self.store.insert_policy(&p).await {
                Ok(p) => {
                    self.versions.compiled(&p);
                    return Ok(p);
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(PolicyError::Contention)
    }

    /// The given version, or the latest when `None`.
    pub async fn get(&self, ns: &str, version: Option<i64>) -> Result<PolicyVersion> {
        validate_namespace("namespace", ns)?;
        match version {
            None => self
                .store
                .latest_policy(ns)
                .await?
                .ok_or_else(|| PolicyError::Untrained(ns.to_owned())),
            Some(v) => self
                .store
                .policy(ns, v)
                .await?
                .ok_or_else(|| PolicyError::NoSuchVersion {
                    ns: ns.to_owned(),
                    version: v,
                }),
        }
    }

    fn check_decide(r: &DecideRequest) -> Result<()> {
        validate_namespace("namespace", &r.namespace)?;
        if r.state.trim().is_empty() {
            return Err(InvalidInput::new("state", "must not be empty").into());
        }
        if r.state.len() > MAX_STATE {
            return Err(InvalidInput::new("state", format!("more than {MAX_STATE} bytes")).into());
        }
        agent_learning_domain::check_no_nul("state", &r.state)?;
        // The caller says what may be done in this state; actions are never taken from
        // whatever Fit stored for the namespace.
        if r.valid_actions.is_empty() {
            return Err(InvalidInput::new(
                "valid_actions",
                "must list the actions allowed in this state",
            )
            .into());
        }
        if r.valid_actions.len() > MAX_ACTIONS {
            return Err(
                InvalidInput::new("valid_actions", format!("more than {MAX_ACTIONS}")).into(),
            );
        }
        if let Some(i) = r.valid_actions.iter().position(|a| a.trim().is_empty()) {
            return Err(
                InvalidInput::new(format!("valid_actions[{i}]"), "must not be empty").into(),
            );
        }
        for (i, a) in r.valid_actions.iter().enumerate() {
            agent_learning_domain::check_no_nul(&format!("valid_actions[{i}]"), a)?;
        }
        if r.history.len() > MAX_HISTORY {
            return Err(
                InvalidInput::new("history", format!("more than {MAX_HISTORY} steps")).into(),
            );
        }
        for (i, h) in r.history.iter().enumerate() {
            for (field, text) in [
                ("state", &h.state),
                ("action", &h.action),
                ("next_state", &h.next_state),
            ] {
                let field = format!("history[{i}].{field}");
                if text.len() > MAX_STATE {
                    return Err(
                        InvalidInput::new(field, format!("more than {MAX_STATE} bytes")).into(),
                    );
                }
                agent_learning_domain::check_no_nul(&field, text)?;
            }
            if h.action.trim().is_empty() {
                return Err(
                    InvalidInput::new(format!("history[{i}].action"), "must not be empty").into(),
                );
            }
        }
        Ok(())
    }

    pub async fn decide(&self, r: DecideRequest) -> Result<Decision> {
        let started = std::time::Instant::now();
        let decided = self.decide_timed(r).await;
        metrics::histogram!(
            "agent_learning_decide_duration_seconds",
            "outcome" => if decided.is_ok() { "ok" } else { "error" },
        )
        .record(started.elapsed().as_secs_f64());
        decided
    }

    async fn decide_timed(&self, r: DecideRequest) -> Result<Decision> {
        Self::check_decide(&r)?;
        let p = match self.versions.get(&r.namespace, r.policy_version) {
            Some(p) => p,
            None => self.versions.read(
                &r.namespace,
                r.policy_version,
                self.get(&r.namespace, r.policy_version).await?,
            ),
        };
        let vector = self.transitions.embed_one(&r.state).await?;
        let exemplars = self
            .transitions
            .nearest(
                &r.namespace,
                vector.clone(),
                p.exemplars_k as usize,
                None,
                None,
            )
            .await?;
        // An action that already left this very state unchanged is not tried again while
        // another remains.
        let (candidates, no_ops) = without_no_ops(&r.state, &r.valid_actions, &r.history);
        let vote = exemplar_vote(
            &exemplars,
            &candidates,
            self.defaults.exemplar_vote_min_similarity,
        );
        // A demonstrated state this close is the same situation: its action is taken without
        // asking the model (which could only be overruled) or reading the playbook (whose
        // bullets then play no part in the decision and get no votes for it).
        let same = SAME_SITUATION.max(self.defaults.exemplar_vote_min_similarity);
        let settled = vote.as_ref().filter(|v| v.best_similarity >= same);
        let playbook = if settled.is_some() {
            agent_learning_api::RenderedContext::default()
        } else {
            self.curator
                .render_context(
                    &r.namespace,
                    &r.state,
                    Some(vector),
                    p.token_budget.max(1),
                    p.min_stage,
                )
                .await
                .map_err(|source| PolicyError::Curator {
                    what: "RenderContext",
                    source,
                })?
        };
        let (action, reasoning, fallback, usage) = if let Some(v) = settled {
            (
                v.action.clone(),
                format!(
                    "[policy] the same situation was demonstrated (similarity {:.2}): its action \
                     {:?} is taken; the model was not asked",
                    v.best_similarity, v.action
                ),
                false,
                TokenUsage::default(),
            )
        } else {
            // Only a decision the model makes needs its prompt.
            let exemplar_text = if exemplars.is_empty() {
                "(none)".to_owned()
            } else {
                exemplars
                    .iter()
                    .map(|e| {
                        format!(
                            "State:\n{}\nAction: {}",
                            clip_bytes(&e.state, EXEMPLAR_STATE),
                            e.action
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n\n")
            };
            let instructions = p.instructions_template.replace("{env}", &r.namespace);
            let prompt = prompts::render(
                &prompts::DECIDE,
                &[
                    ("instructions", &instructions),
                    ("playbook", &playbook.text),
                    ("exemplars", &exemplar_text),
                    ("state", &with_history(&r.state, &r.history, &no_ops)),
                ],
            );
            match self
                .model
                .choose(&[Message::user(prompt)], &candidates)
                .await
            {
                Ok(c) => (
                    c.option,
                    c.reasoning,
                    false,
                    TokenUsage {
                        prompt_tokens: c.usage.prompt_tokens,
                        completion_tokens: c.usage.completion_tokens,
                    },
                ),
                Err(LlmError::InvalidOutput(why) | LlmError::Malformed(why)) => {
                    let nearest = exemplars
                        .iter()
                        .find(|e| candidates.contains(&e.action))
                        .map(|e| e.action.clone())
                        .unwrap_or_else(|| candidates[0].clone());
                    (
                        nearest,
                        format!(
                            "fallback to the nearest exemplar's action: the model's answer was unusable ({why})"
                        ),
                        true,
                        TokenUsage::default(),
                    )
                }
                Err(e) => return Err(PolicyError::Model(e)),
            }
        };
        // The demonstrations' evidence, where it is clear, outweighs a small model's choice.
        let (action, reasoning) = match vote {
            Some(v) if v.action != action => {
                let reasoning = format!(
                    "{reasoning}\n[policy] followed the nearest demonstrations: {} of {} chose \
                     {:?} (nearest similarity {:.2}); the model chose {action:?}",
                    v.votes,
                    exemplars.len(),
                    v.action,
                    v.best_similarity
                );
                (v.action, reasoning)
            }
            _ => (action, reasoning),
        };
        let decision = Decision {
            decision_id: Uuid::new_v4().to_string(),
            action,
            reasoning,
            bullet_ids: playbook.bullet_ids,
            policy_version: p.version,
            exemplar_ids: exemplars.iter().map(|e| e.id.to_string()).collect(),
            fallback,
            usage,
        };
        self.decisions
            .write(DecisionRecord {
                id: decision.decision_id.clone(),
                namespace: r.namespace,
                policy_version: p.version,
                state: r.state,
                action: decision.action.clone(),
                reasoning: decision.reasoning.clone(),
                bullet_ids: decision.bullet_ids.clone(),
                exemplar_ids: decision.exemplar_ids.clone(),
                fallback,
                created_at: Utc::now(),
            })
            .await?;
        Ok(decision)
    }

    /// Credits (or blames) the bullets a decision used; once per decision.
    pub async fn feedback(
        &self,
        ns: &str,
        decision_id: &str,
        helpful: bool,
    ) -> Result<Vec<String>> {
        validate_namespace("namespace", ns)?;
        if decision_id.trim().is_empty() {
            return Err(InvalidInput::new("decision_id", "must not be empty").into());
        }
        let d = self
            .store
            .decision(decision_id)
            .await?
            .filter(|d| d.namespace == ns)
            .ok_or_else(|| PolicyError::NoSuchDecision(decision_id.to_owned()))?;
        if d.bullet_ids.is_empty() {
            return Ok(d.bullet_ids);
        }
        let (helpful, harmful) = if helpful { (1, 0) } else { (0, 1) };
        let items = d
            .bullet_ids
            .iter()
            .map(|b| FeedbackItem {
                bullet_id: b.clone(),
                helpful,
                harmful,
            })
            .collect();
        // One vote per decision, however often the caller retries.
        self.curator
            .record_feedback(ns, &format!("decision:{}", d.id), items)
            .await
            .map_err(|source| PolicyError::Curator {
                what: "RecordFeedback",
                source,
            })?;
        Ok(d.bullet_ids)
    }
}

/// The valid actions without those the history shows leaving `state` unchanged (all of them
/// when every one did), and the ones left out.
fn without_no_ops(
    state: &str,
    valid: &[String],
    history: &[agent_learning_api::PastStep],
) -> (Vec<String>, Vec<String>) {
    let state = state.trim();
    let (no_ops, rest): (Vec<String>, Vec<String>) = valid.iter().cloned().partition(|a| {
        history
            .iter()
            .any(|h| h.action == *a && h.state.trim() == state && h.next_state.trim() == state)
    });
    if rest.is_empty() {
        (valid.to_vec(), Vec::new())
    } else {
        (rest, no_ops)
    }
}

/// The state as the model sees it: with the episode's recent actions, and the actions that
/// changed nothing here, when there are any.
fn with_history(
    state: &str,
    history: &[agent_learning_api::PastStep],
    no_ops: &[String],
) -> String {
    if history.is_empty() {
        return state.to_owned();
    }
    let mut text = format!("{state}\n\nThis episode's last actions, oldest first:");
    for h in history {
        let effect = if h.state.trim() == h.next_state.trim() {
            "changed nothing"
        } else {
            "changed the state"
        };
        text.push_str(&format!("\n- {} ({effect})", h.action));
    }
    if !no_ops.is_empty() {
        text.push_str(&format!(
            "\nAlready tried here without effect, so not offered: {}",
            no_ops.join(", ")
        ));
    }
    text
}

/// What the exemplars say when they are clear about it.
#[derive(Debug, PartialEq)]
struct Vote {
    action: String,
    votes: usize,
    best_similarity: f32,
}

/// A demonstrated state this similar is the same situation: its action decides alone.
const SAME_SITUATION: f32 = 0.95;

/// What the exemplars decide, when they are clear: the action of a demonstrated state at least
/// [`SAME_SITUATION`] similar to this one; else the valid action with more than half of the
/// exemplars' similarity-weighted votes, when the nearest is at least `min_similarity`
/// similar. `None`: the model decides.
fn exemplar_vote(
    exemplars: &[agent_learning_transitions::Found],
    candidates: &[String],
    min_similarity: f32,
) -> Option<Vote> {
    let valid: Vec<&agent_learning_transitions::Found> = exemplars
        .iter()
        .filter(|e| candidates.contains(&e.action))
        .collect();
    let nearest = valid
        .iter()
        .max_by(|x, y| x.similarity.total_cmp(&y.similarity))?;
    let best = nearest.similarity;
    if best < min_similarity {
        return None;
    }
    if best >= SAME_SITUATION.max(min_similarity) {
        return Some(Vote {
            action: nearest.action.clone(),
            votes: valid.iter().filter(|e| e.action == nearest.action).count(),
            best_similarity: best,
        });
    }
    let total: f32 = valid.iter().map(|e| e.similarity.max(0.0)).sum();
    let mut weights: Vec<(&str, f32, usize)> = Vec::new();
    for e in &valid {
        match weights.iter_mut().find(|(a, _, _)| *a == e.action) {
            Some(w) => {
                w.1 += e.similarity.max(0.0);
                w.2 += 1;
            }
            None => weights.push((&e.action, e.similarity.max(0.0), 1)),
        }
    }
    let (action, weight, votes) = weights.into_iter().max_by(|x, y| x.1.total_cmp(&y.1))?;
    (total > 0.0 && weight / total > 0.5).then(|| Vote {
        action: action.to_owned(),
        votes,
        best_similarity: best,
    })
}

#[async_trait]
impl PolicyApi for Policy {
    async fn compile(&self, req: CompileRequest) -> Result<PolicyVersion, ApiError> {
        Ok(Policy::compile(self, req).await?)
    }

    async fn decide(&self, req: DecideRequest) -> Result<Decision, ApiError> {
        Ok(Policy::decide(self, req).await?)
    }

    async fn feedback(
        &self,
        ns: &str,
        decision_id: &str,
        helpful: bool,
    ) -> Result<Vec<String>, ApiError> {
        Ok(Policy::feedback(self, ns, decision_id, helpful).await?)
    }

    async fn get_policy(&self, ns: &str, version: Option<i64>) -> Result<PolicyVersion, ApiError> {
        Ok(self.get(ns, version).await?)
    }
}

impl Service for Policy {
    const NAME: &'static str = "policy";

    async fn build(ctx: &Context) -> Result<Arc<Self>, RuntimeError> {
        let s = ctx.settings();
        let store = ctx.store().await?;
        let transitions = Transitions::new(
            store.clone(),
            ctx.index().await?,
            ctx.embedder().await?,
            &s.vector.collection_prefix,
            s.vector.optimize_after_writes,
        );
        transitions.start().await.what("transition index")?;
        Ok(Arc::new(Self::new(
            store,
            transitions,
            ctx.model().await?,
            ctx.peers().curator.clone(),
            s.policy.clone(),
        )))
    }

    async fn mount(
        self: &Arc<Self>,
        server: &mut GrpcServer,
        _: &Context,
    ) -> Result<(), RuntimeError> {
        grpc::mount(self.clone(), server);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Vote, exemplar_vote};
    use agent_learning_transitions::Found;

    fn ex(action: &str, similarity: f32) -> Found {
        Found {
            id: uuid::Uuid::new_v4(),
            state: "s".into(),
            action: action.into(),
            next_state: "n".into(),
            done: false,
            similarity,
        }
    }

    #[test]
    fn the_exemplars_decide_only_when_clear_and_close() {
        let valid = ["brake".to_owned(), "keep_lane".to_owned()];
        // Two of three close exemplars agree: they decide.
        assert_eq!(
            exemplar_vote(
                &[ex("brake", 0.95), ex("keep_lane", 0.9), ex("brake", 0.85)],
                &valid,
                0.8
            ),
            Some(Vote {
                action: "brake".into(),
                votes: 2,
                best_similarity: 0.95
            })
        );
        // Too far from the state: the model decides.
        assert_eq!(
            exemplar_vote(&[ex("brake", 0.6), ex("brake", 0.5)], &valid, 0.8),
            None
        );
        // No majority of the weight.
        assert_eq!(
            exemplar_vote(&[ex("brake", 0.9), ex("keep_lane", 0.9)], &valid, 0.8),
            None
        );
        // The same situation demonstrated: its action, whatever the others say.
        assert_eq!(
            exemplar_vote(
                &[ex("keep_lane", 0.97), ex("brake", 0.93), ex("brake", 0.92)],
                &valid,
                0.8
            )
            .map(|v| v.action),
            Some("keep_lane".into())
        );
        // Actions the caller does not allow never vote.
        assert_eq!(
            exemplar_vote(
                &[
                    ex("accelerate", 0.99),
                    ex("accelerate", 0.98),
                    ex("keep_lane", 0.9)
                ],
                &valid,
                0.8
            )
            .map(|v| v.action),
            Some("keep_lane".into())
        );
        // Above 1: never.
        assert_eq!(exemplar_vote(&[ex("brake", 0.99)], &valid, 1.5), None);
    }
}
