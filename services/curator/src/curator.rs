use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use agent_learning_domain::{
    Bullet, BulletEvent, DeltaKind, DeltaOp, Insight, InvalidInput, PromotionGates, Stage,
    validate_namespace,
};
use agent_learning_embed::{EmbedError, Embedder, cosine};
use agent_learning_store::{
    BulletPage, CurationChange, IndexedBullet, ListFilter, NewBullet, Store, StoreError,
};
use agent_learning_vector::{Filter, Point, Search, Upkeep, VectorError, VectorIndex};
use tracing::{info, warn};
use uuid::Uuid;

pub use agent_learning_api::{BatchFlushed, FeedbackItem, Health, PlaybookPage, PlaybookQuery};

use crate::judge::{Judgement, MergeJudge, Nearest};
use crate::render;

/// Namespace for deterministic bullet ids: the same insight always creates the same bullet.
const BULLET_ID_NS: Uuid = Uuid::from_u128(0x8f0c_5a4e_2b1d_4c7a_9e3f_6d2b_1a0c_7e55);
/// Candidates fetched from the index before ranking for RenderContext.
const RENDER_CANDIDATES: usize = 64;
const MAX_ID_BYTES: usize = 128;
const MAX_SOURCE_BYTES: usize = 512;
const MAX_QUERY_BYTES: usize = agent_learning_domain::MAX_STATE_BYTES;
const MAX_FEEDBACK_ITEMS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum CuratorError {
    #[error("invalid argument: {0}")]
    Invalid(#[from] InvalidInput),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Rejected(String),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Vector(#[from] VectorError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
}

impl From<StoreError> for CuratorError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { what, id } => {
                CuratorError::NotFound(format!("{what} {id} not found"))
            }
            StoreError::Rejected(msg) => CuratorError::Rejected(msg),
            other => CuratorError::Store(other),
        }
    }
}

type Result<T, E = CuratorError> = std::result::Result<T, E>;

/// What the playbook is searched with: a text to embed, or its embedding already made.
enum Query<'a> {
    Text(&'a str),
    Vector(Vec<f32>),
}

/// A curation's result with a refusal (invalid input, which no retry changes) logged and
/// turned into `None`, so it does not hold up what comes after it. `what` and `id` name the
/// refused thing in the log.
pub fn unless_refused<T>(r: Result<T>, what: &str, id: &str) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(CuratorError::Invalid(e)) => {
            warn!(what, id, error = %e, "refused by curation; skipped");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[derive(Debug, Clone)]
pub struct CuratorOptions {
    pub merge_threshold: f32,
    pub sections: Vec<String>,
    pub max_content_bytes: usize,
    pub max_insights_per_request: usize,
    pub gates: PromotionGates,
    /// The vector collection holding bullet embeddings.
    pub collection: String,
    /// Index writes after which the index's search structures are rebuilt in the background,
    /// so search cost stays flat as the playbook grows; 0 never rebuilds.
    pub optimize_after_writes: usize,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReconcileReport {
    pub upserted: usize,
    pub deleted: usize,
    pub checked: usize,
}

/// Curation logic over the record (source of truth), the vector index and the embedder.
pub struct Curator {
    store: Store,
    index: Arc<dyn VectorIndex>,
    embedder: Arc<dyn Embedder>,
    judge: Arc<dyn MergeJudge>,
    opts: CuratorOptions,
    // Curation of one namespace is serialised: two concurrent batches must not both ADD the
    // same knowledge.
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Rebuilds the index's search structures after `optimize_after_writes` writes.
    upkeep: Upkeep,
    /// Each run's `curate_every`, read once from the record (a run's config never changes).
    batch_sizes: std::sync::Mutex<HashMap<String, usize>>,
}

fn point(b: &IndexedBullet) -> Point {
    Point {
        id: b.id,
        vector: b.embedding.clone(),
        payload: BTreeMap::from([
            ("namespace".to_owned(), b.namespace.clone()),
            ("section".to_owned(), b.section.clone()),
            ("stage".to_owned(), b.stage.as_str().to_owned()),
        ]),
    }
}

fn parse_bullet_id(field: &str, s: &str) -> Result<Uuid> {
    Uuid::parse_str(s)
        .map_err(|_| InvalidInput::new(field, format!("{s:?} is not a bullet id (a UUID)")).into())
}

impl Curator {
    pub const KEYWORD_FIELDS: [&'static str; 3] = ["namespace", "section", "stage"];

    pub fn new(
        store: Store,
        index: Arc<dyn VectorIndex>,
        embedder: Arc<dyn Embedder>,
        judge: Arc<dyn MergeJudge>,
        opts: CuratorOptions,
    ) -> Self {
        let upkeep = Upkeep::new(index.clone(), &opts.collection, opts.optimize_after_writes);
        Self {
            store,
            index,
            embedder,
            judge,
            opts,
            locks: Default::default(),
            upkeep,
            batch_sizes: Default::default(),
        }
    }

    pub fn options(&self) -> &CuratorOptions {
        &self.opts
    }

    /// Creates the collection and heals any divergence between the record and the index (a
    /// process killed between the two writes). Call once at start, before serving.
    pub async fn start(&self) -> Result<ReconcileReport> {
        self.index
            .ensure_collection(
                &self.opts.collection,
                self.embedder.dim(),
                &Self::KEYWORD_FIELDS,
            )
            .await?;
        let report = self.reconcile().await?;
        self.upkeep
            .opened_with(report.checked.saturating_sub(report.upserted) as u64);
        self.upkeep.note_writes(report.upserted);
        info!(
            checked = report.checked,
            upserted = report.upserted,
            deleted = report.deleted,
            "vector index reconciled with the record"
        );
        Ok(report)
    }

    /// Whether `run_id` names a run that was cancelled.
    pub async fn run_cancelled(&self, run_id: &str) -> Result<bool> {
        Ok(self.store.run_state(run_id).await? == Some(agent_learning_domain::RunState::Cancelled))
    }

    /// How many valid reflections of the run are curated together: a live run's
    /// `curate_every`; 1 for any other run, and for a run the record does not hold.
    pub async fn curate_every(&self, run_id: &str) -> Result<usize> {
        if run_id.is_empty() {
            return Ok(1);
        }
        if let Some(n) = self.lock_batch_sizes().get(run_id) {
            return Ok(*n);
        }
        let n = match self.store.load_run(run_id).await {
            Ok((run, _)) if run.kind == agent_learning_domain::run_kind::LIVE => {
                serde_json::from_str::<serde_json::Value>(&run.config)
                    .ok()
                    .and_then(|c| c["curate_every"].as_u64())
                    .map_or(1, |n| n.clamp(1, 10_000) as usize)
            }
            Ok(_) | Err(StoreError::NotFound { .. }) => 1,
            Err(e) => return Err(e.into()),
        };
        let mut sizes = self.lock_batch_sizes();
        if sizes.len() >= 10_000 {
            sizes.clear();
        }
        sizes.insert(run_id.to_owned(), n);
        Ok(n)
    }

    fn lock_batch_sizes(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.batch_sizes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Curates a valid reflection's insight: at once, or with its run's batch of
    /// `curate_every` (kept in the record until the batch is full). Returns the operations
    /// applied, none while the batch fills.
    pub async fn curate_reflection(
        &self,
        run_id: &str,
        ns: &str,
        insight: Insight,
    ) -> Result<usize> {
        let every = self.curate_every(run_id).await?;
        if every <= 1 {
            return Ok(self.curate(ns, std::slice::from_ref(&insight)).await?.len());
        }
        self.store.add_pending_insight(run_id, ns, &insight).await?;
        Ok(self.flush_pending(run_id, None, every).await?.ops as usize)
    }

    /// FlushBatch: the insights run `run_id` left waiting in `ns`, curated however few they
    /// are, because the run will send no more.
    pub async fn flush_batch(&self, ns: &str, run_id: &str) -> Result<BatchFlushed> {
        validate_namespace("namespace", ns)?;
        if run_id.is_empty() {
            return Err(InvalidInput::new("run_id", "must not be empty").into());
        }
        if run_id.len() > MAX_ID_BYTES {
            return Err(
                InvalidInput::new("run_id", format!("at most {MAX_ID_BYTES} bytes")).into(),
            );
        }
        self.flush_pending(run_id, Some(ns), 1).await
    }

    /// Curates the run's waiting insights (those of `only_ns`, when given), oldest first, when
    /// at least `at_least` wait, then removes them. An insight the curation refuses is
    /// skipped, not left to block its batch.
    async fn flush_pending(
        &self,
        run_id: &str,
        only_ns: Option<&str>,
        at_least: usize,
    ) -> Result<BatchFlushed> {
        let pending: Vec<(String, Insight)> = self
            .store
            .pending_insights(run_id)
            .await?
            .into_iter()
            .filter(|(ns, _)| only_ns.is_none_or(|only| only == ns))
            .collect();
        if pending.is_empty() || pending.len() < at_least {
            return Ok(BatchFlushed::default());
        }
        let mut by_ns: BTreeMap<&str, Vec<Insight>> = BTreeMap::new();
        for (ns, i) in &pending {
            by_ns.entry(ns).or_default().push(i.clone());
        }
        let mut ops = 0;
        for (ns, insights) in by_ns {
            for chunk in insights.chunks(self.opts.max_insights_per_request.max(1)) {
                ops += match self.curate(ns, chunk).await {
                    Err(CuratorError::Invalid(e)) => {
                        warn!(run = run_id, error = %e, "a batch was refused; curating its insights one by one");
                        let mut n = 0;
                        for i in chunk {
                            let r = self.curate(ns, std::slice::from_ref(i)).await;
                            n += unless_refused(r, "insight", &i.id)?.map_or(0, |o| o.len());
                        }
                        n
                    }
                    r => r?.len(),
                };
            }
        }
        let ids: Vec<String> = pending.into_iter().map(|(_, i)| i.id).collect();
        self.store.remove_pending_insights(&ids).await?;
        info!(run = run_id, insights = ids.len(), ops, "curated a batch");
        Ok(BatchFlushed {
            insights: ids.len() as u64,
            ops: ops as u64,
        })
    }

    /// Batches that must not wait longer: a cancelled run's are dropped; a run that ended, or
    /// whose oldest insight has waited `max_wait`, has its batch curated as it is. Returns the
    /// operations applied.
    pub async fn flush_stale(&self, max_wait: std::time::Duration) -> Result<usize> {
        let mut applied = 0;
        for p in self.store.pending_runs().await? {
            let waited = (chrono::Utc::now() - p.oldest).to_std().unwrap_or_default();
            match self.store.run_state(&p.run_id).await? {
                Some(agent_learning_domain::RunState::Cancelled) => {
                    let ids: Vec<String> = self
                        .store
                        .pending_insights(&p.run_id)
                        .await?
                        .into_iter()
                        .map(|(_, i)| i.id)
                        .collect();
                    self.store.remove_pending_insights(&ids).await?;
                    info!(run = %p.run_id, dropped = ids.len(), "run cancelled; its waiting insights dropped");
                }
                Some(
                    agent_learning_domain::RunState::Pending
                    | agent_learning_domain::RunState::Running,
                ) if waited < max_wait => {}
                _ => applied += self.flush_pending(&p.run_id, None, 1).await?.ops as usize,
            }
        }
        Ok(applied)
    }

    /// Checks that every dependency answers.
    pub async fn ready(&self) -> Result<()> {
        self.store.ping().await?;
        self.index.count(&self.opts.collection).await?;
        self.embedder.embed(vec!["ready".into()]).await?;
        Ok(())
    }

    async fn ns_lock(&self, ns: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(ns.to_owned()).or_default().clone()
    }

    /// Runs `work` as the only writer of the namespace's playbook: in this process (a mutex)
    /// and across curator replicas (the record's namespace lock), so the nearest-bullet search
    /// of one curation always sees the bullets the previous one added.
    async fn exclusively<T>(&self, ns: &str, work: impl Future<Output = Result<T>>) -> Result<T> {
        let lock = self.ns_lock(ns).await;
        let _local = lock.lock().await;
        let shared = self.store.lock_namespace(ns).await?;
        let out = work.await;
        if let Err(e) = shared.release().await {
            warn!(error = %e, namespace = ns, "releasing the namespace lock");
        }
        out
    }

    fn validate_section(&self, field: &str, section: &str) -> Result<()> {
        if self.opts.sections.iter().any(|s| s == section) {
            Ok(())
        } else {
            Err(InvalidInput::new(
                field,
                format!(
                    "unknown section {section:?}; configured sections: {}",
                    self.opts.sections.join(", ")
                ),
            )
            .into())
        }
    }

    fn validate_content(&self, field: &str, content: &str) -> Result<()> {
        if content.trim().is_empty() {
            return Err(InvalidInput::new(field, "must not be empty").into());
        }
        agent_learning_domain::check_no_nul(field, content)?;
        if content.len() > self.opts.max_content_bytes {
            return Err(InvalidInput::new(
                field,
                format!(
                    "is {} bytes, over the limit of {} (curator.max_content_bytes)",
                    content.len(),
                    self.opts.max_content_bytes
                ),
            )
            .into());
        }
        Ok(())
    }

    fn validate_insights(&self, insights: &[Insight]) -> Result<()> {
        if insights.is_empty() {
            return Err(InvalidInput::new("insights", "must not be empty").into());
        }
        if insights.len() > self.opts.max_insights_per_request {
            return Err(InvalidInput::new(
                "insights",
                format!(
                    "{} insights, over the limit of {} per request",
                    insights.len(),
                    self.opts.max_insights_per_request
                ),
            )
            .into());
        }
        for (i, insight) in insights.iter().enumerate() {
            let f = |name: &str| format!("insights[{i}].{name}");
            if insight.id.trim().is_empty() || insight.id.len() > MAX_ID_BYTES {
                return Err(InvalidInput::new(
                    f("id"),
                    format!("must be 1-{MAX_ID_BYTES} bytes and not blank"),
                )
                .into());
            }
            agent_learning_domain::check_no_nul(&f("id"), &insight.id)?;
            agent_learning_domain::check_no_nul(&f("source"), &insight.source)?;
            self.validate_section(&f("section"), &insight.section)?;
            self.validate_content(&f("content"), &insight.content)?;
            if insight.source.len() > MAX_SOURCE_BYTES {
                return Err(InvalidInput::new(
                    f("source"),
                    format!("must be at most {MAX_SOURCE_BYTES} bytes"),
                )
                .into());
            }
        }
        Ok(())
    }

    /// Applies insights as delta operations: MERGE into the nearest bullet of the same
    /// namespace and section when the judge says so, else ADD a SHADOW bullet. All-or-nothing
    /// per request; an insight id applied before is reported as `replayed` and changes nothing.
    pub async fn curate(&self, ns: &str, insights: &[Insight]) -> Result<Vec<DeltaOp>> {
        validate_namespace("namespace", ns)?;
        self.validate_insights(insights)?;
        self.exclusively(ns, self.curate_exclusively(ns, insights))
            .await
    }

    async fn curate_exclusively(&self, ns: &str, insights: &[Insight]) -> Result<Vec<DeltaOp>> {
        let ids: Vec<String> = insights.iter().map(|i| i.id.clone()).collect();
        let applied = self.store.applied_insights(ns, &ids).await?;

        // First occurrence of each id not applied before is new work.
        let mut seen = HashSet::new();
        let fresh: Vec<&Insight> = insights
            .iter()
            .filter(|i| !applied.contains_key(&i.id) && seen.insert(i.id.clone()))
            .collect();
        let vectors = self
            .embedder
            .embed(fresh.iter().map(|i| i.content.clone()).collect())
            .await?;

        // Each insight's nearest bullet of its section in the index, all searched at once.
        let searches = fresh
            .iter()
            .zip(&vectors)
            .map(|(insight, vector)| Search {
                vector: vector.clone(),
                limit: 1,
                filter: dedup_filter(ns, &insight.section),
            })
            .collect();
        let nearest_indexed = self
            .index
            .search_batch(&self.opts.collection, searches)
            .await?;

        // An exact restatement of a kept bullet is found by its text, whatever the graph
        // search of a large playbook returned.
        let contents: Vec<&str> = fresh.iter().map(|i| i.content.trim()).collect();
        let verbatim = self.store.live_bullets_with_content(ns, &contents).await?;

        let mut decided: HashMap<String, DeltaOp> = HashMap::new();
        let mut changes = Vec::with_capacity(fresh.len());
        let mut added: Vec<IndexedBullet> = Vec::new();
        for ((insight, vector), hits) in fresh.into_iter().zip(vectors).zip(nearest_indexed) {
            let key = (insight.section.clone(), insight.content.trim().to_owned());
            let from_index = match verbatim.get(&key) {
                Some(&bullet_id) => Some(Nearest {
                    bullet_id,
                    similarity: 1.0,
                }),
                None => hits.into_iter().next().map(|h| Nearest {
                    bullet_id: h.id,
                    similarity: h.score,
                }),
            };
            // Bullets added earlier in this batch are not in the index yet.
            let from_batch = added
                .iter()
                .filter(|b| b.section == insight.section)
                .map(|b| Nearest {
                    bullet_id: b.id,
                    similarity: cosine(&b.embedding, &vector),
                })
                .max_by(|a, b| a.similarity.total_cmp(&b.similarity));
            let nearest = match (from_index, from_batch) {
                (Some(a), Some(b)) => Some(if b.similarity > a.similarity { b } else { a }),
                (a, b) => a.or(b),
            };
            let similarity = nearest.map_or(0.0, |n| n.similarity);
            let op = match self.judge.judge(insight, nearest) {
                Judgement::Merge(bullet_id) => {
                    changes.push(CurationChange::Merge {
                        insight_id: insight.id.clone(),
                        bullet_id,
                        source: insight.source.clone(),
                        similarity,
                    });
                    DeltaOp {
                        kind: DeltaKind::Merge,
                        bullet_id,
                        insight_id: insight.id.clone(),
                        similarity,
                        replayed: false,
                        merged_bullet_id: None,
                    }
                }
                Judgement::Add => {
                    let id =
                        Uuid::new_v5(&BULLET_ID_NS, format!("{ns}\u{0}{}", insight.id).as_bytes());
                    changes.push(CurationChange::Add {
                        insight_id: insight.id.clone(),
                        bullet: NewBullet {
                            id,
                            section: insight.section.clone(),
                            content: insight.content.trim().to_owned(),
                            source: insight.source.clone(),
                            embedding: vector.clone(),
                        },
                        similarity,
                    });
                    added.push(IndexedBullet {
                        id,
                        namespace: ns.to_owned(),
                        section: insight.section.clone(),
                        stage: Stage::Shadow,
                        embedding: vector,
                    });
                    DeltaOp {
                        kind: DeltaKind::Add,
                        bullet_id: id,
                        insight_id: insight.id.clone(),
                        similarity,
                        replayed: false,
                        merged_bullet_id: None,
                    }
                }
            };
            decided.insert(insight.id.clone(), op);
        }

        if !changes.is_empty() {
            self.store.apply_curation(ns, &changes).await?;
            // The record is committed; if the index write fails the next start reconciles it.
            let points: Vec<Point> = added.iter().map(point).collect();
            let written = points.len();
            match self.index.upsert(&self.opts.collection, points).await {
                Ok(()) => self.upkeep.note_writes(written),
                Err(e) => warn!(
                    error = %e,
                    namespace = ns,
                    "index write failed after commit; reconcile will heal it"
                ),
            }
        }

        let mut reported = HashSet::new();
        let ops: Vec<DeltaOp> = insights
            .iter()
            .map(|i| {
                if let Some(a) = applied.get(&i.id) {
                    return DeltaOp {
                        kind: a.kind,
                        bullet_id: a.bullet_id,
                        insight_id: i.id.clone(),
                        similarity: a.similarity,
                        replayed: true,
                        merged_bullet_id: None,
                    };
                }
                let mut op = decided[&i.id].clone();
                op.replayed = !reported.insert(i.id.clone());
                op
            })
            .collect();
        for op in &ops {
            let kind = if op.replayed {
                "replayed"
            } else {
                op.kind.as_str()
            };
            metrics::counter!("agent_learning_curation_ops_total", "kind" => kind).increment(1);
        }
        Ok(ops)
    }

    pub async fn get_playbook(&self, ns: &str, q: &PlaybookQuery) -> Result<PlaybookPage> {
        validate_namespace("namespace", ns)?;
        if let Some(section) = &q.section {
            self.validate_section("section", section)?;
        }
        let page_size = match q.page_size {
            0 => 100,
            n if n > 1000 => {
                return Err(InvalidInput::new("page_size", "must be at most 1000").into());
            }
            n => n,
        };
        let offset = if q.page_token.is_empty() {
            0
        } else {
            q.page_token
                .parse::<u64>()
                .map_err(|_| InvalidInput::new("page_token", "is not a token this server issued"))?
        };
        let filter = ListFilter {
            stage: q.stage,
            section: q.section.clone(),
            include_deleted: q.include_deleted,
        };
        let BulletPage {
            bullets,
            total,
            next_offset,
        } = self
            .store
            .list_bullets(ns, &filter, offset, u64::from(page_size))
            .await?;
        Ok(PlaybookPage {
            bullets,
            total,
            next_page_token: next_offset.map(|o| o.to_string()).unwrap_or_default(),
        })
    }

    /// A vector a caller sent in place of a text: the embedder's length, every number finite.
    fn checked_vector(&self, field: &str, v: Vec<f32>) -> Result<Vec<f32>> {
        let dim = self.embedder.dim();
        if v.len() != dim {
            return Err(InvalidInput::new(
                field,
                format!(
                    "has {} numbers; this deployment's embeddings have {dim} (the same embedding model must make it)",
                    v.len()
                ),
            )
            .into());
        }
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(
                InvalidInput::new(format!("{field}[{i}]"), "is not a finite number").into(),
            );
        }
        Ok(v)
    }

    async fn nearest_bullets(
        &self,
        ns: &str,
        query: Query<'_>,
        k: usize,
        min_stage: Stage,
        section: Option<&str>,
    ) -> Result<Vec<(Bullet, f32)>> {
        let vector = match query {
            Query::Vector(v) => v,
            Query::Text(text) => self
                .embedder
                .embed(vec![text.to_owned()])
                .await?
                .pop()
                .unwrap_or_default(),
        };
        let stages = Stage::at_or_above(min_stage)
            .into_iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        let mut filter = Filter::default().eq("namespace", ns).any("stage", stages);
        if let Some(section) = section {
            filter = filter.eq("section", section);
        }
        let hits = self
            .index
            .search(&self.opts.collection, vector, k, filter)
            .await?;
        let ids: Vec<Uuid> = hits.iter().map(|h| h.id).collect();
        let mut by_id: HashMap<Uuid, Bullet> = self
            .store
            .bullets_by_ids(ns, &ids)
            .await?
            .into_iter()
            .map(|b| (b.id, b))
            .collect();
        // The record decides: a hit whose bullet was deleted or demoted meanwhile is dropped.
        Ok(hits
            .into_iter()
            .filter_map(|h| by_id.remove(&h.id).map(|b| (b, h.score)))
            .filter(|(b, _)| !b.deleted && b.stage.satisfies(min_stage))
            .collect())
    }

    fn validate_text(field: &str, text: &str) -> Result<()> {
        if text.trim().is_empty() {
            return Err(InvalidInput::new(field, "must not be empty").into());
        }
        agent_learning_domain::check_no_nul(field, text)?;
        if text.len() > MAX_QUERY_BYTES {
            return Err(InvalidInput::new(
                field,
                format!(
                    "is {} bytes, over the limit of {MAX_QUERY_BYTES}",
                    text.len()
                ),
            )
            .into());
        }
        Ok(())
    }

    pub async fn search(
        &self,
        ns: &str,
        query: &str,
        k: u32,
        min_stage: Stage,
        section: Option<&str>,
    ) -> Result<Vec<(Bullet, f32)>> {
        validate_namespace("namespace", ns)?;
        Self::validate_text("query", query)?;
        if let Some(section) = section {
            self.validate_section("section", section)?;
        }
        let k = match k {
            0 => 10,
            n if n > 100 => return Err(InvalidInput::new("k", "must be at most 100").into()),
            n => n as usize,
        };
        if min_stage == Stage::Quarantined {
            return Err(
                InvalidInput::new("min_stage", "quarantined bullets are never served").into(),
            );
        }
        self.nearest_bullets(ns, Query::Text(query), k, min_stage, section)
            .await
    }

    /// The most relevant, best-scored bullets for `state`, rendered as a playbook section whose
    /// estimated token count never exceeds `budget`.
    /// RenderContext: the bullets for `state` (searched with `state_vector` when given,
    /// else with the state's embedding) that fit `budget` tokens, best first.
    pub async fn render_context(
        &self,
        ns: &str,
        state: &str,
        state_vector: Option<Vec<f32>>,
        budget: u32,
        min_stage: Stage,
    ) -> Result<(String, Vec<Uuid>, u32)> {
        validate_namespace("namespace", ns)?;
        Self::validate_text("state", state)?;
        if budget == 0 || budget > agent_learning_domain::MAX_TOKEN_BUDGET {
            return Err(InvalidInput::new(
                "token_budget",
                format!(
                    "must be between 1 and {}",
                    agent_learning_domain::MAX_TOKEN_BUDGET
                ),
            )
            .into());
        }
        if min_stage == Stage::Quarantined {
            return Err(
                InvalidInput::new("min_stage", "quarantined bullets are never served").into(),
            );
        }
        let query = match state_vector {
            Some(v) => Query::Vector(self.checked_vector("state_vector", v)?),
            None => Query::Text(state),
        };
        let mut ranked = self
            .nearest_bullets(ns, query, RENDER_CANDIDATES, min_stage, None)
            .await?;
        ranked.sort_by(|(a, sa), (b, sb)| render::score(*sb, b).total_cmp(&render::score(*sa, a)));
        let ranked: Vec<Bullet> = ranked.into_iter().map(|(b, _)| b).collect();
        let (text, chosen, tokens) = render::fit(&self.opts.sections, &ranked, budget);
        Ok((text, chosen.iter().map(|b| b.id).collect(), tokens))
    }

    /// Re-writes the index entries of these bullets from the record (stage, content, deletion).
    async fn sync_index(&self, ids: &[Uuid]) -> Result<()> {
        let live = self.store.indexed_bullets(ids).await?;
        let (present, gone): (Vec<Uuid>, Vec<Uuid>) =
            ids.iter().partition(|id| live.contains_key(id));
        let points: Vec<Point> = present.iter().map(|id| point(&live[id])).collect();
        let result = async {
            self.index.upsert(&self.opts.collection, points).await?;
            self.index.delete(&self.opts.collection, gone).await
        }
        .await;
        if let Err(e) = result {
            warn!(error = %e, "index write failed after commit; reconcile will heal it");
        }
        Ok(())
    }

    pub async fn record_feedback(
        &self,
        ns: &str,
        feedback_id: &str,
        items: &[FeedbackItem],
    ) -> Result<(Vec<Bullet>, bool)> {
        validate_namespace("namespace", ns)?;
        if items.is_empty() {
            return Err(InvalidInput::new("feedback", "must not be empty").into());
        }
        if items.len() > MAX_FEEDBACK_ITEMS {
            return Err(InvalidInput::new(
                "feedback",
                format!("at most {MAX_FEEDBACK_ITEMS} items per request"),
            )
            .into());
        }
        // Votes are attributable: each request is one decision (or review) named by its
        // feedback id, and casts at most one vote per bullet; the same id again is a replay.
        if feedback_id.trim().is_empty() {
            return Err(InvalidInput::new(
                "feedback_id",
                "must name the decision or review the votes come from (one vote per bullet per id)",
            )
            .into());
        }
        agent_learning_domain::check_no_nul("feedback_id", feedback_id)?;
        if feedback_id.len() > MAX_ID_BYTES {
            return Err(
                InvalidInput::new("feedback_id", format!("at most {MAX_ID_BYTES} bytes")).into(),
            );
        }
        let mut parsed: Vec<(Uuid, u32, u32)> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let id = parse_bullet_id(&format!("feedback[{i}].bullet_id"), &item.bullet_id)?;
            match (item.helpful, item.harmful) {
                (1, 0) | (0, 1) => {}
                (h, x) => {
                    return Err(InvalidInput::new(
                        format!("feedback[{i}]"),
                        format!(
                            "one vote per bullet: helpful 1 or harmful 1 (got helpful {h}, harmful {x})"
                        ),
                    )
                    .into());
                }
            }
            if let Some(j) = parsed.iter().position(|(other, _, _)| *other == id) {
                return Err(InvalidInput::new(
                    format!("feedback[{i}].bullet_id"),
                    format!(
                        "names the same bullet as feedback[{j}]: one vote per bullet per request"
                    ),
                )
                .into());
            }
            parsed.push((id, item.helpful, item.harmful));
        }
        let (bullets, replayed) = self
            .store
            .record_feedback(ns, Some(feedback_id), &parsed, &self.opts.gates)
            .await?;
        if !replayed {
            let ids: Vec<Uuid> = bullets.iter().map(|b| b.id).collect();
            self.sync_index(&ids).await?;
        }
        Ok((bullets, replayed))
    }

    pub async fn health(&self, ns: &str) -> Result<Health> {
        validate_namespace("namespace", ns)?;
        let h = self.store.health(ns).await?;
        let stage = |s| h.by_stage.get(&s).copied().unwrap_or(0);
        Ok(Health {
            total: h.total,
            shadow: stage(Stage::Shadow),
            staging: stage(Stage::Staging),
            production: stage(Stage::Production),
            quarantined: stage(Stage::Quarantined),
            deleted: h.deleted,
            sections: h.by_section.clone(),
            insights_applied: h.insights_applied,
            merges: h.merges,
            merge_rate: if h.insights_applied == 0 {
                0.0
            } else {
                h.merges as f64 / h.insights_applied as f64
            },
            added_last_24h: h.added_last_24h,
        })
    }

    pub async fn history(&self, ns: &str, bullet_id: &str) -> Result<Vec<BulletEvent>> {
        validate_namespace("namespace", ns)?;
        let id = parse_bullet_id("bullet_id", bullet_id)?;
        if self.store.get_bullet(ns, id).await?.is_none() {
            return Err(CuratorError::NotFound(format!("bullet {id} not found")));
        }
        Ok(self.store.history(ns, id).await?)
    }

    pub async fn update_bullet(&self, ns: &str, bullet_id: &str, content: &str) -> Result<DeltaOp> {
        validate_namespace("namespace", ns)?;
        let id = parse_bullet_id("bullet_id", bullet_id)?;
        self.validate_content("content", content)?;
        let lock = self.ns_lock(ns).await;
        let _guard = lock.lock().await;
        let vector = self
            .embedder
            .embed(vec![content.trim().to_owned()])
            .await?
            .pop()
            .unwrap_or_default();
        self.store
            .update_bullet(ns, id, content.trim(), &vector)
            .await?;
        self.sync_index(&[id]).await?;
        Ok(DeltaOp {
            kind: DeltaKind::Update,
            bullet_id: id,
            insight_id: String::new(),
            similarity: 0.0,
            replayed: false,
            merged_bullet_id: None,
        })
    }

    pub async fn delete_bullet(&self, ns: &str, bullet_id: &str, reason: &str) -> Result<DeltaOp> {
        validate_namespace("namespace", ns)?;
        let id = parse_bullet_id("bullet_id", bullet_id)?;
        let lock = self.ns_lock(ns).await;
        let _guard = lock.lock().await;
        self.store.delete_bullet(ns, id, reason).await?;
        self.sync_index(&[id]).await?;
        Ok(DeltaOp {
            kind: DeltaKind::Delete,
            bullet_id: id,
            insight_id: String::new(),
            similarity: 0.0,
            replayed: false,
            merged_bullet_id: None,
        })
    }

    pub async fn merge_bullets(&self, ns: &str, into: &str, from: &str) -> Result<DeltaOp> {
        validate_namespace("namespace", ns)?;
        let into = parse_bullet_id("into_bullet_id", into)?;
        let from = parse_bullet_id("from_bullet_id", from)?;
        if into == from {
            return Err(InvalidInput::new("from_bullet_id", "equals into_bullet_id").into());
        }
        self.exclusively(ns, async {
            self.store
                .merge_bullets(ns, into, from, &self.opts.gates)
                .await?;
            self.sync_index(&[into, from]).await
        })
        .await?;
        Ok(DeltaOp {
            kind: DeltaKind::Merge,
            bullet_id: into,
            insight_id: String::new(),
            similarity: 0.0,
            replayed: false,
            merged_bullet_id: Some(from),
        })
    }

    pub async fn set_stage(
        &self,
        ns: &str,
        bullet_id: &str,
        stage: Option<Stage>,
        reason: &str,
    ) -> Result<Bullet> {
        validate_namespace("namespace", ns)?;
        let id = parse_bullet_id("bullet_id", bullet_id)?;
        let stage = stage.ok_or_else(|| InvalidInput::new("stage", "must be set"))?;
        let bullet = self
            .store
            .set_stage(ns, id, stage, reason, &self.opts.gates)
            .await?;
        self.sync_index(&[id]).await?;
        Ok(bullet)
    }

    /// Makes the index hold exactly the record's live bullets, with current payloads.
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let collection = &self.opts.collection;
        let mut indexed: HashMap<Uuid, BTreeMap<String, String>> = HashMap::new();
        let mut after = None;
        loop {
            let page = self.index.scroll(collection, after, 1000).await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(*last);
            indexed.extend(page);
        }
        let mut report = ReconcileReport::default();
        let mut after = None;
        loop {
            let page = self.store.live_bullets_page(after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            report.checked += page.len();
            let stale: Vec<Point> = page
                .iter()
                .filter(|b| {
                    let want = point(b).payload;
                    indexed.remove(&b.id).is_none_or(|have| have != want)
                })
                .map(point)
                .collect();
            report.upserted += stale.len();
            self.index.upsert(collection, stale).await?;
        }
        let orphans: Vec<Uuid> = indexed.into_keys().collect();
        report.deleted = orphans.len();
        self.index.delete(collection, orphans).await?;
        Ok(report)
    }

    /// Builds the index's search structures now (after an optimization already running in
    /// the background, if one is); run it after bulk loads.
    pub async fn optimize_index(&self) -> Result<()> {
        Ok(self.upkeep.optimize_now().await?)
    }
}

/// What curation searches for an insight's nearest bullet: the bullets of its namespace and
/// section, at any stage.
pub fn dedup_filter(ns: &str, section: &str) -> Filter {
    Filter::default()
        .eq("namespace", ns)
        .eq("section", section.to_owned())
}
