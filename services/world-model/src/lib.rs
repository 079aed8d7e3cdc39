//! The world-model service. `Fit` stores expert transitions in the record and the vector
//! index; `Predict` retrieves the nearest transitions taken with the same action as examples
//! and asks the language model for the next state (a state seen before with that action is
//! answered from the record, without the model); `Evaluate` measures predictions against
//! held-out transitions by exact match and embedding similarity.

pub mod transitions;

use std::sync::Arc;

use agent_learning_config::Settings;
use agent_learning_domain::validate_namespace;
use agent_learning_embed::cosine;
use agent_learning_llm::{ChatModel, ChatParams, Message, Usage, prompts};
use agent_learning_proto::service_names;
use agent_learning_proto::v1 as pb;
use agent_learning_proto::v1::world_model_server::{WorldModel as WorldModelRpc, WorldModelServer};
use agent_learning_runtime::{Backends, ServiceError};
use agent_learning_server::GrpcServer;
use tonic::{Request, Response, Status};

pub use transitions::{Found, NewTransition, Transitions, transition_id};

/// Similarity at which a stored state counts as the same state.
const SAME_STATE: f32 = 0.9995;
const MAX_TRANSITIONS: usize = 100_000;
const MAX_TEXT: usize = 64 * 1024;
const MAX_K: u32 = 50;

#[derive(Debug, Clone, PartialEq)]
pub struct Predicted {
    pub next_state: String,
    pub confidence: f32,
    pub neighbours: Vec<Found>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Accuracy {
    pub evaluated: u64,
    pub exact_match: f64,
    pub mean_similarity: f64,
}

pub struct WorldModel {
    transitions: Transitions,
    model: Arc<dyn ChatModel>,
    default_k: u32,
}

fn check_text(field: &str, s: &str) -> Result<(), ServiceError> {
    if s.trim().is_empty() {
        return Err(ServiceError::invalid(field, "must not be empty"));
    }
    if s.len() > MAX_TEXT {
        return Err(ServiceError::invalid(
            field,
            format!("{} bytes is more than {MAX_TEXT}", s.len()),
        ));
    }
    Ok(())
}

fn check_transitions(
    field: &str,
    ts: &[pb::Transition],
) -> Result<Vec<NewTransition>, ServiceError> {
    if ts.is_empty() {
        return Err(ServiceError::invalid(field, "must not be empty"));
    }
    if ts.len() > MAX_TRANSITIONS {
        return Err(ServiceError::invalid(
            field,
            format!("{} transitions is more than {MAX_TRANSITIONS}", ts.len()),
        ));
    }
    ts.iter()
        .enumerate()
        .map(|(i, t)| {
            check_text(&format!("{field}[{i}].state"), &t.state)?;
            check_text(&format!("{field}[{i}].action"), &t.action)?;
            check_text(&format!("{field}[{i}].next_state"), &t.next_state)?;
            Ok(NewTransition {
                state: t.state.clone(),
                action: t.action.clone(),
                next_state: t.next_state.clone(),
                done: t.done,
            })
        })
        .collect()
}

fn normalize(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl WorldModel {
    pub fn new(transitions: Transitions, model: Arc<dyn ChatModel>, default_k: u32) -> Self {
        Self {
            transitions,
            model,
            default_k,
        }
    }

    pub async fn open(
        settings: &Settings,
        backends: &Backends,
        model: Arc<dyn ChatModel>,
    ) -> anyhow::Result<Arc<Self>> {
        let t = Transitions::open(settings, backends)
            .await
            .map_err(|e| anyhow::anyhow!("world model start: {e}"))?;
        Ok(Arc::new(Self::new(
            t,
            model,
            settings.pipeline.world_model_k,
        )))
    }

    pub fn transitions(&self) -> &Transitions {
        &self.transitions
    }

    pub async fn fit(
        &self,
        ns: &str,
        ts: &[pb::Transition],
        source: &str,
    ) -> Result<(u64, u64), ServiceError> {
        validate_namespace("namespace", ns)?;
        let items = check_transitions("transitions", ts)?;
        let source = if source.trim().is_empty() {
            "expert"
        } else {
            source
        };
        self.transitions.add(ns, &items, source).await
    }

    pub async fn predict(
        &self,
        ns: &str,
        state: &str,
        action: &str,
        k: u32,
    ) -> Result<Predicted, ServiceError> {
        validate_namespace("namespace", ns)?;
        check_text("state", state)?;
        check_text("action", action)?;
        if k > MAX_K {
            return Err(ServiceError::invalid(
                "k",
                format!("must be at most {MAX_K}"),
            ));
        }
        let k = if k == 0 { self.default_k } else { k } as usize;
        let vector = self
            .transitions
            .embedder()
            .embed(vec![state.to_owned()])
            .await?
            .pop()
            .ok_or_else(|| ServiceError::internal("embedder returned no vector"))?;
        let mut neighbours = self
            .transitions
            .nearest(ns, vector.clone(), k, Some(action), None)
            .await?;
        if neighbours.is_empty() {
            // Never seen this action: show how the environment reacts to others.
            neighbours = self.transitions.nearest(ns, vector, k, None, None).await?;
        }
        let Some(top) = neighbours.first() else {
            return Err(ServiceError::FailedPrecondition(format!(
                "namespace {ns} has no transitions: Fit the world model first"
            )));
        };
        if top.action == action
            && (top.similarity >= SAME_STATE || normalize(&top.state) == normalize(state))
        {
            return Ok(Predicted {
                next_state: top.next_state.clone(),
                confidence: 1.0,
                usage: Usage::default(),
                neighbours,
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
            .map_err(ServiceError::unavailable)?;
        let next_state = completion.text.trim().to_owned();
        if next_state.is_empty() {
            return Err(ServiceError::Unavailable(
                "the model predicted an empty state".into(),
            ));
        }
        Ok(Predicted {
            next_state,
            confidence,
            neighbours,
            usage: completion.usage,
        })
    }

    pub async fn evaluate(
        &self,
        ns: &str,
        held_out: &[pb::Transition],
    ) -> Result<Accuracy, ServiceError> {
        validate_namespace("namespace", ns)?;
        let items = check_transitions("held_out", held_out)?;
        let mut exact = 0u64;
        let mut sims = 0f64;
        for t in &items {
            let p = self.predict(ns, &t.state, &t.action, 0).await?;
            if normalize(&p.next_state) == normalize(&t.next_state) {
                exact += 1;
            }
            let v = self
                .transitions
                .embedder()
                .embed(vec![p.next_state, t.next_state.clone()])
                .await?;
            sims += f64::from(cosine(&v[0], &v[1]));
        }
        let n = items.len() as f64;
        Ok(Accuracy {
            evaluated: items.len() as u64,
            exact_match: exact as f64 / n,
            mean_similarity: sims / n,
        })
    }

    pub fn mount(self: &Arc<Self>, server: &mut GrpcServer) {
        let max = server.limits().max_message_bytes;
        server.routes_mut().add_service(
            WorldModelServer::new(WorldModelService(self.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        );
        server.track(service_names::WORLD_MODEL);
    }
}

fn usage(u: Usage) -> pb::TokenUsage {
    pb::TokenUsage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
    }
}

pub struct WorldModelService(pub Arc<WorldModel>);

#[tonic::async_trait]
impl WorldModelRpc for WorldModelService {
    async fn fit(&self, req: Request<pb::FitRequest>) -> Result<Response<pb::FitResponse>, Status> {
        let r = req.into_inner();
        let (stored, duplicates) = self.0.fit(&r.namespace, &r.transitions, &r.source).await?;
        Ok(Response::new(pb::FitResponse { stored, duplicates }))
    }

    async fn predict(
        &self,
        req: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::Prediction>, Status> {
        let r = req.into_inner();
        let p = self
            .0
            .predict(&r.namespace, &r.state, &r.action, r.k)
            .await?;
        Ok(Response::new(pb::Prediction {
            next_state: p.next_state,
            confidence: p.confidence,
            neighbours: p
                .neighbours
                .into_iter()
                .map(|n| pb::Neighbour {
                    transition: Some(pb::Transition {
                        state: n.state,
                        action: n.action,
                        next_state: n.next_state,
                        done: n.done,
                    }),
                    similarity: n.similarity,
                })
                .collect(),
            usage: Some(usage(p.usage)),
        }))
    }

    async fn evaluate(
        &self,
        req: Request<pb::EvaluateRequest>,
    ) -> Result<Response<pb::EvaluateResponse>, Status> {
        let r = req.into_inner();
        let a = self.0.evaluate(&r.namespace, &r.held_out).await?;
        Ok(Response::new(pb::EvaluateResponse {
            evaluated: a.evaluated,
            exact_match: a.exact_match,
            mean_similarity: a.mean_similarity,
        }))
    }
}

/// Serves the world model alone (the standalone `world-model` binary).
pub async fn serve(
    settings: Settings,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let backends = agent_learning_runtime::open_backends(&settings).await?;
    let model = agent_learning_llm::open_chat_model(&settings)?;
    let wm = WorldModel::open(&settings, &backends, model).await?;
    let mut server = GrpcServer::new(agent_learning_runtime::limits(&settings))?;
    wm.mount(&mut server);
    agent_learning_runtime::serving_when_store_answers(&server, backends.store.clone());
    agent_learning_runtime::serve_until(server, listener, shutdown, Default::default()).await
}
