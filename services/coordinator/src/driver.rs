//! Driving a run through its stages.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use agent_learning_api::{ApiError, CompileRequest, Demo, ExploreRequest, RunEvent};
use agent_learning_domain::{RunStage, RunState, Transition};
use agent_learning_envs::parse_demos;
use agent_learning_queue::{QueueError, streams};
use agent_learning_store::{StageUpdate, StoreError};
use chrono::Utc;
use futures::StreamExt as _;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::TrainingConfig;
use crate::{Active, Coordinator};

const POLL: Duration = Duration::from_millis(500);
/// Transitions per Fit call. The world model embeds each call's states before it answers: a
/// small chunk keeps every call far inside the server's request timeout on a slow or busy CPU
/// (700 transitions in one call took over 60 s on two busy cores in a debug build), and the
/// stage's progress moves with each chunk.
const FIT_CHUNK: usize = 128;

pub(crate) fn event(
    run_id: &str,
    stage: Option<RunStage>,
    done: u64,
    total: u64,
    state: RunState,
    message: impl Into<String>,
) -> RunEvent {
    RunEvent {
        run_id: run_id.to_owned(),
        stage,
        done,
        total,
        state,
        message: message.into(),
        at: Utc::now(),
    }
}

/// Indexes of `n` transitions spread over `len`, held out of the fit; none when too few.
fn holdout_indexes(len: usize, n: usize) -> Vec<usize> {
    if n == 0 || len < 4 * n {
        return Vec::new();
    }
    let step = len / n;
    (0..n).map(|i| i * step + step / 2).collect()
}

pub(crate) enum Stop {
    Cancelled,
    Failed(String),
    /// An outage that may pass (a backend or peer not answering): the stage is tried again,
    /// for up to `pipeline.outage_tolerance_secs`.
    Transient(String),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        let transient = e.is_transient();
        let why = format!("record: {e}");
        if transient {
            Stop::Transient(why)
        } else {
            Stop::Failed(why)
        }
    }
}

impl From<QueueError> for Stop {
    fn from(e: QueueError) -> Self {
        let transient = e.is_transient();
        let why = format!("queue: {e}");
        if transient {
            Stop::Transient(why)
        } else {
            Stop::Failed(why)
        }
    }
}

impl From<ApiError> for Stop {
    fn from(e: ApiError) -> Self {
        let code = tonic_code(&e);
        let why = match e {
            ApiError::Remote(s) => format!("{}: {}", s.code(), s.message()),
            other => format!("{code}: {other}"),
        };
        match code {
            // A peer call that timed out reads as CANCELLED on this side: the peer was slow,
            // not the run cancelled.
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::ResourceExhausted
            | tonic::Code::Cancelled => Stop::Transient(why),
            _ => Stop::Failed(why),
        }
    }
}

/// A peer's failure reads as it did over the wire: its gRPC code, then its message.
fn tonic_code(e: &ApiError) -> tonic::Code {
    e.code()
}

struct Ctx<'a> {
    run_id: &'a str,
    ns: &'a str,
    env: &'a str,
    cfg: &'a TrainingConfig,
    demos: &'a [agent_learning_envs::Demo],
    cancel: &'a CancellationToken,
    events: &'a broadcast::Sender<RunEvent>,
}

impl Ctx<'_> {
    fn emit(&self, stage: RunStage, done: u64, total: u64, message: impl Into<String>) {
        let _ = self.events.send(event(
            self.run_id,
            Some(stage),
            done,
            total,
            RunState::Running,
            message,
        ));
    }

    /// Why reflection and curation have nothing to do in this run (an ablation), if so.
    fn no_playbook(&self) -> Option<&'static str> {
        if !self.cfg.explore {
            Some("config_json.explore is false")
        } else if !self.cfg.reflect {
            Some("config_json.reflect is false")
        } else {
            None
        }
    }

    async fn pause(&self) -> Result<(), Stop> {
        tokio::select! {
            _ = self.cancel.cancelled() => Err(Stop::Cancelled),
            _ = tokio::time::sleep(POLL) => Ok(()),
        }
    }
}

impl Coordinator {
    /// Takes the run's lease and drives it in the background, unless this coordinator drives
    /// it already or another one holds an unexpired lease on it. Returns whether it drives.
    pub(crate) async fn drive(&self, run_id: String) -> bool {
        let Some(me) = self.me.upgrade() else {
            return false; // the coordinator is being dropped
        };
        let mut active = self.active.lock().await;
        if active.contains_key(&run_id) {
            return true;
        }
        match self
            .store
            .claim_run(&run_id, &self.holder, self.lease)
            .await
        {
            Ok(true) => {}
            Ok(false) => return false,
            Err(e) => {
                tracing::warn!(run = %run_id, error = %e, "could not take the run's lease");
                return false;
            }
        }
        let (tx, _) = broadcast::channel(1024);
        let cancel = self.shutdown.child_token();
        active.insert(
            run_id.clone(),
            Active {
                cancel: cancel.clone(),
                events: tx.clone(),
            },
        );
        drop(active);
        tracing::info!(run = %run_id, holder = %self.holder, "driving run");
        let lost = Arc::new(AtomicBool::new(false));
        let keeper = tokio::spawn(me.clone().keep_lease(
            run_id.clone(),
            cancel.clone(),
            lost.clone(),
        ));
        tokio::spawn(async move {
            let outcome = me.run_stages(&run_id, &cancel, &tx).await;
            keeper.abort();
            let (state, error) = match outcome {
                _ if lost.load(Ordering::SeqCst) => {
                    // Another coordinator drives it now; this one writes nothing more.
                    tracing::warn!(run = %run_id, "lost the run's lease; stopped driving it");
                    me.active.lock().await.remove(&run_id);
                    return;
                }
                Ok(()) => (RunState::Succeeded, None),
                Err(_) if me.shutdown.is_cancelled() => {
                    // The process is stopping: the run stays running and its lease expires, so
                    // another coordinator (or this one restarted) takes it over.
                    me.active.lock().await.remove(&run_id);
                    return;
                }
                Err(Stop::Cancelled) => (RunState::Cancelled, None),
                Err(Stop::Failed(e) | Stop::Transient(e)) => (RunState::Failed, Some(e)),
            };
            // Conditional: a run cancelled elsewhere stays cancelled.
            let state = match me
                .store
                .advance_run(&run_id, state, None, error.as_deref())
                .await
            {
                Ok(true) => state,
                Ok(false) => me
                    .store
                    .run_state(&run_id)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(state),
                Err(e) => {
                    tracing::error!(run = %run_id, error = %e, "could not record the run's end");
                    state
                }
            };
            match &error {
                Some(e) => tracing::warn!(run = %run_id, error = %e, "run failed"),
                None => tracing::info!(run = %run_id, state = %state, "run ended"),
            }
            let _ = tx.send(event(&run_id, None, 0, 0, state, error.unwrap_or_default()));
            if let Err(e) = me.store.release_run(&run_id, &me.holder).await {
                tracing::warn!(run = %run_id, error = %e, "could not release the run's lease");
            }
            me.active.lock().await.remove(&run_id);
        });
        true
    }

    /// Renews the lease while the run is driven. Stops the driver when the lease is lost (it
    /// expired and another coordinator took it) or when the run was ended elsewhere (a
    /// CancelRun answered by another coordinator).
    async fn keep_lease(
        self: Arc<Self>,
        run_id: String,
        cancel: CancellationToken,
        lost: Arc<AtomicBool>,
    ) {
        let every = self.lease / 3;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.store.run_state(&run_id).await {
                Ok(Some(s)) if s.terminal() => {
                    tracing::info!(run = %run_id, state = %s, "run ended elsewhere; stopping");
                    cancel.cancel();
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(run = %run_id, error = %e, "could not read the run's state")
                }
            }
            match self
                .store
                .claim_run(&run_id, &self.holder, self.lease)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    lost.store(true, Ordering::SeqCst);
                    cancel.cancel();
                    return;
                }
                // The database may come back before the lease runs out; if it does not,
                // the next renewal finds the lease taken.
                Err(e) => {
                    tracing::warn!(run = %run_id, error = %e, "could not renew the run's lease")
                }
            }
        }
    }

    /// Drives every unfinished run that no live coordinator holds: those of a coordinator that
    /// died, and those left when this one stopped. Returns how many it took.
    pub(crate) async fn sweep(&self) -> Result<usize, StoreError> {
        let mut taken = 0;
        for id in self.store.unfinished_runs().await? {
            if self.active.lock().await.contains_key(&id) {
                continue;
            }
            if self.drive(id.clone()).await {
                tracing::info!(run = %id, "took over unfinished run");
                taken += 1;
            }
        }
        Ok(taken)
    }

    pub(crate) async fn cancel(&self, run_id: &str) -> bool {
        match self.active.lock().await.get(run_id) {
            Some(a) => {
                a.cancel.cancel();
                true
            }
            None => false,
        }
    }

    pub(crate) async fn subscribe(&self, run_id: &str) -> Option<broadcast::Receiver<RunEvent>> {
        self.active
            .lock()
            .await
            .get(run_id)
            .map(|a| a.events.subscribe())
    }

    async fn run_stages(
        &self,
        run_id: &str,
        cancel: &CancellationToken,
        events: &broadcast::Sender<RunEvent>,
    ) -> Result<(), Stop> {
        let (run, stages) = self.store.load_run(run_id).await?;
        if run.kind == agent_learning_domain::run_kind::LIVE {
            let cfg: crate::LiveConfig = serde_json::from_str(&run.config)
                .map_err(|e| Stop::Failed(format!("stored live config: {e}")))?;
            let ctx = crate::live::LiveCtx {
                run_id,
                ns: &run.namespace,
                env: &run.env,
                cancel,
                events,
            };
            // Idempotent like a stage: after an outage it goes on from what was recorded.
            return self
                .with_outage_tolerance(
                    cancel,
                    || self.run_live(&ctx, &cfg),
                    |why| tracing::warn!(run = %run_id, error = %why, "live loop interrupted; going on"),
                )
                .await;
        }
        let cfg: TrainingConfig = serde_json::from_str(&run.config)
            .map_err(|e| Stop::Failed(format!("stored run config: {e}")))?;
        let demos = parse_demos(run.demos.as_bytes(), "stored demos")
            .map_err(|e| Stop::Failed(e.to_string()))?;
        let ctx = Ctx {
            run_id,
            ns: &run.namespace,
            env: &run.env,
            cfg: &cfg,
            demos: &demos,
            cancel,
            events,
        };
        for &stage in RunStage::TRAINING {
            let row = stages.iter().find(|s| s.stage == stage);
            if row.is_some_and(|r| r.finished) {
                continue;
            }
            // A stage is idempotent: after an outage it runs again from what was recorded.
            self.with_outage_tolerance(
                cancel,
                || self.run_stage(&ctx, stage, row.map(|r| r.seconds)),
                |why| {
                    tracing::warn!(run = %run_id, %stage, error = %why, "stage interrupted; trying again");
                    ctx.emit(
                        stage,
                        0,
                        0,
                        format!("{stage} interrupted ({why}); trying again"),
                    );
                },
            )
            .await?;
        }
        let summary = self.summary(&ctx).await?;
        self.store
            .set_run_summary(run_id, &summary.to_string())
            .await?;
        Ok(())
    }

    /// Runs `attempt` until it ends other than by a transient failure (an outage of a backend
    /// or peer), backing off between attempts, for up to `pipeline.outage_tolerance_secs` per
    /// outage. An attempt that ran longer than that made progress before failing: its failure
    /// starts a new outage.
    async fn with_outage_tolerance<F, Fut>(
        &self,
        cancel: &CancellationToken,
        mut attempt: F,
        mut on_retry: impl FnMut(&str),
    ) -> Result<(), Stop>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), Stop>>,
    {
        let tolerance = Duration::from_secs(self.settings.pipeline.outage_tolerance_secs);
        let mut outage_since: Option<Instant> = None;
        let mut pause = Duration::from_millis(500);
        loop {
            let started = Instant::now();
            let outcome = attempt().await;
            if started.elapsed() > tolerance {
                outage_since = None;
                pause = Duration::from_millis(500);
            }
            match outcome {
                Err(Stop::Transient(why))
                    if outage_since.get_or_insert_with(Instant::now).elapsed() < tolerance =>
                {
                    on_retry(&why);
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(Stop::Cancelled),
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
                Err(Stop::Transient(why)) => {
                    return Err(Stop::Failed(format!(
                        "{why} (still failing after pipeline.outage_tolerance_secs = {}s)",
                        tolerance.as_secs()
                    )));
                }
                other => return other,
            }
        }
    }

    /// One stage, from marking it current to recording it finished.
    async fn run_stage(
        &self,
        ctx: &Ctx<'_>,
        stage: RunStage,
        recorded_seconds: Option<f64>,
    ) -> Result<(), Stop> {
        let run_id = ctx.run_id;
        if ctx.cancel.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        if !self
            .store
            .advance_run(run_id, RunState::Running, Some(stage), None)
            .await?
        {
            return Err(Stop::Cancelled); // ended elsewhere
        }
        ctx.emit(stage, 0, 0, format!("{stage} started"));
        let base = recorded_seconds.unwrap_or(0.0);
        let started = Instant::now();
        let (done, total, detail) = match stage {
            RunStage::Fit => self.fit(ctx).await?,
            RunStage::Explore => self.explore(ctx, base, started).await?,
            RunStage::Reflect => self.reflect(ctx, base, started).await?,
            RunStage::Curate => self.curate(ctx, base, started).await?,
            RunStage::Compile => self.compile(ctx).await?,
            RunStage::Live => return Err(Stop::Failed("a training run has no live stage".into())),
        };
        let seconds = base + started.elapsed().as_secs_f64();
        self.store
            .update_stage(
                run_id,
                stage,
                StageUpdate {
                    done,
                    total,
                    seconds,
                    finished: true,
                    detail: Some(&detail),
                },
            )
            .await?;
        ctx.emit(
            stage,
            done,
            total,
            format!("{stage} finished in {seconds:.1}s"),
        );
        Ok(())
    }

    async fn progress(
        &self,
        ctx: &Ctx<'_>,
        stage: RunStage,
        done: u64,
        total: u64,
        base: f64,
        started: Instant,
    ) -> Result<(), Stop> {
        self.store
            .update_stage(
                ctx.run_id,
                stage,
                StageUpdate {
                    done,
                    total,
                    seconds: base + started.elapsed().as_secs_f64(),
                    finished: false,
                    detail: None,
                },
            )
            .await?;
        ctx.emit(stage, done, total, "");
        Ok(())
    }

    async fn fit(&self, ctx: &Ctx<'_>) -> Result<(u64, u64, serde_json::Value), Stop> {
        let all: Vec<Transition> = ctx.demos.iter().flat_map(|d| Demo::from(d).steps).collect();
        let held = holdout_indexes(all.len(), ctx.cfg.holdout as usize);
        let (held_out, fit): (Vec<_>, Vec<_>) = all
            .into_iter()
            .enumerate()
            .partition(|(i, _)| held.binary_search(i).is_ok());
        let fit: Vec<Transition> = fit.into_iter().map(|(_, t)| t).collect();
        let held_out: Vec<Transition> = held_out.into_iter().map(|(_, t)| t).collect();
        let wm = &self.peers.world_model;
        let total = fit.len() as u64;
        let (mut stored, mut duplicates) = (0, 0);
        for chunk in fit.chunks(FIT_CHUNK) {
            let r = tokio::select! {
                _ = ctx.cancel.cancelled() => return Err(Stop::Cancelled),
                r = wm.fit(ctx.ns, chunk.to_vec(), "expert") => r?,
            };
            stored += r.stored;
            duplicates += r.duplicates;
            ctx.emit(RunStage::Fit, stored + duplicates, total, "");
        }
        let mut detail = json!({"transitions": total, "stored": stored, "duplicates": duplicates, "held_out": held_out.len()});
        if !held_out.is_empty() {
            // One transition per call: each call stays well inside the server's request
            // timeout however slow the model, and progress shows.
            let n = held_out.len();
            let (mut exact, mut similarity) = (0.0, 0.0);
            for (i, t) in held_out.iter().cloned().enumerate() {
                ctx.emit(
                    RunStage::Fit,
                    total,
                    total,
                    format!("evaluating the world model: {i} of {n} held-out transitions"),
                );
                let e = tokio::select! {
                    _ = ctx.cancel.cancelled() => return Err(Stop::Cancelled),
                    r = wm.evaluate(ctx.ns, vec![t]) => r?,
                };
                exact += e.exact_match;
                similarity += e.mean_similarity;
            }
            detail["exact_match"] = json!(exact / n as f64);
            detail["mean_similarity"] = json!(similarity / n as f64);
            // Measured, they join the rest: every demonstrated step is an exemplar Decide can
            // find (a held-out state missing from the index cost the policy its own
            // demonstrations there).
            let r = tokio::select! {
                _ = ctx.cancel.cancelled() => return Err(Stop::Cancelled),
                r = wm.fit(ctx.ns, held_out, "expert") => r?,
            };
            detail["stored"] = json!(stored + r.stored);
            detail["duplicates"] = json!(duplicates + r.duplicates);
        }
        Ok((total, total, detail))
    }

    async fn explore(
        &self,
        ctx: &Ctx<'_>,
        base: f64,
        started: Instant,
    ) -> Result<(u64, u64, serde_json::Value), Stop> {
        if !ctx.cfg.explore {
            return Ok((0, 0, skipped("config_json.explore is false")));
        }
        // Groups exist before anything is published, so no entry is missed by a late consumer.
        self.queue
            .ensure_group(streams::ROLLOUTS, streams::REFLECTORS)
            .await?;
        self.queue
            .ensure_group(streams::REFLECTIONS, streams::CURATORS)
            .await?;
        let points = if ctx.cfg.every_step {
            0
        } else {
            ctx.cfg.branch_points.max(1)
        };
        let expected: u64 = ctx
            .demos
            .iter()
            .map(|d| {
                let n = if points == 0 || points as usize >= d.steps.len() {
                    d.steps.len()
                } else {
                    points as usize
                };
                (n * (1 + ctx.cfg.alternatives as usize)) as u64
            })
            .sum();
        let mut stream = self
            .peers
            .explorer
            .explore(ExploreRequest {
                namespace: ctx.ns.to_owned(),
                run_id: ctx.run_id.to_owned(),
                demos: ctx.demos.iter().map(Demo::from).collect(),
                env: ctx.env.to_owned(),
                alternatives: ctx.cfg.alternatives,
                branch_points: points,
                every_step: ctx.cfg.every_step,
                // Without reflection nobody is to read them: stored, not published.
                publish: ctx.cfg.reflect,
            })
            .await?;
        let mut n = 0u64;
        loop {
            let next = tokio::select! {
                _ = ctx.cancel.cancelled() => return Err(Stop::Cancelled),
                m = stream.next() => m.transpose()?,
            };
            let Some(_rollout) = next else { break };
            n += 1;
            if n.is_multiple_of(25) {
                self.progress(ctx, RunStage::Explore, n, expected.max(n), base, started)
                    .await?;
            }
        }
        let c = self.store.run_counts(ctx.ns, ctx.run_id).await?;
        Ok((
            c.rollouts,
            c.rollouts,
            json!({"rollouts": c.rollouts, "branch_points": c.groups, "by_source": c.rollouts_by_source}),
        ))
    }

    async fn reflect(
        &self,
        ctx: &Ctx<'_>,
        base: f64,
        started: Instant,
    ) -> Result<(u64, u64, serde_json::Value), Stop> {
        if let Some(why) = ctx.no_playbook() {
            return Ok((0, 0, skipped(why)));
        }
        let stall = Duration::from_secs(ctx.cfg.stall_timeout_secs);
        let mut last = (u64::MAX, Instant::now());
        loop {
            let c = self.store.run_counts(ctx.ns, ctx.run_id).await?;
            if c.reflections != last.0 {
                last = (c.reflections, Instant::now());
                self.progress(
                    ctx,
                    RunStage::Reflect,
                    c.reflections,
                    c.groups,
                    base,
                    started,
                )
                .await?;
            }
            if c.reflections >= c.groups {
                return Ok((
                    c.reflections,
                    c.groups,
                    json!({"reflections": c.reflections, "valid": c.reflections_valid}),
                ));
            }
            if last.1.elapsed() > stall {
                let lag = self
                    .queue
                    .lag(streams::ROLLOUTS, streams::REFLECTORS)
                    .await
                    .unwrap_or_default();
                return Err(Stop::Failed(format!(
                    "reflection made no progress for {}s: {} of {} branch points reflected ({} undelivered, {} pending, {} dead-lettered on {}); are reflectors running?",
                    stall.as_secs(),
                    c.reflections,
                    c.groups,
                    lag.undelivered,
                    lag.pending,
                    lag.dead,
                    streams::ROLLOUTS
                )));
            }
            ctx.pause().await?;
        }
    }

    async fn curate(
        &self,
        ctx: &Ctx<'_>,
        base: f64,
        started: Instant,
    ) -> Result<(u64, u64, serde_json::Value), Stop> {
        if let Some(why) = ctx.no_playbook() {
            return Ok((0, 0, skipped(why)));
        }
        let stall = Duration::from_secs(ctx.cfg.stall_timeout_secs);
        let mut last = (u64::MAX, Instant::now());
        let mut drained_polls = 0;
        loop {
            let c = self.store.run_counts(ctx.ns, ctx.run_id).await?;
            if c.curated != last.0 {
                last = (c.curated, Instant::now());
                drained_polls = 0;
                self.progress(
                    ctx,
                    RunStage::Curate,
                    c.curated,
                    c.reflections_valid,
                    base,
                    started,
                )
                .await?;
            }
            let done = || {
                Ok((
                    c.curated,
                    c.reflections_valid,
                    json!({"curated": c.curated, "skipped": c.reflections_valid.saturating_sub(c.curated)}),
                ))
            };
            if self.curation_over(&c, &mut drained_polls).await? {
                return done();
            }
            if last.1.elapsed() > stall {
                return Err(Stop::Failed(format!(
                    "curation made no progress for {}s: {} of {} reflections curated; is the curator running?",
                    stall.as_secs(),
                    c.curated,
                    c.reflections_valid
                )));
            }
            ctx.pause().await?;
        }
    }

    /// Whether curating a run's valid reflections is over: all of them curated, or the
    /// curator's stream found drained on four polls since the count last moved (counted in
    /// `drained_polls`, which the caller resets when it moves): the curator skips what it
    /// rejects, so the rest was skipped.
    pub(crate) async fn curation_over(
        &self,
        c: &agent_learning_domain::RunCounts,
        drained_polls: &mut u32,
    ) -> Result<bool, Stop> {
        if c.pending_insights > 0 {
            return Ok(false);
        }
        if c.curated >= c.reflections_valid {
            return Ok(true);
        }
        let lag = self
            .queue
            .lag(streams::REFLECTIONS, streams::CURATORS)
            .await?;
        if lag.drained() {
            *drained_polls += 1;
        }
        Ok(*drained_polls >= 4)
    }

    async fn compile(&self, ctx: &Ctx<'_>) -> Result<(u64, u64, serde_json::Value), Stop> {
        let v = self
            .peers
            .policy
            .compile(CompileRequest {
                namespace: ctx.ns.to_owned(),
                instructions_template: Some(ctx.cfg.instructions_template.clone()),
                exemplars_k: Some(ctx.cfg.exemplars_k),
                min_stage: Some(ctx.cfg.min_stage),
                token_budget: Some(ctx.cfg.token_budget),
            })
            .await?;
        // The summary keeps the version as the contract spells it.
        Ok((1, 1, json!({"policy_version": v.version.to_string()})))
    }

    async fn summary(&self, ctx: &Ctx<'_>) -> Result<serde_json::Value, Stop> {
        let (_, stages) = self.store.load_run(ctx.run_id).await?;
        let c = self.store.run_counts(ctx.ns, ctx.run_id).await?;
        let detail = |name: &str| -> serde_json::Value {
            stages
                .iter()
                .find(|s| s.stage.as_str() == name)
                .and_then(|s| serde_json::from_str(&s.detail).ok())
                .unwrap_or_else(|| json!({}))
        };
        let fit = detail("fit");
        Ok(json!({
            "run_id": ctx.run_id,
            "namespace": ctx.ns,
            "env": ctx.env,
            "demos": ctx.demos.len(),
            "transitions": fit["transitions"],
            "rollouts": c.rollouts,
            "rollouts_by_source": c.rollouts_by_source,
            "branch_points": c.groups,
            "reflections": c.reflections,
            "reflections_valid": c.reflections_valid,
            "curated": c.curated,
            "bullets": self.store.live_bullet_count(ctx.ns).await?,
            "policy_version": detail("compile")["policy_version"],
            "world_model": {
                "held_out": fit["held_out"],
                "exact_match": fit["exact_match"],
                "mean_similarity": fit["mean_similarity"],
            },
            "tokens": {"prompt": c.prompt_tokens, "completion": c.completion_tokens},
            "ablation": {"explore": ctx.cfg.explore, "reflect": ctx.cfg.reflect},
            "stages": stages.iter().map(|s| json!({"stage": s.stage, "seconds": s.seconds, "done": s.done, "total": s.total})).collect::<Vec<_>>(),
        }))
    }
}

/// A stage's detail when an ablation leaves it out.
fn skipped(why: &str) -> serde_json::Value {
    json!({"skipped": why})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdout_spreads_and_leaves_enough_to_fit() {
        assert_eq!(holdout_indexes(100, 4), [12, 37, 62, 87]);
        assert!(
            holdout_indexes(10, 4).is_empty(),
            "too few transitions: hold none out"
        );
        assert!(holdout_indexes(100, 0).is_empty());
    }
}
