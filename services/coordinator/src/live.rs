//! The live loop: episodes against an environment, acting through `Policy.Decide`, while the
//! namespace learns from them. Each finished episode is recorded (so a restarted coordinator
//! neither plays it again nor loses it), its bullets get one vote from the outcome when the
//! environment reports one (execution feedback), and every `reflect_every`-th episode goes to
//! the episodes stream, where reflectors reflect on it and the curator curates the reflection.
//! Decide reads the playbook on every call, so what the loop learns shows in the next decision.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agent_learning_api::{DecideRequest, FeedbackItem, LiveLoopRequest, PastStep};
use agent_learning_domain::{InvalidInput, RunStage, RunState, clip_bytes};
use agent_learning_envs::{EnvError, Environment};
use agent_learning_proto::v1 as pb;
use agent_learning_queue::streams;
use agent_learning_store::{LiveEpisodeRecord, NewLiveEpisode, Outbox, StageUpdate};
use futures::StreamExt as _;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::Coordinator;
use crate::driver::{Stop, event};

pub const MAX_EPISODES: u32 = 100_000;
pub const MAX_CONCURRENCY: u32 = 64;
pub const MAX_STEPS: u32 = 10_000;
/// The most past steps a Decide carries (the policy's limit).
pub const MAX_HISTORY: u32 = 16;
pub const MAX_CURATE_EVERY: u32 = 1000;
/// Reasoning kept per step of a recorded episode, in bytes.
const REASONING_KEPT: usize = 600;
const EPISODE_NS: Uuid = Uuid::from_u128(0x5c1e_0b7a_94d2_4f3e_8a61_2b9d_7e40_c3f5);

/// A live run's configuration, as recorded with the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveConfig {
    pub episodes: u32,
    pub reflect_every: u32,
    pub concurrency: u32,
    pub max_steps: u32,
    pub first_seed: u64,
    pub stop_success_rate: f64,
    pub stop_window: u32,
    pub history: u32,
    pub stall_timeout_secs: u64,
    /// Valid reflections curated together (a run recorded before this existed curated each).
    #[serde(default = "one")]
    pub curate_every: u32,
}

fn one() -> u32 {
    1
}

impl LiveConfig {
    /// The request's numbers, zero meaning the default; out-of-range values name their field.
    pub fn from_request(
        r: &LiveLoopRequest,
        stall_timeout_secs: u64,
    ) -> Result<Self, InvalidInput> {
        let or = |v: u32, d: u32| if v == 0 { d } else { v };
        let c = Self {
            episodes: r.episodes,
            reflect_every: or(r.reflect_every, 1),
            concurrency: or(r.concurrency, 2),
            max_steps: or(r.max_steps, 200),
            first_seed: if r.first_seed == 0 {
                200_000
            } else {
                r.first_seed
            },
            stop_success_rate: r.stop_success_rate,
            stop_window: or(r.stop_window, 20),
            history: or(r.history, 4),
            stall_timeout_secs,
            curate_every: or(r.curate_every, 1),
        };
        if c.episodes == 0 || c.episodes > MAX_EPISODES {
            return Err(InvalidInput::new(
                "episodes",
                format!("must be between 1 and {MAX_EPISODES}"),
            ));
        }
        if c.concurrency > MAX_CONCURRENCY {
            return Err(InvalidInput::new(
                "concurrency",
                format!("must be at most {MAX_CONCURRENCY}"),
            ));
        }
        if c.max_steps > MAX_STEPS {
            return Err(InvalidInput::new(
                "max_steps",
                format!("must be at most {MAX_STEPS}"),
            ));
        }
        if !(0.0..=1.0).contains(&c.stop_success_rate) {
            return Err(InvalidInput::new(
                "stop_success_rate",
                "must be between 0 and 1",
            ));
        }
        if c.curate_every > MAX_CURATE_EVERY {
            return Err(InvalidInput::new(
                "curate_every",
                format!("must be at most {MAX_CURATE_EVERY}"),
            ));
        }
        if c.history > MAX_HISTORY {
            return Err(InvalidInput::new(
                "history",
                format!("must be at most {MAX_HISTORY}"),
            ));
        }
        Ok(c)
    }

    fn reflected(&self, index: u32) -> bool {
        index.is_multiple_of(self.reflect_every.max(1))
    }
}

/// The id of a run's `index`-th episode: the same after a restart.
pub fn episode_id(run_id: &str, index: u32) -> String {
    Uuid::new_v5(&EPISODE_NS, format!("{run_id}:{index}").as_bytes()).to_string()
}

/// Runs `f` on the environment on a blocking thread: environments are synchronous.
async fn on_env<T: Send + 'static>(
    env: Box<dyn Environment>,
    f: impl FnOnce(&mut dyn Environment) -> T + Send + 'static,
) -> Result<(Box<dyn Environment>, T), Stop> {
    tokio::task::spawn_blocking(move || {
        let mut env = env;
        let t = f(env.as_mut());
        (env, t)
    })
    .await
    .map_err(|e| Stop::Failed(format!("environment: {e}")))
}

fn env_stop(e: EnvError) -> Stop {
    match e {
        // A remote environment that does not answer may come back.
        EnvError::Remote(why) => Stop::Transient(format!("environment: {why}")),
        other => Stop::Failed(format!("environment: {other}")),
    }
}

/// What the run knows before its first episode.
struct Plan {
    seeds: Vec<u64>,
    /// For environments that do not list their actions: every action of the demos.
    demo_actions: Vec<String>,
}

/// Counters shown while the loop runs.
struct Pace {
    started: Instant,
    played_here: u64,
}

pub(crate) struct LiveCtx<'a> {
    pub run_id: &'a str,
    pub ns: &'a str,
    pub env: &'a str,
    pub cancel: &'a CancellationToken,
    pub events: &'a broadcast::Sender<agent_learning_api::RunEvent>,
}

impl Coordinator {
    /// Validates the request (the namespace must have a compiled policy), records the live run
    /// and starts driving it.
    pub async fn start_live_loop(
        &self,
        r: LiveLoopRequest,
    ) -> Result<agent_learning_api::RunInfo, crate::CoordinatorError> {
        agent_learning_domain::validate_namespace("namespace", &r.namespace)?;
        let env = self.check_env(&r.env)?;
        let cfg = LiveConfig::from_request(&r, self.settings.pipeline.stall_timeout_secs)?;
        match self.peers.policy.get_policy(&r.namespace, None).await {
            Ok(_) => {}
            Err(e) if e.code() == tonic::Code::NotFound => {
                return Err(crate::CoordinatorError::Precondition(format!(
                    "namespace {:?} has no compiled policy: train it first",
                    r.namespace
                )));
            }
            Err(e) => return Err(crate::CoordinatorError::Peer(e)),
        }
        let id = Uuid::new_v4().to_string();
        let config =
            serde_json::to_string(&cfg).map_err(|e| InvalidInput::new("config", e.to_string()))?;
        self.store
            .create_run(agent_learning_store::NewRun {
                id: &id,
                kind: agent_learning_domain::run_kind::LIVE,
                stages: RunStage::LIVE,
                namespace: &r.namespace,
                env,
                config: &config,
                demos: "",
            })
            .await?;
        tracing::info!(run = %id, namespace = %r.namespace, env, episodes = cfg.episodes, "live run recorded");
        self.drive(id.clone()).await;
        self.get_run(&id).await
    }

    /// Drives a live run to its end: the episodes not yet recorded, then the reflections and
    /// curation of those sent to the reflectors.
    pub(crate) async fn run_live(&self, ctx: &LiveCtx<'_>, cfg: &LiveConfig) -> Result<(), Stop> {
        if !self
            .store
            .advance_run(ctx.run_id, RunState::Running, Some(RunStage::Live), None)
            .await?
        {
            return Err(Stop::Cancelled);
        }
        let (_, stages) = self.store.load_run(ctx.run_id).await?;
        let row = stages.iter().find(|s| s.stage == RunStage::Live);
        let mut detail: serde_json::Value = row
            .and_then(|r| serde_json::from_str(&r.detail).ok())
            .unwrap_or_else(|| json!({}));
        let base_seconds = row.map(|r| r.seconds).unwrap_or(0.0);
        if detail.get("bullets_before").is_none() {
            detail["bullets_before"] = json!(self.store.live_bullet_count(ctx.ns).await?);
            let h = self.peers.curator.health(ctx.ns).await?;
            detail["insights_applied_before"] = json!(h.insights_applied);
            detail["merges_before"] = json!(merges(&h));
        }
        let plan = self.plan(ctx.ns, cfg).await?;
        self.queue
            .ensure_group(streams::EPISODES, streams::REFLECTORS)
            .await?;
        self.queue
            .ensure_group(streams::REFLECTIONS, streams::CURATORS)
            .await?;
        // Episodes a previous driver recorded: their votes and publication are finished first.
        let mut all = self.store.live_episodes(ctx.run_id).await?;
        for r in &all {
            self.settle(ctx, cfg, r, None).await?;
        }
        let recorded = &all;
        let done: HashSet<u32> = recorded.iter().map(|r| r.index).collect();
        let stop_early = Arc::new(AtomicBool::new(stop_reached(cfg, recorded)));
        let todo: Vec<u32> = (0..cfg.episodes).filter(|i| !done.contains(i)).collect();
        let started = Instant::now();
        let mut pace = Pace {
            started,
            played_here: 0,
        };
        let tolerance = Duration::from_secs(self.settings.pipeline.outage_tolerance_secs);
        let plan = &plan;
        let mut episodes = futures::stream::iter(todo)
            .map(|index| {
                let stop_early = stop_early.clone();
                async move {
                    if stop_early.load(Ordering::SeqCst) {
                        return Ok(None);
                    }
                    // An episode cut by an outage is played again from its reset.
                    let mut since: Option<Instant> = None;
                    let mut pause = Duration::from_millis(500);
                    loop {
                        match self.play(ctx, cfg, plan, index).await {
                            Ok(e) => return Ok(Some(e)),
                            Err(Stop::Transient(why))
                                if since.get_or_insert_with(Instant::now).elapsed()
                                    < tolerance =>
                            {
                                tracing::warn!(run = %ctx.run_id, index, error = %why, "episode interrupted; playing it again");
                                tokio::select! {
                                    _ = ctx.cancel.cancelled() => return Err(Stop::Cancelled),
                                    _ = tokio::time::sleep(pause) => {}
                                }
                                pause = (pause * 2).min(Duration::from_secs(10));
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
            })
            .buffer_unordered(cfg.concurrency.max(1) as usize);
        while let Some(played) = episodes.next().await {
            let Some(episode) = played? else { continue };
            let (record, payload) = self.record(ctx, &episode).await?;
            self.settle(ctx, cfg, &record, Some(&payload)).await?;
            all.push(record);
            pace.played_here += 1;
            if stop_reached(cfg, &all) && !stop_early.swap(true, Ordering::SeqCst) {
                tracing::info!(run = %ctx.run_id, "live loop reached its stop condition");
            }
            let line = self.pace_line(ctx, cfg, &all, &pace).await?;
            let seconds = base_seconds + started.elapsed().as_secs_f64();
            self.live_progress(ctx, cfg, all.len(), seconds, false, &detail)
                .await?;
            let _ = ctx.events.send(event(
                ctx.run_id,
                Some(RunStage::Live),
                all.len() as u64,
                u64::from(cfg.episodes),
                RunState::Running,
                line,
            ));
        }
        drop(episodes);
        self.wait_for_learning(ctx, cfg).await?;
        let all = self.store.live_episodes(ctx.run_id).await?;
        let seconds = base_seconds + started.elapsed().as_secs_f64();
        let summary = self
            .live_summary(
                ctx,
                cfg,
                &all,
                &detail,
                seconds,
                stop_early.load(Ordering::SeqCst),
            )
            .await?;
        self.live_progress(ctx, cfg, all.len(), seconds, true, &detail)
            .await?;
        self.store
            .set_run_summary(ctx.run_id, &summary.to_string())
            .await?;
        Ok(())
    }

    /// Records the live stage's progress: episodes recorded, time spent over all drivers.
    async fn live_progress(
        &self,
        ctx: &LiveCtx<'_>,
        cfg: &LiveConfig,
        done: usize,
        seconds: f64,
        finished: bool,
        detail: &serde_json::Value,
    ) -> Result<(), Stop> {
        self.store
            .update_stage(
                ctx.run_id,
                RunStage::Live,
                StageUpdate {
                    done: done as u64,
                    total: u64::from(cfg.episodes),
                    seconds,
                    finished,
                    detail: Some(detail),
                },
            )
            .await?;
        Ok(())
    }

    /// Seeds no demo of the namespace used, and the demos' actions.
    async fn plan(&self, ns: &str, cfg: &LiveConfig) -> Result<Plan, Stop> {
        let mut demo_seeds = BTreeSet::new();
        let mut actions = BTreeSet::new();
        for jsonl in self.store.training_demos(ns).await? {
            let demos = agent_learning_envs::parse_demos(jsonl.as_bytes(), "stored demos")
                .map_err(|e| Stop::Failed(e.to_string()))?;
            for d in demos {
                demo_seeds.insert(d.seed);
                actions.extend(d.steps.into_iter().map(|s| s.action));
            }
        }
        Ok(Plan {
            seeds: (cfg.first_seed..)
                .filter(|s| !demo_seeds.contains(s))
                .take(cfg.episodes as usize)
                .collect(),
            demo_actions: actions.into_iter().collect(),
        })
    }

    /// One episode, from reset to done or the step limit.
    async fn play(
        &self,
        ctx: &LiveCtx<'_>,
        cfg: &LiveConfig,
        plan: &Plan,
        index: u32,
    ) -> Result<pb::LiveEpisode, Stop> {
        let seed = plan.seeds[index as usize];
        let spec = ctx.env.to_owned();
        let env = tokio::task::spawn_blocking(move || agent_learning_api::open_env(&spec))
            .await
            .map_err(|e| Stop::Failed(format!("environment: {e}")))?
            .map_err(env_stop)?;
        let (mut env, state) = on_env(env, move |e| e.reset(seed)).await?;
        let mut state = state.map_err(env_stop)?;
        let mut steps: Vec<pb::LiveStep> = Vec::new();
        let mut truncated = true;
        while steps.len() < cfg.max_steps as usize {
            if ctx.cancel.is_cancelled() {
                return Err(Stop::Cancelled);
            }
            let (e, listed) = on_env(env, |e| e.actions()).await?;
            env = e;
            let valid = listed
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| plan.demo_actions.clone());
            if valid.is_empty() {
                return Err(Stop::Failed(format!(
                    "{} lists no actions and the namespace's demos name none",
                    ctx.env
                )));
            }
            let history: Vec<PastStep> = steps
                .iter()
                .rev()
                .take(cfg.history as usize)
                .rev()
                .map(|s| PastStep {
                    state: s.state.clone(),
                    action: s.action.clone(),
                    next_state: s.next_state.clone(),
                })
                .collect();
            let d = self
                .decide_patiently(
                    ctx,
                    DecideRequest {
                        namespace: ctx.ns.to_owned(),
                        state: state.clone(),
                        valid_actions: valid,
                        policy_version: None,
                        history,
                    },
                )
                .await?;
            let action = d.action.clone();
            let (e, stepped) = on_env(env, move |e| e.step(&action)).await?;
            env = e;
            let mut step = pb::LiveStep {
                state: state.clone(),
                action: d.action,
                next_state: String::new(),
                decision_id: d.decision_id,
                bullet_ids: d.bullet_ids,
                reasoning: clip_bytes(&d.reasoning, REASONING_KEPT).to_owned(),
                invalid: false,
            };
            match stepped {
                Ok(s) => {
                    step.next_state = s.state.clone();
                    steps.push(step);
                    state = s.state;
                    if s.done {
                        truncated = false;
                        break;
                    }
                }
                Err(EnvError::InvalidAction { .. }) => {
                    step.next_state = state.clone();
                    step.invalid = true;
                    steps.push(step);
                }
                Err(EnvError::Done) => {
                    truncated = false;
                    break;
                }
                Err(e) => return Err(env_stop(e)),
            }
        }
        let (_env, outcome) = on_env(env, |e| e.outcome()).await?;
        Ok(pb::LiveEpisode {
            id: episode_id(ctx.run_id, index),
            namespace: ctx.ns.to_owned(),
            run_id: ctx.run_id.to_owned(),
            env: ctx.env.to_owned(),
            seed,
            index,
            steps,
            outcome_known: outcome.is_some() || truncated,
            // An episode the step limit cut short failed, whatever the environment says.
            success: !truncated && outcome.is_some_and(|o| o.success),
            truncated,
        })
    }

    /// Decide, asked again while the policy is slow or unavailable (a local model busy with
    /// reflections answers late), for up to `pipeline.outage_tolerance_secs`: the episode goes
    /// on from where it was instead of failing.
    async fn decide_patiently(
        &self,
        ctx: &LiveCtx<'_>,
        req: DecideRequest,
    ) -> Result<agent_learning_api::Decision, Stop> {
        let tolerance = Duration::from_secs(self.settings.pipeline.outage_tolerance_secs);
        let since = Instant::now();
        let mut pause = Duration::from_millis(200);
        loop {
            let answer = tokio::select! {
                _ = ctx.cancel.cancelled() => return Err(Stop::Cancelled),
                d = self.peers.policy.decide(req.clone()) => d,
            };
            match answer.map_err(Stop::from) {
                Ok(d) => return Ok(d),
                Err(Stop::Transient(why)) if since.elapsed() < tolerance => {
                    tracing::info!(run = %ctx.run_id, error = %why, "Decide did not answer; asking again");
                    tokio::select! {
                        _ = ctx.cancel.cancelled() => return Err(Stop::Cancelled),
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn record(
        &self,
        ctx: &LiveCtx<'_>,
        e: &pb::LiveEpisode,
    ) -> Result<(LiveEpisodeRecord, Vec<u8>), Stop> {
        let payload = e.encode_to_vec();
        self.store
            .insert_live_episode(NewLiveEpisode {
                id: &e.id,
                run_id: ctx.run_id,
                namespace: ctx.ns,
                index: e.index,
                seed: e.seed,
                steps: e.steps.len() as u32,
                decisions: e.steps.len() as u32,
                outcome_known: e.outcome_known,
                success: e.success,
                truncated: e.truncated,
                payload: &payload,
            })
            .await?;
        let record = LiveEpisodeRecord {
            id: e.id.clone(),
            index: e.index,
            seed: e.seed,
            steps: e.steps.len() as u32,
            decisions: e.steps.len() as u32,
            outcome_known: e.outcome_known,
            success: e.success,
            truncated: e.truncated,
            published: false,
            voted: false,
            created_at: chrono::Utc::now(),
        };
        Ok((record, payload))
    }

    /// The episode's votes and publication, each once whatever happened before.
    async fn settle(
        &self,
        ctx: &LiveCtx<'_>,
        cfg: &LiveConfig,
        r: &LiveEpisodeRecord,
        payload: Option<&[u8]>,
    ) -> Result<(), Stop> {
        if r.voted && r.published {
            return Ok(());
        }
        let payload = match payload {
            Some(p) => p.to_vec(),
            None => self
                .store
                .live_episode_payload(&r.id)
                .await?
                .ok_or_else(|| Stop::Failed(format!("episode {} lost its record", r.id)))?,
        };
        let episode = pb::LiveEpisode::decode(payload.as_slice())
            .map_err(|e| Stop::Failed(format!("stored episode {}: {e}", r.id)))?;
        if !r.voted {
            // Execution feedback: one vote per bullet per episode, from the outcome.
            let bullets: BTreeSet<&str> = episode
                .steps
                .iter()
                .flat_map(|s| s.bullet_ids.iter().map(String::as_str))
                .collect();
            if episode.outcome_known && !bullets.is_empty() {
                let items = bullets
                    .iter()
                    .map(|b| FeedbackItem {
                        bullet_id: (*b).to_owned(),
                        helpful: u32::from(episode.success),
                        harmful: u32::from(!episode.success),
                    })
                    .collect();
                self.peers
                    .curator
                    .record_feedback(ctx.ns, &format!("episode:{}", r.id), items)
                    .await?;
            }
            self.store.mark_episode_voted(&r.id).await?;
        }
        if !r.published {
            if cfg.reflected(r.index) {
                self.store
                    .publish_once(Outbox::Episode(&r.id), || async {
                        self.queue
                            .publish(streams::EPISODES, &r.id, &payload)
                            .await
                            .map(|_| ())
                            .map_err(Stop::from)
                    })
                    .await?;
            } else {
                self.store.mark_published(Outbox::Episode(&r.id)).await?;
            }
        }
        Ok(())
    }

    /// The progress line WatchRun shows.
    async fn pace_line(
        &self,
        ctx: &LiveCtx<'_>,
        cfg: &LiveConfig,
        all: &[LiveEpisodeRecord],
        pace: &Pace,
    ) -> Result<String, Stop> {
        let successes = all.iter().filter(|r| r.success).count();
        let window = cfg.stop_window.max(1) as usize;
        let recent = last_by_time(all, window);
        let recent_ok = recent.iter().filter(|r| r.success).count();
        let minutes = pace.started.elapsed().as_secs_f64() / 60.0;
        let per_min = if minutes > 0.0 {
            pace.played_here as f64 / minutes
        } else {
            0.0
        };
        let bullets = self.store.live_bullet_count(ctx.ns).await?;
        let c = self.store.run_counts(ctx.ns, ctx.run_id).await?;
        let h = self.peers.curator.health(ctx.ns).await?;
        let waiting = if c.pending_insights > 0 {
            format!(", {} waiting for a batch", c.pending_insights)
        } else {
            String::new()
        };
        Ok(format!(
            "{per_min:.1} episodes/min, success {successes}/{} (last {}: {recent_ok}), playbook {bullets} bullets, {} merges, {} reflections, {} curated{waiting}",
            all.len(),
            recent.len(),
            merges(&h),
            c.reflections,
            c.curated,
        ))
    }

    /// Waits until every episode sent to the reflectors is reflected on, and the curator has
    /// taken every valid reflection (or skipped it).
    async fn wait_for_learning(&self, ctx: &LiveCtx<'_>, cfg: &LiveConfig) -> Result<(), Stop> {
        let sent = self
            .store
            .live_episodes(ctx.run_id)
            .await?
            .iter()
            .filter(|r| cfg.reflected(r.index))
            .count() as u64;
        let stall = Duration::from_secs(cfg.stall_timeout_secs);
        let mut last = (u64::MAX, Instant::now());
        let mut drained_polls = 0;
        loop {
            let c = self.store.run_counts(ctx.ns, ctx.run_id).await?;
            let moved = c.reflections + c.curated;
            if moved != last.0 {
                last = (moved, Instant::now());
                drained_polls = 0;
                let _ = ctx.events.send(event(
                    ctx.run_id,
                    Some(RunStage::Live),
                    u64::from(cfg.episodes),
                    u64::from(cfg.episodes),
                    RunState::Running,
                    format!(
                        "learning from the episodes: {} of {sent} reflected, {} of {} valid reflections curated",
                        c.reflections, c.curated, c.reflections_valid
                    ),
                ));
            }
            if c.reflections >= sent {
                if c.pending_insights > 0 {
                    // No reflection is left to fill the run's last batch: the curator takes
                    // it as it is.
                    let done = self.peers.curator.flush_batch(ctx.ns, ctx.run_id).await?;
                    tracing::info!(
                        run = ctx.run_id,
                        insights = done.insights,
                        ops = done.ops,
                        "the run's last batch curated"
                    );
                } else if self.curation_over(&c, &mut drained_polls).await? {
                    return Ok(());
                }
            }
            if last.1.elapsed() > stall {
                let lag = self
                    .queue
                    .lag(streams::EPISODES, streams::REFLECTORS)
                    .await
                    .unwrap_or_default();
                return Err(Stop::Failed(format!(
                    "learning from the live episodes made no progress for {}s: {} of {sent} episodes reflected ({} undelivered, {} pending on {}), {} of {} reflections curated; are reflectors and the curator running?",
                    stall.as_secs(),
                    c.reflections,
                    lag.undelivered,
                    lag.pending,
                    streams::EPISODES,
                    c.curated,
                    c.reflections_valid
                )));
            }
            tokio::select! {
                _ = ctx.cancel.cancelled() => return Err(Stop::Cancelled),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn live_summary(
        &self,
        ctx: &LiveCtx<'_>,
        cfg: &LiveConfig,
        all: &[LiveEpisodeRecord],
        detail: &serde_json::Value,
        seconds: f64,
        stopped_early: bool,
    ) -> Result<serde_json::Value, Stop> {
        let c = self.store.run_counts(ctx.ns, ctx.run_id).await?;
        let h = self.peers.curator.health(ctx.ns).await?;
        let n = all.len();
        let successes = all.iter().filter(|r| r.success).count();
        let known = all.iter().filter(|r| r.outcome_known).count();
        let mut by_time: Vec<&LiveEpisodeRecord> = all.iter().collect();
        by_time.sort_by_key(|r| (r.created_at, r.index));
        let t0 = by_time.first().map(|r| r.created_at);
        let (lo, hi) = wilson(successes, n);
        let bullets_before = detail["bullets_before"].as_u64().unwrap_or(0);
        let merges_before = detail["merges_before"].as_u64().unwrap_or(0);
        Ok(json!({
            "run_id": ctx.run_id,
            "kind": "live",
            "namespace": ctx.ns,
            "env": ctx.env,
            "episodes": n,
            "episodes_requested": cfg.episodes,
            "stopped_early": stopped_early,
            "outcome_known": known,
            "successes": successes,
            "success_rate": successes as f64 / n.max(1) as f64,
            "wilson95": [lo, hi],
            "mean_steps": all.iter().map(|r| r.steps as f64).sum::<f64>() / n.max(1) as f64,
            "truncated": all.iter().filter(|r| r.truncated).count(),
            "decisions": all.iter().map(|r| r.decisions as u64).sum::<u64>(),
            "seconds": seconds,
            "episodes_per_minute": if seconds > 0.0 { n as f64 * 60.0 / seconds } else { 0.0 },
            "reflected": all.iter().filter(|r| cfg.reflected(r.index)).count(),
            "reflections": c.reflections,
            "reflections_valid": c.reflections_valid,
            "curated": c.curated,
            "curate_every": cfg.curate_every,
            "bullets_before": bullets_before,
            "bullets": self.store.live_bullet_count(ctx.ns).await?,
            "merges": merges(&h).saturating_sub(merges_before),
            "playbook": {"shadow": h.shadow, "staging": h.staging, "production": h.production, "quarantined": h.quarantined},
            "tokens": {"prompt": c.prompt_tokens, "completion": c.completion_tokens},
            "curve": by_time.iter().enumerate().map(|(i, r)| json!({
                "n": i + 1,
                "index": r.index,
                "seed": r.seed,
                "success": r.success,
                "steps": r.steps,
                "seconds": t0.map(|t| (r.created_at - t).num_milliseconds() as f64 / 1e3).unwrap_or(0.0),
            })).collect::<Vec<_>>(),
        }))
    }
}

use agent_learning_domain::wilson;

/// Insights the curator merged into an existing bullet, from its health counters.
fn merges(h: &agent_learning_api::Health) -> u64 {
    (h.merge_rate * h.insights_applied as f64).round() as u64
}

/// The `n` episodes that finished last.
fn last_by_time(all: &[LiveEpisodeRecord], n: usize) -> Vec<&LiveEpisodeRecord> {
    let mut by_time: Vec<&LiveEpisodeRecord> = all.iter().collect();
    by_time.sort_by_key(|r| (r.created_at, r.index));
    let skip = by_time.len().saturating_sub(n);
    by_time.into_iter().skip(skip).collect()
}

/// Whether the last `stop_window` episodes succeeded at least `stop_success_rate` of the time.
fn stop_reached(cfg: &LiveConfig, all: &[LiveEpisodeRecord]) -> bool {
    let window = cfg.stop_window.max(1) as usize;
    if cfg.stop_success_rate <= 0.0 || all.len() < window {
        return false;
    }
    let recent = last_by_time(all, window);
    let ok = recent.iter().filter(|r| r.success).count();
    ok as f64 / window as f64 >= cfg.stop_success_rate
}
