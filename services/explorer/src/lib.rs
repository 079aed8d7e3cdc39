//! The explorer service. For each branch point of each expert demo it takes K alternative
//! actions (the environment's valid actions when it offers them, else proposed by the model)
//! and finds their outcomes by real branching (snapshot, step, restore) when the environment
//! can snapshot, else by asking the world model. Every rollout records its source. Rollouts
//! are stored (ids derived from run, demo, step and action, so a re-run stores nothing twice),
//! streamed to the caller, and published per branch point to the rollouts stream.

mod branch;
pub mod grpc;

use std::collections::BTreeSet;
use std::sync::Arc;

use agent_learning_api::{
    ApiError, Demo, ExploreRequest, ExplorerApi, RolloutStream, WorldModelApi,
};
use agent_learning_domain::{
    InvalidInput, Rollout, RolloutGroup, RolloutSource, validate_namespace,
};
use agent_learning_envs::Rng;
use agent_learning_llm::{ChatModel, ChatParams, Message};
use agent_learning_proto::convert::group_to_pb;
use agent_learning_queue::{Queue, QueueError, streams};
use agent_learning_runtime::{Context, RuntimeError, Service};
use agent_learning_server::GrpcServer;
use agent_learning_store::{Outbox, Store, StoreError};
use async_trait::async_trait;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use uuid::Uuid;

pub use branch::{BranchPlan, Outcome, branch_points, explore_in_env};

const ID_NS: Uuid = Uuid::from_u128(0x6a2f_0e4d_97c1_4b58_a3e6_5f1d_0c8b_2d94);
const MAX_DEMOS: usize = 10_000;
const MAX_STEPS: usize = 1_000;
const MAX_BRANCH_POINTS: u32 = 100;

pub fn group_id(run_id: &str, demo_id: &str, step: usize) -> Uuid {
    Uuid::new_v5(
        &ID_NS,
        format!("{run_id}\u{1f}{demo_id}\u{1f}{step}").as_bytes(),
    )
}

pub fn rollout_id(group: Uuid, action: &str) -> Uuid {
    Uuid::new_v5(&group, action.as_bytes())
}

#[derive(Debug, Clone)]
pub struct ExplorerDefaults {
    pub alternatives: u32,
    pub branch_points: u32,
    /// The `grpc://` environments this explorer may connect to.
    pub remotes: agent_learning_api::RemoteEnvAllowlist,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplorerError {
    #[error("invalid argument: {0}")]
    Invalid(#[from] InvalidInput),
    #[error("environment {env}: {source}")]
    Environment {
        env: String,
        #[source]
        source: agent_learning_envs::EnvError,
    },
    #[error("world model: {0}")]
    WorldModel(#[source] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("exploration task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<ExplorerError> for ApiError {
    fn from(e: ExplorerError) -> Self {
        match e {
            ExplorerError::Invalid(i) => ApiError::Invalid(i),
            ExplorerError::Environment { .. } => ApiError::Unavailable {
                message: e.to_string(),
                source: Some(Box::new(e)),
            },
            ExplorerError::WorldModel(w) => ApiError::unavailable("world model", w),
            ExplorerError::Queue(q) => ApiError::unavailable("rollouts stream", q),
            ExplorerError::Store(s) => ApiError::internal("explorer record", s),
            ExplorerError::Task(t) => ApiError::internal("explorer", t),
        }
    }
}

type Result<T, E = ExplorerError> = std::result::Result<T, E>;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ExplorerError {
    InvalidInput::new(field, reason).into()
}

#[derive(Clone)]
pub struct Explorer {
    store: Store,
    queue: Arc<dyn Queue>,
    model: Arc<dyn ChatModel>,
    world_model: Arc<dyn WorldModelApi>,
    defaults: ExplorerDefaults,
}

impl Explorer {
    pub fn new(
        store: Store,
        queue: Arc<dyn Queue>,
        model: Arc<dyn ChatModel>,
        world_model: Arc<dyn WorldModelApi>,
        defaults: ExplorerDefaults,
    ) -> Self {
        Self {
            store,
            queue,
            model,
            world_model,
            defaults,
        }
    }

    pub fn validate(&self, r: &ExploreRequest) -> Result<()> {
        validate_namespace("namespace", &r.namespace)?;
        if r.run_id.trim().is_empty() {
            return Err(invalid("run_id", "must not be empty"));
        }
        if r.demos.is_empty() {
            return Err(invalid("demos", "must not be empty"));
        }
        if r.demos.len() > MAX_DEMOS {
            return Err(invalid(
                "demos",
                format!("{} demos is more than {MAX_DEMOS}", r.demos.len()),
            ));
        }
        if r.alternatives > 16 {
            return Err(invalid("alternatives", "must be at most 16"));
        }
        if r.branch_points > MAX_BRANCH_POINTS {
            return Err(invalid(
                "branch_points",
                format!("must be at most {MAX_BRANCH_POINTS}"),
            ));
        }
        let mut ids = BTreeSet::new();
        for (i, d) in r.demos.iter().enumerate() {
            if d.id.trim().is_empty() {
                return Err(invalid(format!("demos[{i}].id"), "must not be empty"));
            }
            if !ids.insert(d.id.as_str()) {
                return Err(invalid(
                    format!("demos[{i}].id"),
                    format!("{:?} appears twice", d.id),
                ));
            }
            if d.steps.is_empty() {
                return Err(invalid(format!("demos[{i}].steps"), "must not be empty"));
            }
            if d.steps.len() > MAX_STEPS {
                return Err(invalid(
                    format!("demos[{i}].steps"),
                    format!("{} steps is more than {MAX_STEPS}", d.steps.len()),
                ));
            }
            for (j, s) in d.steps.iter().enumerate() {
                if s.state.len() > agent_learning_domain::MAX_STATE_BYTES
                    || s.action.len() > agent_learning_domain::MAX_STATE_BYTES
                {
                    return Err(invalid(
                        format!("demos[{i}].steps[{j}]"),
                        format!(
                            "state and action are at most {} bytes each",
                            agent_learning_domain::MAX_STATE_BYTES
                        ),
                    ));
                }
                let field = format!("demos[{i}].steps[{j}]");
                agent_learning_domain::check_no_nul(&field, &s.state)?;
                agent_learning_domain::check_no_nul(&field, &s.action)?;
                if s.state.trim().is_empty() || s.action.trim().is_empty() {
                    return Err(invalid(
                        format!("demos[{i}].steps[{j}]"),
                        "state and action must not be empty",
                    ));
                }
            }
        }
        if r.env.trim().is_empty() {
            return Err(invalid("env", "must not be empty"));
        }
        if r.env.starts_with("grpc://") {
            self.defaults
                .remotes
                .check(&r.env)
                .map_err(|why| invalid("env", why))?;
        } else {
            agent_learning_envs::factory(&r.env).map_err(|e| invalid("env", e.to_string()))?;
        }
        Ok(())
    }

    /// Explores every demo; `sink` receives each branch point's rollouts as they are ready.
    async fn explore_into(
        &self,
        r: ExploreRequest,
        sink: mpsc::Sender<Result<Rollout, ApiError>>,
    ) -> Result<()> {
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
                .await?
                .map_err(|source| ExplorerError::Environment {
                    env: r.env.clone(),
                    source,
                })?;
            for (step, outcome) in steps.iter().copied().zip(outcomes) {
                let explored = self
                    .complete(&r, demo, step, outcome, k, &vocabulary)
                    .await?;
                self.persist_and_publish(&explored, r.publish).await?;
                for ro in explored.rollouts {
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
        r: &ExploreRequest,
        demo: &Demo,
        step: usize,
        outcome: Outcome,
        k: usize,
        vocabulary: &[String],
    ) -> Result<RolloutGroup> {
        let expert = &demo.steps[step];
        let gid = group_id(&r.run_id, &demo.id, step);
        let mut rollouts = vec![Rollout {
            id: rollout_id(gid, &expert.action).to_string(),
            run_id: r.run_id.clone(),
            demo_id: demo.id.clone(),
            step_index: step as u32,
            state: expert.state.clone(),
            expert_action: expert.action.clone(),
            action: expert.action.clone(),
            next_state: expert.next_state.clone(),
            done: expert.done,
            source: RolloutSource::Expert,
            group_id: gid.to_string(),
        }];
        let mut push = |action: String, next_state: String, done: bool, source: RolloutSource| {
            rollouts.push(Rollout {
                id: rollout_id(gid, &action).to_string(),
                run_id: r.run_id.clone(),
                demo_id: demo.id.clone(),
                step_index: step as u32,
                state: expert.state.clone(),
                expert_action: expert.action.clone(),
                action,
                next_state,
                done,
                source,
                group_id: gid.to_string(),
            });
        };
        match outcome {
            Outcome::Branched(alts) => {
                for (action, next_state, done) in alts {
                    push(action, next_state, done, RolloutSource::Env);
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
                        .predict(&r.namespace, &expert.state, &action, 0)
                        .await
                        .map_err(ExplorerError::WorldModel)?;
                    push(action, p.next_state, false, RolloutSource::WorldModel);
                }
            }
        }
        Ok(RolloutGroup {
            id: gid.to_string(),
            namespace: r.namespace.clone(),
            run_id: r.run_id.clone(),
            demo_id: demo.id.clone(),
            step_index: step as u32,
            state: expert.state.clone(),
            expert_action: expert.action.clone(),
            expert_next_state: expert.next_state.clone(),
            rollouts,
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

    /// Stores the group's rollouts (once), then publishes the group once (the outbox).
    /// Reflectors are idempotent by group id, so a republish after a crash changes nothing.
    async fn persist_and_publish(&self, g: &RolloutGroup, publish: bool) -> Result<()> {
        self.store.insert_rollouts(g).await?;
        if !publish {
            return Ok(());
        }
        let payload = group_to_pb(g.clone()).encode_to_vec();
        self.store
            .publish_once(Outbox::RolloutGroup(&g.id), || async {
                self.queue
                    .publish(streams::ROLLOUTS, &g.id, &payload)
                    .await
                    .map(drop)
                    .map_err(ExplorerError::from)
            })
            .await?;
        Ok(())
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

#[async_trait]
impl ExplorerApi for Explorer {
    async fn explore(&self, req: ExploreRequest) -> Result<RolloutStream, ApiError> {
        self.validate(&req)?;
        let (tx, rx) = mpsc::channel(64);
        // Fields are handles: the clone shares the store, queue, model and peer.
        let explorer = self.clone();
        tokio::spawn(async move {
            if let Err(e) = explorer.explore_into(req, tx.clone()).await {
                let _ = tx.send(Err(e.into())).await;
            }
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

impl Service for Explorer {
    const NAME: &'static str = "explorer";

    async fn build(ctx: &Context) -> Result<Arc<Self>, RuntimeError> {
        let s = ctx.settings();
        Ok(Arc::new(Self::new(
            ctx.store().await?,
            ctx.queue().await?,
            ctx.model().await?,
            ctx.peers().world_model.clone(),
            ExplorerDefaults {
                alternatives: s.pipeline.alternatives,
                branch_points: s.pipeline.branch_points,
                remotes: agent_learning_api::RemoteEnvAllowlist::new(
                    s.environments.allowed_remotes.clone(),
                ),
            },
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
