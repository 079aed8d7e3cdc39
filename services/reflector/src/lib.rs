//! The reflector service. A reflection compares the expert's action at a branch point with the
//! alternatives explored from the same state, in four sections (Situation, Evaluation,
//! Alternatives, Conclusion), checked for structure before it is stored and published to the
//! reflections stream. Reflectors consume the rollouts stream as one consumer group, so any
//! number of replicas share the work; a reflection's id is its branch point's id, so an entry
//! delivered twice (a crashed replica's, claimed by another) is reflected once.

use std::sync::Arc;
use std::time::Duration;

use agent_learning_config::Settings;
use agent_learning_domain::{clip_bytes, validate_namespace};
use agent_learning_llm::{ChatModel, LlmError, Message, prompts};
use agent_learning_proto::service_names;
use agent_learning_proto::v1 as pb;
use agent_learning_proto::v1::reflector_server::{Reflector as ReflectorRpc, ReflectorServer};
use agent_learning_queue::{ConsumerOptions, Queue, consume, streams};
use agent_learning_runtime::ServiceError;
use agent_learning_server::GrpcServer;
use agent_learning_store::Store;
use agent_learning_store::entity::reflection;
use chrono::Utc;
use prost::Message as _;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveModelTrait, EntityTrait, Set};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub const SECTIONS: [&str; 4] = ["Situation", "Evaluation", "Alternatives", "Conclusion"];
const DIRECT_NS: Uuid = Uuid::from_u128(0x1d4b_77e0_3a9f_4e21_b5c8_0f6e_2a3d_9c17);
/// Longest state shown to the model, in bytes.
const STATE_IN_PROMPT: usize = 1500;
const MAX_ALTERNATIVES: usize = 32;

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

fn section(sections: &[(String, String)], name: &str) -> String {
    sections
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, t)| t.trim().to_owned())
        .unwrap_or_default()
}

fn to_pb(m: &reflection::Model) -> pb::Reflection {
    pb::Reflection {
        id: m.id.clone(),
        namespace: m.namespace.clone(),
        situation: m.situation.clone(),
        evaluation: m.evaluation.clone(),
        alternatives: m.alternatives.clone(),
        conclusion: m.conclusion.clone(),
        valid: m.valid,
        rollout_ids: serde_json::from_str(&m.rollout_ids).unwrap_or_default(),
        usage: Some(pb::TokenUsage {
            prompt_tokens: m.prompt_tokens.max(0) as u64,
            completion_tokens: m.completion_tokens.max(0) as u64,
        }),
        run_id: m.run_id.clone(),
        problem: m.problem.clone(),
    }
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
    pub async fn reflect_group(
        &self,
        g: &pb::RolloutGroup,
    ) -> Result<pb::Reflection, ServiceError> {
        validate_namespace("namespace", &g.namespace)?;
        if g.id.trim().is_empty() {
            return Err(ServiceError::invalid("id", "must not be empty"));
        }
        if let Some(existing) = reflection::Entity::find_by_id(g.id.clone())
            .one(self.store.connection())
            .await?
        {
            let r = to_pb(&existing);
            if !existing.published {
                self.publish(&r).await?;
            }
            return Ok(r);
        }
        let r = self.write(g).await?;
        let model = reflection::ActiveModel {
            id: Set(r.id.clone()),
            namespace: Set(r.namespace.clone()),
            run_id: Set(r.run_id.clone()),
            situation: Set(r.situation.clone()),
            evaluation: Set(r.evaluation.clone()),
            alternatives: Set(r.alternatives.clone()),
            conclusion: Set(r.conclusion.clone()),
            valid: Set(r.valid),
            problem: Set(r.problem.clone()),
            rollout_ids: Set(serde_json::to_string(&r.rollout_ids).unwrap_or_else(|_| "[]".into())),
            prompt_tokens: Set(r.usage.map(|u| u.prompt_tokens as i64).unwrap_or(0)),
            completion_tokens: Set(r.usage.map(|u| u.completion_tokens as i64).unwrap_or(0)),
            published: Set(false),
            created_at: Set(Utc::now()),
        };
        // Two replicas may have raced on the same entry: the first insert wins, the second
        // changes nothing.
        reflection::Entity::insert(model)
            .on_conflict(
                OnConflict::column(reflection::Column::Id)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(self.store.connection())
            .await?;
        let stored = reflection::Entity::find_by_id(r.id.clone())
            .one(self.store.connection())
            .await?
            .ok_or_else(|| ServiceError::internal("reflection vanished after insert"))?;
        let r = to_pb(&stored);
        if !stored.published {
            self.publish(&r).await?;
        }
        Ok(r)
    }

    async fn publish(&self, r: &pb::Reflection) -> Result<(), ServiceError> {
        if r.valid {
            self.queue
                .publish(streams::REFLECTIONS, &r.id, &r.encode_to_vec())
                .await?;
        }
        reflection::ActiveModel {
            id: Set(r.id.clone()),
            published: Set(true),
            ..Default::default()
        }
        .update(self.store.connection())
        .await?;
        Ok(())
    }

    /// Asks the model; a model whose output stays unusable gives an invalid reflection (kept,
    /// counted, never curated); a model that cannot be reached is an error (retried).
    async fn write(&self, g: &pb::RolloutGroup) -> Result<pb::Reflection, ServiceError> {
        let alternatives: Vec<&pb::Rollout> = g
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
                    let how = if r.source == pb::RolloutSource::WorldModel as i32 {
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
        let mut r = pb::Reflection {
            id: g.id.clone(),
            namespace: g.namespace.clone(),
            run_id: g.run_id.clone(),
            rollout_ids,
            ..Default::default()
        };
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
                r.usage = Some(pb::TokenUsage {
                    prompt_tokens: s.usage.prompt_tokens,
                    completion_tokens: s.usage.completion_tokens,
                });
                let instructions = format!("{}\n{}", prompts::REFLECT.text, prompts::SECTIONS.text);
                match check_structure(&s.sections, self.max_chars)
                    .and_then(|()| check_content(&s.sections, &instructions))
                {
                    Ok(()) => r.valid = true,
                    Err(problem) => r.problem = problem,
                }
            }
            Err(LlmError::InvalidOutput(p) | LlmError::Malformed(p)) => {
                r.problem = format!("the model's answer was unusable: {p}");
            }
            Err(LlmError::InvalidRequest(p)) => {
                r.problem = format!("the branch point could not be put to the model: {p}");
            }
            Err(e) => return Err(ServiceError::unavailable(e)),
        }
        if !r.valid {
            tracing::warn!(reflection = %r.id, problem = %r.problem, "invalid reflection");
        }
        Ok(r)
    }

    /// The direct Reflect RPC: the same reflection path, keyed by the request's content.
    pub async fn reflect(&self, req: pb::ReflectRequest) -> Result<pb::Reflection, ServiceError> {
        validate_namespace("namespace", &req.namespace)?;
        if req.state.trim().is_empty() {
            return Err(ServiceError::invalid("state", "must not be empty"));
        }
        if req.expert_action.trim().is_empty() {
            return Err(ServiceError::invalid("expert_action", "must not be empty"));
        }
        if req.alternatives.len() > MAX_ALTERNATIVES {
            return Err(ServiceError::invalid(
                "alternatives",
                format!("at most {MAX_ALTERNATIVES}"),
            ));
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
        let g = pb::RolloutGroup {
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

    /// Runs `n` consumers of the rollouts stream until `shutdown`.
    pub fn spawn_consumers(
        self: &Arc<Self>,
        n: u32,
        consumer: &str,
        block: Duration,
        shutdown: CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..n)
            .map(|i| {
                let me = self.clone();
                let opts = ConsumerOptions {
                    stream: streams::ROLLOUTS.into(),
                    group: streams::REFLECTORS.into(),
                    consumer: format!("{consumer}-{i}"),
                    batch: 1,
                    block,
                };
                let queue = self.queue.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    consume(queue, opts, shutdown, move |d| {
                        let me = me.clone();
                        async move {
                            let g = match pb::RolloutGroup::decode(d.payload.as_slice()) {
                                Ok(g) => g,
                                Err(e) => {
                                    tracing::warn!(key = %d.key, error = %e, "rollouts entry is not a RolloutGroup; skipped");
                                    return Ok(());
                                }
                            };
                            match me.reflect_group(&g).await {
                                Ok(r) => {
                                    tracing::info!(reflection = %r.id, valid = r.valid, deliveries = d.deliveries, "reflected");
                                    Ok(())
                                }
                                Err(ServiceError::Invalid(e)) => {
                                    tracing::warn!(key = %d.key, error = %e, "rollout group rejected; skipped");
                                    Ok(())
                                }
                                Err(e) => Err(anyhow::anyhow!(e)),
                            }
                        }
                    })
                    .await
                })
            })
            .collect()
    }

    pub fn mount(self: &Arc<Self>, server: &mut GrpcServer) {
        let max = server.limits().max_message_bytes;
        server.routes_mut().add_service(
            ReflectorServer::new(ReflectorService(self.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        );
        server.track(service_names::REFLECTOR);
    }
}

pub struct ReflectorService(pub Arc<Reflector>);

#[tonic::async_trait]
impl ReflectorRpc for ReflectorService {
    async fn reflect(
        &self,
        req: Request<pb::ReflectRequest>,
    ) -> Result<Response<pb::Reflection>, Status> {
        Ok(Response::new(self.0.reflect(req.into_inner()).await?))
    }
}

/// Serves the reflector alone (the standalone `reflector` binary): the Reflect RPC and
/// `pipeline.reflectors` consumers of the rollouts stream.
pub async fn serve(
    settings: Settings,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = agent_learning_runtime::open_store(&settings).await?;
    let queue = agent_learning_runtime::open_queue(&settings, &store).await?;
    let model = agent_learning_llm::open_chat_model(&settings)?;
    let reflector = Arc::new(Reflector::new(
        store.clone(),
        queue,
        model,
        settings.pipeline.reflection_max_chars,
    ));
    let mut server = GrpcServer::new(agent_learning_runtime::limits(&settings))?;
    reflector.mount(&mut server);
    let stop = CancellationToken::new();
    let workers = reflector.spawn_consumers(
        settings.pipeline.reflectors.max(1),
        &agent_learning_runtime::consumer_name("reflector"),
        Duration::from_millis(settings.queue.block_ms),
        stop.clone(),
    );
    agent_learning_runtime::serving_when_store_answers(&server, store);
    let served = agent_learning_runtime::serve_until(server, listener, shutdown, stop).await;
    for w in workers {
        let _ = w.await;
    }
    served
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
    }
}
