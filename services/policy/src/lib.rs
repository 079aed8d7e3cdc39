//! The policy service. `Compile` stores a versioned policy: the instructions template, how many
//! expert exemplars to show (the nearest demo steps by state embedding), the lowest playbook
//! stage it uses and the playbook's token budget. `Decide` assembles the prompt from those
//! (the playbook through the Curator's RenderContext) and returns an action that is always one
//! of `valid_actions`: the local model is constrained to them; a remote model's answer is
//! repaired once, then the nearest exemplar's action is used and marked as a fallback.

use std::collections::BTreeSet;
use std::sync::Arc;

use agent_learning_config::{PolicySettings, Settings};
use agent_learning_domain::{clip_bytes, validate_namespace};
use agent_learning_llm::{ChatModel, LlmError, Message, prompts};
use agent_learning_proto::service_names;
use agent_learning_proto::v1 as pb;
use agent_learning_proto::v1::curator_client::CuratorClient;
use agent_learning_proto::v1::policy_server::{Policy as PolicyRpc, PolicyServer};
use agent_learning_runtime::{Backends, ServiceError};
use agent_learning_server::GrpcServer;
use agent_learning_store::Store;
use agent_learning_store::entity::{decision, policy};
use agent_learning_world_model::Transitions;
use chrono::Utc;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use uuid::Uuid;

const MAX_ACTIONS: usize = 256;
const MAX_STATE: usize = 64 * 1024;
const MAX_TEMPLATE: usize = 16 * 1024;
/// Longest exemplar state shown in a prompt, in bytes.
const EXEMPLAR_STATE: usize = 600;

pub struct Policy {
    store: Store,
    transitions: Transitions,
    model: Arc<dyn ChatModel>,
    curator: CuratorClient<Channel>,
    defaults: PolicySettings,
}

fn stage_name(v: i32, default: &str) -> Result<String, ServiceError> {
    match pb::Stage::try_from(v) {
        Ok(pb::Stage::Unspecified) => Ok(default.to_owned()),
        Ok(pb::Stage::Shadow) => Ok("shadow".into()),
        Ok(pb::Stage::Staging) => Ok("staging".into()),
        Ok(pb::Stage::Production) => Ok("production".into()),
        Ok(pb::Stage::Quarantined) => Err(ServiceError::invalid(
            "min_stage",
            "quarantined bullets are never used by a policy",
        )),
        Err(_) => Err(ServiceError::invalid(
            "min_stage",
            format!("unknown stage {v}"),
        )),
    }
}

fn stage_pb(s: &str) -> pb::Stage {
    match s {
        "staging" => pb::Stage::Staging,
        "production" => pb::Stage::Production,
        _ => pb::Stage::Shadow,
    }
}

fn to_pb(m: &policy::Model) -> pb::PolicyVersion {
    pb::PolicyVersion {
        namespace: m.namespace.clone(),
        version: m.version.to_string(),
        instructions_template: m.instructions_template.clone(),
        exemplars_k: m.exemplars_k.max(0) as u32,
        min_stage: stage_pb(&m.min_stage) as i32,
        token_budget: m.token_budget.max(0) as u32,
        created_at: Some(prost_types::Timestamp {
            seconds: m.created_at.timestamp(),
            nanos: m.created_at.timestamp_subsec_nanos() as i32,
        }),
    }
}

impl Policy {
    pub fn new(
        store: Store,
        transitions: Transitions,
        model: Arc<dyn ChatModel>,
        curator: Channel,
        defaults: PolicySettings,
    ) -> Self {
        Self {
            store,
            transitions,
            model,
            curator: CuratorClient::new(curator),
            defaults,
        }
    }

    pub async fn open(
        settings: &Settings,
        backends: &Backends,
        model: Arc<dyn ChatModel>,
        curator: Channel,
    ) -> anyhow::Result<Arc<Self>> {
        let t = Transitions::open(settings, backends)
            .await
            .map_err(|e| anyhow::anyhow!("policy start: {e}"))?;
        Ok(Arc::new(Self::new(
            backends.store.clone(),
            t,
            model,
            curator,
            settings.policy.clone(),
        )))
    }

    pub async fn compile(&self, r: pb::CompileRequest) -> Result<pb::PolicyVersion, ServiceError> {
        validate_namespace("namespace", &r.namespace)?;
        let template = if r.instructions_template.trim().is_empty() {
            self.defaults.instructions_template.clone()
        } else {
            r.instructions_template
        };
        if template.len() > MAX_TEMPLATE {
            return Err(ServiceError::invalid(
                "instructions_template",
                format!("{} bytes is more than {MAX_TEMPLATE}", template.len()),
            ));
        }
        if r.exemplars_k > 20 {
            return Err(ServiceError::invalid("exemplars_k", "must be at most 20"));
        }
        let min_stage = stage_name(r.min_stage, &self.defaults.min_stage)?;
        let k = if r.exemplars_k == 0 {
            self.defaults.exemplars_k
        } else {
            r.exemplars_k
        };
        let budget = if r.token_budget == 0 {
            self.defaults.token_budget
        } else {
            r.token_budget
        };
        // Versions count up per namespace; two compiles racing retry on the key conflict.
        for _ in 0..5 {
            let latest = self.latest(&r.namespace).await?;
            let version = latest.map(|m| m.version).unwrap_or(0) + 1;
            let m = policy::ActiveModel {
                namespace: Set(r.namespace.clone()),
                version: Set(version),
                instructions_template: Set(template.clone()),
                exemplars_k: Set(k as i32),
                min_stage: Set(min_stage.clone()),
                token_budget: Set(budget as i32),
                created_at: Set(Utc::now()),
            };
            match m.insert(self.store.connection()).await {
                Ok(m) => return Ok(to_pb(&m)),
                Err(e)
                    if e.to_string().to_lowercase().contains("unique")
                        || e.to_string().contains("duplicate") =>
                {
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Unavailable(
            "policy version contention; retry".into(),
        ))
    }

    async fn latest(&self, ns: &str) -> Result<Option<policy::Model>, ServiceError> {
        Ok(policy::Entity::find()
            .filter(policy::Column::Namespace.eq(ns))
            .order_by_desc(policy::Column::Version)
            .one(self.store.connection())
            .await?)
    }

    pub async fn get(&self, ns: &str, version: &str) -> Result<policy::Model, ServiceError> {
        validate_namespace("namespace", ns)?;
        let found = if version.trim().is_empty() {
            self.latest(ns).await?
        } else {
            let v: i64 = version.trim().parse().map_err(|_| {
                ServiceError::invalid(
                    "version",
                    format!("{version:?} is not a policy version number"),
                )
            })?;
            policy::Entity::find_by_id((ns.to_owned(), v))
                .one(self.store.connection())
                .await?
        };
        found.ok_or_else(|| {
            if version.trim().is_empty() {
                ServiceError::FailedPrecondition(format!(
                    "namespace {ns} has no compiled policy: train it or call Compile"
                ))
            } else {
                ServiceError::NotFound(format!("policy {ns} version {version} not found"))
            }
        })
    }

    pub async fn decide(&self, r: pb::DecideRequest) -> Result<pb::Decision, ServiceError> {
        validate_namespace("namespace", &r.namespace)?;
        if r.state.trim().is_empty() {
            return Err(ServiceError::invalid("state", "must not be empty"));
        }
        if r.state.len() > MAX_STATE {
            return Err(ServiceError::invalid(
                "state",
                format!("more than {MAX_STATE} bytes"),
            ));
        }
        if r.valid_actions.len() > MAX_ACTIONS {
            return Err(ServiceError::invalid(
                "valid_actions",
                format!("more than {MAX_ACTIONS}"),
            ));
        }
        if let Some(i) = r.valid_actions.iter().position(|a| a.trim().is_empty()) {
            return Err(ServiceError::invalid(
                format!("valid_actions[{i}]"),
                "must not be empty",
            ));
        }
        let p = self.get(&r.namespace, &r.policy_version).await?;
        let vector = self
            .transitions
            .embedder()
            .embed(vec![r.state.clone()])
            .await?
            .pop()
            .ok_or_else(|| ServiceError::internal("embedder returned no vector"))?;
        let exemplars = self
            .transitions
            .nearest(
                &r.namespace,
                vector,
                p.exemplars_k.max(0) as usize,
                None,
                None,
            )
            .await?;
        let candidates: Vec<String> = if r.valid_actions.is_empty() {
            exemplars
                .iter()
                .map(|e| e.action.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        } else {
            r.valid_actions.clone()
        };
        if candidates.is_empty() {
            return Err(ServiceError::invalid(
                "valid_actions",
                "empty, and the namespace has no exemplars to take actions from",
            ));
        }
        let playbook = self
            .curator
            .clone()
            .render_context(pb::RenderContextRequest {
                namespace: r.namespace.clone(),
                state: r.state.clone(),
                token_budget: p.token_budget.max(1) as u32,
                min_stage: stage_pb(&p.min_stage) as i32,
            })
            .await
            .map_err(|s| {
                ServiceError::Unavailable(format!("curator RenderContext: {}", s.message()))
            })?
            .into_inner();
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
                ("state", &r.state),
            ],
        );
        let (action, reasoning, fallback, usage) = match self
            .model
            .choose(&[Message::user(prompt)], &candidates)
            .await
        {
            Ok(c) => (c.option, c.reasoning, false, c.usage),
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
                    Default::default(),
                )
            }
            Err(e) => return Err(ServiceError::Unavailable(format!("model: {e}"))),
        };
        let id = Uuid::new_v4();
        let exemplar_ids: Vec<String> = exemplars.iter().map(|e| e.id.to_string()).collect();
        decision::ActiveModel {
            id: Set(id.to_string()),
            namespace: Set(r.namespace.clone()),
            policy_version: Set(p.version),
            state: Set(r.state.clone()),
            action: Set(action.clone()),
            reasoning: Set(reasoning.clone()),
            bullet_ids: Set(
                serde_json::to_string(&playbook.bullet_ids).unwrap_or_else(|_| "[]".into())
            ),
            exemplar_ids: Set(serde_json::to_string(&exemplar_ids).unwrap_or_else(|_| "[]".into())),
            fallback: Set(fallback),
            created_at: Set(Utc::now()),
        }
        .insert(self.store.connection())
        .await?;
        Ok(pb::Decision {
            decision_id: id.to_string(),
            action,
            reasoning,
            bullet_ids: playbook.bullet_ids,
            policy_version: p.version.to_string(),
            exemplar_ids,
            fallback,
            usage: Some(pb::TokenUsage {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
            }),
        })
    }

    /// Credits (or blames) the bullets a decision used; once per decision.
    pub async fn feedback(&self, r: pb::FeedbackRequest) -> Result<Vec<String>, ServiceError> {
        validate_namespace("namespace", &r.namespace)?;
        if r.decision_id.trim().is_empty() {
            return Err(ServiceError::invalid("decision_id", "must not be empty"));
        }
        let d = decision::Entity::find_by_id(r.decision_id.clone())
            .one(self.store.connection())
            .await?
            .filter(|d| d.namespace == r.namespace)
            .ok_or_else(|| {
                ServiceError::NotFound(format!("decision {} not found", r.decision_id))
            })?;
        let bullets: Vec<String> = serde_json::from_str(&d.bullet_ids).unwrap_or_default();
        if bullets.is_empty() {
            return Ok(bullets);
        }
        let (helpful, harmful) = if r.helpful { (1, 0) } else { (0, 1) };
        self.curator
            .clone()
            .record_feedback(pb::RecordFeedbackRequest {
                namespace: r.namespace,
                feedback: bullets
                    .iter()
                    .map(|b| pb::BulletFeedback {
                        bullet_id: b.clone(),
                        helpful,
                        harmful,
                    })
                    .collect(),
                // One vote per decision, however often the caller retries.
                feedback_id: format!("decision:{}", d.id),
            })
            .await
            .map_err(ServiceError::from)?;
        Ok(bullets)
    }

    pub fn mount(self: &Arc<Self>, server: &mut GrpcServer) {
        let max = server.limits().max_message_bytes;
        server.routes_mut().add_service(
            PolicyServer::new(PolicyService(self.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        );
        server.track(service_names::POLICY);
    }
}

pub struct PolicyService(pub Arc<Policy>);

#[tonic::async_trait]
impl PolicyRpc for PolicyService {
    async fn compile(
        &self,
        req: Request<pb::CompileRequest>,
    ) -> Result<Response<pb::PolicyVersion>, Status> {
        Ok(Response::new(self.0.compile(req.into_inner()).await?))
    }

    async fn decide(
        &self,
        req: Request<pb::DecideRequest>,
    ) -> Result<Response<pb::Decision>, Status> {
        Ok(Response::new(self.0.decide(req.into_inner()).await?))
    }

    async fn feedback(
        &self,
        req: Request<pb::FeedbackRequest>,
    ) -> Result<Response<pb::FeedbackResponse>, Status> {
        let bullet_ids = self.0.feedback(req.into_inner()).await?;
        Ok(Response::new(pb::FeedbackResponse { bullet_ids }))
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::PolicyVersion>, Status> {
        let r = req.into_inner();
        Ok(Response::new(to_pb(
            &self.0.get(&r.namespace, &r.version).await?,
        )))
    }
}

/// Serves the policy alone (the standalone `policy` binary); the Curator is reached at
/// `services.curator`.
pub async fn serve(
    settings: Settings,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let backends = agent_learning_runtime::open_backends(&settings).await?;
    let model = agent_learning_llm::open_chat_model(&settings)?;
    let peers = agent_learning_runtime::Peers::new(&settings, listener.local_addr()?)?;
    let policy = Policy::open(&settings, &backends, model, peers.curator).await?;
    let mut server = GrpcServer::new(agent_learning_runtime::limits(&settings))?;
    policy.mount(&mut server);
    agent_learning_runtime::serving_when_store_answers(&server, backends.store.clone());
    agent_learning_runtime::serve_until(server, listener, shutdown, Default::default()).await
}
