//! The world-model service. `Fit` stores expert transitions in the record and the vector
//! index; `Predict` retrieves the nearest transitions taken with the same action as examples
//! and asks the language model for the next state (a state seen before with that action is
//! answered from the record, without the model); `Evaluate` measures predictions against
//! held-out transitions by exact match and embedding similarity.

pub mod grpc;

use std::sync::Arc;

use agent_learning_api::{Accuracy, ApiError, FitReport, Neighbour, Prediction, WorldModelApi};
use agent_learning_domain::{InvalidInput, TokenUsage, Transition, validate_namespace};
use agent_learning_embed::cosine;
use agent_learning_llm::{ChatModel, ChatParams, LlmError, Message, prompts};
use agent_learning_runtime::{Context, RuntimeError, Service, WithWhat as _};
use agent_learning_server::GrpcServer;
use agent_learning_transitions::{Found, Transitions, TransitionsError};
use async_trait::async_trait;

/// Similarity at which a stored state counts as the same state.
const SAME_STATE: f32 = 0.9995;
const MAX_TRANSITIONS: usize = 100_000;
const MAX_TEXT: usize = 64 * 1024;
const MAX_K: u32 = 50;

#[derive(Debug, thiserror::Error)]
pub enum WorldModelError {
    #[error("invalid argument: {0}")]
    Invalid(#[from] InvalidInput),
    #[error("namespace {0} has no transitions: Fit the world model first")]
    NoTransitions(String),
    #[error(transparent)]
    Transitions(#[from] TransitionsError),
    #[error("model: {0}")]
    Model(#[source] LlmError),
    #[error("the model predicted an empty state")]
    EmptyPrediction,
}

impl From<WorldModelError> for ApiError {
    fn from(e: WorldModelError) -> Self {
        match e {
            WorldModelError::Invalid(i) => ApiError::Invalid(i),
            WorldModelError::NoTransitions(_) => ApiError::FailedPrecondition(e.to_string()),
            WorldModelError::Transitions(TransitionsError::Store(s)) => {
                ApiError::internal("world model record", s)
            }
            WorldModelError::Transitions(t) => ApiError::unavailable("world model index", t),
            WorldModelError::Model(m) => ApiError::unavailable("world model", m),
            WorldModelError::EmptyPrediction => ApiError::Unavailable {
                message: e.to_string(),
                source: None,
            },
        }
    }
}

type Result<T, E = WorldModelError> = std::result::Result<T, E>;

pub struct WorldModel {
    transitions: Transitions,
    model: Arc<dyn ChatModel>,
    default_k: u32,
}

fn check_text(field: &str, s: &str) -> Result<()> {
    if s.trim().is_empty() {
        return Err(InvalidInput::new(field, "must not be empty").into());
    }
    agent_learning_domain::check_no_nul(field, s)?;
    if s.len() > MAX_TEXT {
        return Err(
            InvalidInput::new(field, format!("{} bytes is more than {MAX_TEXT}", s.len())).into(),
        );
    }
    Ok(())
}

fn check_transitions(field: &str, ts: &[Transition]) -> Result<()> {
    if ts.is_empty() {
        return Err(InvalidInput::new(field, "must not be empty").into());
    }
    if ts.len() > MAX_TRANSITIONS {
        return Err(InvalidInput::new(
            field,
            format!("{} transitions is more than {MAX_TRANSITIONS}", ts.len()),
        )
        .into());
    }
    for (i, t) in ts.iter().enumerate() {
        check_text(&format!("{field}[{i}].state"), &t.state)?;
        check_text(&format!("{field}[{i}].action"), &t.action)?;
        check_text(&format!("{field}[{i}].next_state"), &t.next_state)?;
    }
    Ok(())
}

fn normalize(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn neighbour(f: Found) -> Neighbour {
    Neighbour {
        transition: Transition {
            state: f.state,
            action: f.action,
            next_state: f.next_state,
            done: f.done,
        },
        similarity: f.similarity,
    }
}

impl WorldModel {
    pub fn new(transitions: Transitions, model: Arc<dyn ChatModel>, default_k: u32) -> Self {
        Self {
            transitions,
            model,
            default_k,
        }
    }

    pub async fn fit(&self, ns: &str, ts: &[Transition], source: &str) -> Result<FitReport> {
        validate_namespace("namespace", ns)?;
        check_transitions("transitions", ts)?;
        let source = if source.trim().is_empty() {
            "expert"
        } else {
            source
        };
        let (stored, duplicates) = self.transitions.add(ns, ts, source).await?;
        Ok(FitReport { stored, duplicates })
    }

    pub async fn predict(&self, ns: &str, state: &str, action: &str, k: u32) -> Result<Prediction> {
        validate_namespace("namespace", ns)?;
        check_text("state", state)?;
        check_text("action", action)?;
        if k > MAX_K {
            return Err(InvalidInput::new("k", format!("must be at most {MAX_K}")).into());
        }
        let k = if k == 0 { self.default_k } else { k } as usize;
        let vector = self.transitions.embed_one(state).await?;
        let mut neighbours = self
            .transitions
            .nearest(ns, vector.clone(), k, Some(action), None)
            .await?;
        if neighbours.is_empty() {
            // Never seen this action: show how the environment reacts to others.
            neighbours = self.transitions.nearest(ns, vector, k, None, None).await?;
        }
        let Some(top) = neighbours.first() else {
            return Err(WorldModelError::NoTransitions(ns.to_owned()));
        };
        if top.action == action
            && (top.similarity >= SAME_STATE || normalize(&top.state) == normalize(state))
        {
            return Ok(Prediction {
                next_state: top.next_state.clone(),
                confidence: 1.0,
                usage: TokenUsage::default(),
                neighbours: neighbours.into_iter().map(neighbour).collect(),
            });
        }
        let same_action: Vec<&Found> = neighbours.iter().filter(|n| n.action == action).collect();
        let confidence = same_action
            .first()
            .map(|n| n.similarity.clamp(0.0, 1.0))
            .unwrap_or(0.0)
            * 0.9;
        let mut messages = vec![Message::system(prompts::render(
            &prompts::PREDICT,
            &[("env", ns)],
        ))];
        for n in neighbours.iter().rev() {
            messages.push(Message::user(format!(
                "State:\n{}\nAction: {}",
                n.state, n.action
            )));
            messages.push(Message::assistant(n.next_state.clone()));
        }
        messages.push(Message::user(format!("State:\n{state}\nAction: {action}")));
        let longest = neighbours
            .iter()
            .map(|n| n.next_state.len())
            .max()
            .unwrap_or(200);
        let params = ChatParams {
            max_tokens: ((longest / 3) as u32 + 16).clamp(32, 512),
            ..ChatParams::default()
        };
        let completion = self
            .model
            .chat(&messages, &params)
            .await
            .map_err(WorldModelError::Model)?;
        let next_state = completion.text.trim().to_owned();
        if next_state.is_empty() {
            return Err(WorldModelError::EmptyPrediction);
        }
        Ok(Prediction {
            next_state,
            confidence,
            neighbours: neighbours.into_iter().map(neighbour).collect(),
            usage: TokenUsage {
                prompt_tokens: completion.usage.prompt_tokens,
                completion_tokens: completion.usage.completion_tokens,
            },
        })
    }

    pub async fn evaluate(&self, ns: &str, held_out: &[Transition]) -> Result<Accuracy> {
        validate_namespace("namespace", ns)?;
        check_transitions("held_out", held_out)?;
        let mut exact = 0u64;
        let mut sims = 0f64;
        for t in held_out {
            let p = self.predict(ns, &t.state, &t.action, 0).await?;
            if normalize(&p.next_state) == normalize(&t.next_state) {
                exact += 1;
            }
            let v = self
                .transitions
                .embedder()
                .embed(vec![p.next_state, t.next_state.clone()])
                .await
                .map_err(TransitionsError::from)?;
            sims += f64::from(cosine(&v[0], &v[1]));
        }
        let n = held_out.len() as f64;
        Ok(Accuracy {
            evaluated: held_out.len() as u64,
            exact_match: exact as f64 / n,
            mean_similarity: sims / n,
        })
    }
}

#[async_trait]
impl WorldModelApi for WorldModel {
    async fn fit(
        &self,
        ns: &str,
        transitions: Vec<Transition>,
        source: &str,
    ) -> Result<FitReport, ApiError> {
        Ok(WorldModel::fit(self, ns, &transitions, source).await?)
    }

    async fn predict(
        &self,
        ns: &str,
        state: &str,
        action: &str,
        k: u32,
    ) -> Result<Prediction, ApiError> {
        Ok(WorldModel::predict(self, ns, state, action, k).await?)
    }

    async fn evaluate(&self, ns: &str, held_out: Vec<Transition>) -> Result<Accuracy, ApiError> {
        Ok(WorldModel::evaluate(self, ns, &held_out).await?)
    }
}

impl Service for WorldModel {
    const NAME: &'static str = "world-model";

    async fn build(ctx: &Context) -> Result<Arc<Self>, RuntimeError> {
        let s = ctx.settings();
        let transitions = Transitions::new(
            ctx.store().await?,
            ctx.index().await?,
            ctx.embedder().await?,
            &s.vector.collection_prefix,
            s.vector.optimize_after_writes,
        );
        transitions.start().await.what("transition index")?;
        Ok(Arc::new(Self::new(
            transitions,
            ctx.model().await?,
            s.pipeline.world_model_k,
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
