//! The explorer service. For each branch point of each expert demo it takes K alternative
//! actions (the environment's valid actions when it offers them, else proposed by the model)
//! and finds their outcomes by real branching (snapshot, step, restore) when the environment
//! can snapshot, else by asking the world model. Every rollout records its source. Rollouts
//! are stored (ids derived from run, demo, step and action, so a re-run stores nothing twice),
//! streamed to the caller, and published per branch point to the rollouts stream.

mod branch;

use std::collections::BTreeSet;
use std::sync::Arc;

use agent_learning_config::Settings;
use agent_learning_domain::validate_namespace;
use agent_learning_envs::Rng;
use agent_learning_llm::{ChatModel, ChatParams, Message};
use agent_learning_proto::service_names;
use agent_learning_proto::v1 as pb;
use agent_learning_proto::v1::explorer_server::{Explorer as ExplorerRpc, ExplorerServer};
use agent_learning_proto::v1::world_model_client::WorldModelClient;
use agent_learning_queue::{Queue, streams};
use agent_learning_runtime::ServiceError;
use agent_learning_server::GrpcServer;
use agent_learning_store::Store;
use agent_learning_store::entity::rollout;
use chrono::Utc;
use prost::Message as _;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, Set, sea_query::Expr};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub use branch::{BranchPlan, Outcome, branch_points, explore_in_env};

const ID_NS: Uuid = Uuid::from_u128(0x6a2f_0e4d_97c1_4b58_a3e6_5f1d_0c8b_2d94);
const MAX_DEMOS: usize = 10_000;

pub fn group_id(run_id: &str, demo_id: &str, step: usize) -> Uuid {
    Uuid::new_v5(
        &ID_NS,
        format!("{run_id}\u{1f}{demo_id}\u{1f}{step}").as_bytes(),
    )
}

pub fn rollout_id(group: Uuid, action: &str) -> Uuid {
    Uuid::new_v5(&group, action.as_bytes())
}

#[derive(Debug, Clone, Copy)]
pub struct ExplorerDefaults {
    pub alternatives: u32,
    pub branch_points: u32,
}

pub struct Explorer {
    store: Store,
    queue: Arc<dyn Queue>,
    model: Arc<dyn ChatModel>,
    world_model: WorldModelClient<Channel>,
    defaults: ExplorerDefaults,
}

/// One branch point, fully explored.
#[derive(Debug, Clone)]
struct Explored {
    group: pb::RolloutGroup,
}

impl Explorer {
    pub fn new(
        store: Store,
        queue: Arc<dyn Queue>,
        model: Arc<dyn ChatModel>,
        world_model: Channel,
        defaults: ExplorerDefaults,
    ) -> Self {
        Self {
            store,
            queue,
            model,
            world_model: WorldModelClient::new(world_model),
            defaults,
        }
    }

    pub fn defaults(settings: &Settings) -> ExplorerDefaults {
        ExplorerDefaults {
            alternatives: settings.pipeline.alternatives,
            branch_points: settings.pipeline.branch_points,
        }
    }

    fn validate(&self, r: &pb::ExploreRequest) -> Result<(), ServiceError> {
        validate_namespace("namespace", &r.namespace)?;
        if r.run_id.trim().is_empty() {
            return Err(ServiceError::invalid("run_id", "must not be empty"));
        }
        if r.demos.is_empty() {
            return Err(ServiceError::invalid("demos", "must not be empty"));
        }
        if r.demos.len() > MAX_DEMOS {
            return Err(ServiceError::invalid(
                "demos",
                format!("{} demos is more than {MAX_DEMOS}", r.demos.len()),
            ));
        }
        if r.alternatives > 16 {
            return Err(ServiceError::invalid("alternatives", "must be at most 16"));
        }
        let mut ids = BTreeSet::new();
        for (i, d) in r.demos.iter().enumerate() {
            if d.id.trim().is_empty() {
                return Err(ServiceError::invalid(
                    format!("demos[{i}].id"),
                    "must not be empty",
                ));
            }
            if !ids.insert(d.id.as_str()) {
                return Err(ServiceError::invalid(
                    format!("demos[{i}].id"),
                    format!("{:?} appears twice", d.id),
                ));
            }
            if d.steps.is_empty() {
                return Err(ServiceError::invalid(
                    format!("demos[{i}].steps"),
                    "must not be empty",
                ));
            }
            for (j, s) in d.steps.iter().enumerate() {
                if s.state.trim().is_empty() || s.action.trim().is_empty() {
                    return Err(ServiceError::invalid(
                        format!("demos[{i}].steps[{j}]"),
                        "state and action must not be empty",
                    ));
                }
            }
        }
        if r.env.trim().is_empty() {
            return Err(ServiceError::invalid("env", "must not be empty"));
        }
        if !r.env.starts_with("grpc://") {
            agent_learning_envs::factory(&r.env)
                .map_err(|e| ServiceError::invalid("env", e.to_string()))?;
        }
        Ok(())
    }

    /// Explores every demo; `sink` receives each branch point's rollouts as they are ready.
    async fn explore(
        &self,
        r: pb::ExploreRequest,
        sink: mpsc::Sender<Result<pb::Rollout, Status>>,
    ) -> Result<(), ServiceError> {
        let k = if r.alternatives == 0 {
            self.defaults.alternatives
        } else {
            r.alternatives
        } as usize;
        let points = if r.every_step {
            0
        } else if r.branch_points == 0 {
            self.defaults.branch_points
        } else {
            r.branch_points
        };
        // Actions seen anywhere in the demos: candidates when neither environment nor model
        // offers any.
        let vocabulary: Vec<String> = r
            .demos
            .iter()
            .flat_map(|d| d.steps.iter().map(|s| s.action.clone()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for demo in &r.demos {
            let steps = branch_points(demo.steps.len(), points);
            let env = r.env.clone();
            let d = demo.clone();
            let plan = BranchPlan {
                steps: steps.clone(),
                alternatives: k,
            };
            let outcomes = tokio::task::spawn_blocking(move || explore_in_env(&env, &d, &plan))
                .await
                .map_err(ServiceError::internal)?
                .map_err(|e| ServiceError::Unavailable(format!("environment {}: {e}", r.env)))?;
            for (step, outcome) in steps.iter().copied().zip(outcomes) {
                let explored = self
                    .complete(&r, demo, step, outcome, k, &vocabulary)
                    .await?;
                self.persist_and_publish(&explored, r.publish).await?;
                for ro in explored.group.rollouts {
                    if sink.send(Ok(ro)).await.is_err() {
                        return Ok(()); // the caller went away
                    }
                }
            }
        }
        Ok(())
    }

    /// Turns the environment's outcome at one branch point into a rollout group, predicting
    /// with the world model what the environment could not show.
    async fn complete(
        &self,
        r: &pb::ExploreRequest,
        demo: &pb::Demo,
        step: usize,
        outcome: Outcome,
        k: usize,
        vocabulary: &[String],
    ) -> Result<Explored, ServiceError> {
        let expert = &demo.steps[step];
        let gid = group_id(&r.run_id, &demo.id, step);
        let mut rollouts = vec![pb::Rollout {
            id: rollout_id(gid, &expert.action).to_string(),
            run_id: r.run_id.clone(),
            demo_id: demo.id.clone(),
            step_index: step as u32,
            state: expert.state.clone(),
            expert_action: expert.action.clone(),
            action: expert.action.clone(),
            next_state: expert.next_state.clone(),
            done: expert.done,
            source: pb::RolloutSource::Expert as i32,
            group_id: gid.to_string(),
        }];
        let mut push =
            |action: String, next_state: String, done: bool, source: pb::RolloutSource| {
                rollouts.push(pb::Rollout {
                    id: rollout_id(gid, &action).to_string(),
                    run_id: r.run_id.clone(),
                    demo_id: demo.id.clone(),
                    step_index: step as u32,
                    state: expert.state.clone(),
                    expert_action: expert.action.clone(),
                    action,
                    next_state,
                    done,
                    source: source as i32,
                    group_id: gid.to_string(),
                });
            };
        match outcome {
            Outcome::Branched(alts) => {
                for (action, next_state, done) in alts {
                    push(action, next_state, done, pb::RolloutSource::Env);
                }
            }
            Outcome::Imagine { actions } => {
                let mut rng = Rng::new(seed_of(&gid));
                let candidates = match actions {
                    Some(a) => a,
                    None => {
                        self.propose(&expert.state, &expert.action, k, vocabulary)
                            .await
                    }
                };
                let chosen = pick(&candidates, &expert.action, k, &mut rng);
                for action in chosen {
                    let p = self
                        .world_model
                        .clone()
                        .predict(pb::PredictRequest {
                            namespace: r.namespace.clone(),
                            state: expert.state.clone(),
                            action: action.clone(),
                            k: 0,
                        })
                        .await
                        .map_err(ServiceError::from)?
                        .into_inner();
                    push(action, p.next_state, false, pb::RolloutSource::WorldModel);
                }
            }
        }
        Ok(Explored {
            group: pb::RolloutGroup {
                id: gid.to_string(),
                namespace: r.namespace.clone(),
                run_id: r.run_id.clone(),
                demo_id: demo.id.clone(),
                step_index: step as u32,
                state: expert.state.clone(),
                expert_action: expert.action.clone(),
                expert_next_state: expert.next_state.clone(),
                rollouts,
            },
        })
    }

    /// Alternatives proposed by the model, one per line; the demos' actions when its answer
    /// gives none.
    async fn propose(
        &self,
        state: &str,
        expert: &str,
        k: usize,
        vocabulary: &[String],
    ) -> Vec<String> {
        let messages = [
            Message::system(
                "You list alternative actions an agent could take. One action per line, nothing else.",
            ),
            Message::user(format!(
                "State:\n{state}\n\nThe expert chose: {expert}\nList {k} different actions the agent could have taken instead."
            )),
        ];
        let params = ChatParams {
            max_tokens: 24 * k as u32 + 16,
            ..ChatParams::default()
        };
        let proposed: Vec<String> = match self.model.chat(&messages, &params).await {
            Ok(c) => c
                .text
                .lines()
                .map(|l| {
                    l.trim()
                        .trim_start_matches(|c: char| {
                            c == '-' || c == '*' || c.is_ascii_digit() || c == '.' || c == ')'
                        })
                        .trim()
                        .to_owned()
                })
                .filter(|l| !l.is_empty() && l.len() <= 200 && l != expert)
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "model could not propose alternatives; using the demos' actions");
                Vec::new()
            }
        };
        if proposed.is_empty() {
            vocabulary.to_vec()
        } else {
            proposed
        }
    }

    /// Stores the group's rollouts (once), then publishes the group unless it was published
    /// before. A crash between the two republishes on the next run; reflectors are idempotent
    /// by group id.
    async fn persist_and_publish(&self, e: &Explored, publish: bool) -> Result<(), ServiceError> {
        let g = &e.group;
        let now = Utc::now();
        let models: Vec<rollout::ActiveModel> = g
            .rollouts
            .iter()
            .map(|ro| rollout::ActiveModel {
                id: Set(ro.id.clone()),
                run_id: Set(ro.run_id.clone()),
                namespace: Set(g.namespace.clone()),
                group_id: Set(g.id.clone()),
                demo_id: Set(ro.demo_id.clone()),
                step_index: Set(ro.step_index as i32),
                state: Set(ro.state.clone()),
                expert_action: Set(ro.expert_action.clone()),
                action: Set(ro.action.clone()),
                next_state: Set(ro.next_state.clone()),
                done: Set(ro.done),
                source: Set(source_name(ro.source).to_owned()),
                published: Set(false),
                created_at: Set(now),
            })
            .collect();
        rollout::Entity::insert_many(models)
            .on_conflict(
                OnConflict::column(rollout::Column::Id)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(self.store.connection())
            .await?;
        if !publish {
            return Ok(());
        }
        let published = rollout::Entity::find()
            .filter(rollout::Column::GroupId.eq(g.id.clone()))
            .filter(rollout::Column::Published.eq(true))
            .one(self.store.connection())
            .await?
            .is_some();
        if published {
            return Ok(());
        }
        self.queue
            .publish(streams::ROLLOUTS, &g.id, &g.encode_to_vec())
            .await?;
        rollout::Entity::update_many()
            .col_expr(rollout::Column::Published, Expr::value(true))
            .filter(rollout::Column::GroupId.eq(g.id.clone()))
            .exec(self.store.connection())
            .await?;
        Ok(())
    }

    pub fn mount(self: &Arc<Self>, server: &mut GrpcServer) {
        let max = server.limits().max_message_bytes;
        server.routes_mut().add_service(
            ExplorerServer::new(ExplorerService(self.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        );
        server.track(service_names::EXPLORER);
    }
}

pub fn source_name(source: i32) -> &'static str {
    match pb::RolloutSource::try_from(source) {
        Ok(pb::RolloutSource::Expert) => "expert",
        Ok(pb::RolloutSource::Env) => "env",
        Ok(pb::RolloutSource::WorldModel) => "world_model",
        _ => "unspecified",
    }
}

fn seed_of(id: &Uuid) -> u64 {
    let b = id.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Up to `k` distinct candidates other than the expert's action, chosen by `rng`.
pub fn pick(candidates: &[String], expert: &str, k: usize, rng: &mut Rng) -> Vec<String> {
    let mut pool: Vec<&String> = candidates
        .iter()
        .filter(|c| c.as_str() != expert)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut out = Vec::new();
    while out.len() < k && !pool.is_empty() {
        out.push(pool.remove(rng.below(pool.len())).clone());
    }
    out
}

pub struct ExplorerService(pub Arc<Explorer>);

#[tonic::async_trait]
impl ExplorerRpc for ExplorerService {
    type ExploreStream = ReceiverStream<Result<pb::Rollout, Status>>;

    async fn explore(
        &self,
        req: Request<pb::ExploreRequest>,
    ) -> Result<Response<Self::ExploreStream>, Status> {
        let r = req.into_inner();
        self.0.validate(&r)?;
        let (tx, rx) = mpsc::channel(64);
        let explorer = self.0.clone();
        tokio::spawn(async move {
            if let Err(e) = explorer.explore(r, tx.clone()).await {
                let _ = tx.send(Err(e.into())).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves the explorer alone (the standalone `explorer` binary).
pub async fn serve(
    settings: Settings,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = agent_learning_runtime::open_store(&settings).await?;
    let queue = agent_learning_runtime::open_queue(&settings, &store).await?;
    let model = agent_learning_llm::open_chat_model(&settings)?;
    let peers = agent_learning_runtime::Peers::new(&settings, listener.local_addr()?)?;
    let explorer = Arc::new(Explorer::new(
        store.clone(),
        queue,
        model,
        peers.world_model,
        Explorer::defaults(&settings),
    ));
    let mut server = GrpcServer::new(agent_learning_runtime::limits(&settings))?;
    explorer.mount(&mut server);
    agent_learning_runtime::serving_when_store_answers(&server, store);
    agent_learning_runtime::serve_until(server, listener, shutdown, Default::default()).await
}
