//! The in-process engine: one qdrant-edge shard per collection, under a root directory. The
//! engine is synchronous: its calls run on the blocking pool, except a single search on a
//! collection whose recent searches were quick, which runs where it is called. One process owns
//! a directory.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use qdrant_edge::{
    Condition, DEFAULT_VECTOR_NAME, Distance, EdgeConfig, EdgeConfigBuilder, EdgeShard,
    EdgeVectorParamsBuilder, FieldCondition, FieldIndexOperations, Filter as EdgeFilter, Match,
    NamedQuery, PayloadFieldSchema, PayloadSchemaType, PointId, PointInsertOperations,
    PointOperations, PointStructPersisted, QuantizationConfig, QuantizationSearchParams, QueryEnum,
    ScalarQuantizationConfig, ScalarType, ScrollRequest, SearchParams, SearchRequest,
    UpdateOperation, VectorStructPersisted, WithPayloadInterface, WithVector,
};
use uuid::Uuid;

use crate::{Filter, Hit, Point, Result, Search, VectorError, VectorIndex};

/// How a collection is laid out on disk: see [`EdgeIndex::layout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub segments: usize,
    pub points: usize,
    pub indexed: usize,
}

/// When the engine searches by its HNSW graph instead of scanning. The engine's own defaults
/// (10,000 KB each: about 6,600 vectors of 384 numbers) leave a 10,000-bullet playbook in
/// segments too small to index, and make a search filtered to one section scan every bullet of
/// that section: curation's cost then grows with the playbook. Lower thresholds keep it nearly
/// flat (curator-bench, README "Benchmarks").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeTuning {
    /// A filtered search that matches less than this many KB of vectors scans them; above it,
    /// it walks the graph.
    pub full_scan_threshold_kb: usize,
    /// Segments larger than this many KB of vectors get an HNSW graph when optimized.
    pub indexing_threshold_kb: usize,
    /// The beam width of a graph search (`None`: the engine's, its `ef_construct` of 100).
    pub hnsw_ef: Option<usize>,
    /// Indexed segments also keep each vector as 8-bit integers (a quarter of the floats'
    /// size, in RAM): a graph search compares those, then scores its best candidates again on
    /// the floats, so the scores returned are exact.
    pub quantize: bool,
}

impl Default for EdgeTuning {
    fn default() -> Self {
        Self {
            full_scan_threshold_kb: 1000,
            indexing_threshold_kb: 1000,
            hnsw_ef: None,
            quantize: true,
        }
    }
}

/// Candidates a quantized search scores again on the floats, per result asked for.
const OVERSAMPLING: f64 = 2.0;

impl EdgeTuning {
    fn quantization(&self) -> Option<QuantizationConfig> {
        self.quantize.then(|| {
            ScalarQuantizationConfig {
                r#type: ScalarType::Int8,
                quantile: Some(0.99),
                always_ram: Some(true),
            }
            .into()
        })
    }

    /// A shard's stored configuration with this tuning's quantization; `None` when it already
    /// has it. Segments built under the other setting are rebuilt by the next optimization.
    fn requantized(&self, path: &Path) -> Result<Option<EdgeConfig>> {
        let Some(config) = EdgeConfig::load(path) else {
            return Ok(None);
        };
        let mut config = config.map_err(engine)?;
        let wanted = self.quantization();
        if config.quantization_config == wanted {
            return Ok(None);
        }
        config.quantization_config = wanted;
        Ok(Some(config))
    }

    fn search_params(&self) -> Option<SearchParams> {
        if self.hnsw_ef.is_none() && !self.quantize {
            return None;
        }
        Some(SearchParams {
            hnsw_ef: self.hnsw_ef,
            quantization: self.quantize.then_some(QuantizationSearchParams {
                ignore: false,
                rescore: Some(true),
                oversampling: Some(OVERSAMPLING),
            }),
            ..SearchParams::default()
        })
    }

    /// Sets the shard's thresholds where they differ (a shard made by an older version keeps
    /// the engine's defaults until then); segments built under other settings are rebuilt by
    /// the next optimization.
    fn apply(&self, shard: &EdgeShard) -> Result<()> {
        let (mut hnsw, mut optimizers) = {
            let config = shard.config();
            (config.hnsw_config, config.optimizers.clone())
        };
        if hnsw.full_scan_threshold != self.full_scan_threshold_kb {
            hnsw.full_scan_threshold = self.full_scan_threshold_kb;
            shard.set_hnsw_config(hnsw).map_err(engine)?;
        }
        if optimizers.indexing_threshold != Some(self.indexing_threshold_kb) {
            optimizers.indexing_threshold = Some(self.indexing_threshold_kb);
            shard.set_optimizers_config(optimizers).map_err(engine)?;
        }
        Ok(())
    }
}

/// How [`EdgeIndex::search_batch_as`] searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchMode {
    /// As the index's [`EdgeTuning`] says (what [`VectorIndex::search_batch`] does).
    Tuned,
    /// The graph walked with this beam width; quantization as tuned.
    Ef(usize),
    /// Every vector matching the filter scored on its floats: the true nearest.
    Exact,
}

pub struct EdgeIndex {
    root: PathBuf,
    tuning: EdgeTuning,
    shards: Mutex<HashMap<String, Opened>>,
    /// The engine's `flush` only try-locks the shard's WAL and segment holder and panics when
    /// an update or an optimization holds them: writes and optimizations hold this shared, a
    /// flush holds it alone.
    writes: Arc<RwLock<()>>,
    /// One optimization at a time (several services of one process may ask for one).
    optimizing: Arc<Mutex<()>>,
    /// Held while open: the engine's files belong to one process at a time.
    _lock: std::fs::File,
}

/// An open collection: its shard, its vectors' dimension, what its searches cost.
type Opened = (Arc<EdgeShard>, usize, Arc<SearchCost>);

/// Searches expected to take less than this run on the calling task's thread.
const INLINE_SEARCH: Duration = Duration::from_micros(250);

/// A collection's recent search time: a moving average (each search weighs 1/8), in
/// nanoseconds.
#[derive(Debug, Default)]
struct SearchCost(AtomicU64);

impl SearchCost {
    fn record(&self, took: Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        // Racing searches may lose one another's sample: an estimate needs none of them.
        let old = self.0.load(Ordering::Relaxed);
        let new = (old - old / 8).saturating_add(took / 8);
        self.0.store(new, Ordering::Relaxed);
    }

    fn quick(&self) -> bool {
        self.0.load(Ordering::Relaxed) < INLINE_SEARCH.as_nanos() as u64
    }
}

fn engine(e: impl std::fmt::Display) -> VectorError {
    VectorError::Engine(e.to_string())
}

fn uuid_of(id: PointId) -> Result<Uuid> {
    match id {
        PointId::Uuid(u) => Ok(u),
        PointId::NumId(n) => Err(VectorError::Engine(format!(
            "unexpected numeric point id {n}"
        ))),
    }
}

fn to_edge_filter(filter: &Filter) -> Result<Option<EdgeFilter>> {
    if filter.must.is_empty() {
        return Ok(None);
    }
    let mut must = Vec::with_capacity(filter.must.len());
    for (field, values) in &filter.must {
        let key = field
            .as_str()
            .try_into()
            .map_err(|_| VectorError::Engine(format!("bad payload field {field:?}")))?;
        let m: Match = match values.as_slice() {
            [one] => one.clone().into(),
            many => many.to_vec().into(),
        };
        must.push(Condition::Field(FieldCondition::new_match(key, m)));
    }
    Ok(Some(EdgeFilter {
        should: None,
        min_should: None,
        must: Some(must),
        must_not: None,
    }))
}

fn hits(found: Vec<qdrant_edge::ScoredPoint>) -> Result<Vec<Hit>> {
    found
        .into_iter()
        .map(|p| {
            Ok(Hit {
                id: uuid_of(p.id)?,
                score: p.score,
            })
        })
        .collect()
}

impl EdgeIndex {
    /// A nearest-neighbour search with this index's beam width.
    fn request(&self, vector: Vec<f32>, limit: usize, filter: &Filter) -> Result<SearchRequest> {
        self.request_with(vector, limit, filter, self.tuning.search_params())
    }

    fn request_with(
        &self,
        vector: Vec<f32>,
        limit: usize,
        filter: &Filter,
        params: Option<SearchParams>,
    ) -> Result<SearchRequest> {
        Ok(SearchRequest {
            query: QueryEnum::Nearest(NamedQuery {
                query: vector.into(),
                using: None,
            }),
            filter: to_edge_filter(filter)?,
            params,
            limit,
            offset: 0,
            with_payload: Some(WithPayloadInterface::Bool(false)),
            with_vector: Some(WithVector::Bool(false)),
            score_threshold: None,
        })
    }

    /// Opens (or creates) the engine's root directory, with the default [`EdgeTuning`].
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_tuned(root, EdgeTuning::default())
    }

    /// Opens (or creates) the engine's root directory; collections get `tuning`.
    pub fn open_tuned(root: &Path, tuning: EdgeTuning) -> Result<Self> {
        if tuning.full_scan_threshold_kb == 0 || tuning.indexing_threshold_kb == 0 {
            return Err(VectorError::Engine(
                "vector.full_scan_threshold_kb and vector.indexing_threshold_kb must be above 0"
                    .into(),
            ));
        }
        std::fs::create_dir_all(root).map_err(engine)?;
        // Two processes writing one engine directory corrupt it (segments vanish under the
        // other's feet): the second is refused, naming the directory.
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join(".lock"))
            .map_err(engine)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(VectorError::Engine(format!(
                    "{} is in use by another process: the in-process engine serves one \
                     process (give each its own data_dir, or share a Qdrant server through \
                     vector.qdrant_url)",
                    root.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(engine(e)),
        }
        Ok(Self {
            root: root.to_owned(),
            tuning,
            shards: Mutex::new(HashMap::new()),
            writes: Arc::new(RwLock::new(())),
            optimizing: Arc::new(Mutex::new(())),
            _lock: lock,
        })
    }

    fn shard(&self, collection: &str) -> Result<(Arc<EdgeShard>, usize)> {
        self.searchable(collection)
            .map(|(shard, dim, _)| (shard, dim))
    }

    fn searchable(&self, collection: &str) -> Result<Opened> {
        self.shards
            .lock()
            .map_err(engine)?
            .get(collection)
            .cloned()
            .ok_or_else(|| VectorError::NoCollection(collection.to_owned()))
    }

    /// The collection's segments, points and HNSW-indexed vectors (for benchmarks and logs).
    pub fn layout(&self, collection: &str) -> Result<Layout> {
        let (shard, _) = self.shard(collection)?;
        let info = shard.info();
        Ok(Layout {
            segments: info.segments_count,
            points: info.points_count,
            indexed: info.indexed_vectors_count,
        })
    }

    /// [`VectorIndex::search_batch`] with the graph's beam width or an exact scan chosen per
    /// call instead of by the tuning (benchmarks measure a beam width's recall with it).
    pub async fn search_batch_as(
        &self,
        collection: &str,
        searches: Vec<Search>,
        mode: SearchMode,
    ) -> Result<Vec<Vec<Hit>>> {
        let params = match mode {
            SearchMode::Tuned => self.tuning.search_params(),
            SearchMode::Ef(ef) => Some(SearchParams {
                hnsw_ef: Some(ef),
                ..self.tuning.search_params().unwrap_or_default()
            }),
            SearchMode::Exact => Some(SearchParams {
                exact: true,
                quantization: Some(QuantizationSearchParams {
                    ignore: true,
                    ..QuantizationSearchParams::default()
                }),
                ..SearchParams::default()
            }),
        };
        let (shard, _) = self.shard(collection)?;
        let mut requests = Vec::with_capacity(searches.len());
        for s in searches {
            requests.push(self.request_with(s.vector, s.limit, &s.filter, params)?);
        }
        // Contiguous shares, one per core, each on a blocking thread; answers kept in order.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let share = requests.len().div_ceil(cores).max(1);
        let mut shares = Vec::new();
        while !requests.is_empty() {
            let rest = requests.split_off(share.min(requests.len()));
            let mine = std::mem::replace(&mut requests, rest);
            let shard = shard.clone();
            // Spawned now, so the shares run at once; awaited in order below.
            shares.push(tokio::task::spawn_blocking(move || {
                mine.into_iter()
                    .map(|r| hits(shard.search(r).map_err(engine)?))
                    .collect::<Result<Vec<_>>>()
            }));
        }
        let mut out = Vec::new();
        for share in shares {
            out.extend(share.await.map_err(engine)??);
        }
        Ok(out)
    }

    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        tokio::task::spawn_blocking(f).await.map_err(engine)?
    }
}

#[async_trait]
impl VectorIndex for EdgeIndex {
    async fn ensure_collection(
        &self,
        collection: &str,
        dim: usize,
        keyword_fields: &[&str],
    ) -> Result<()> {
        if self.shard(collection).is_ok() {
            return Ok(());
        }
        let path = self.root.join(collection);
        let fields: Vec<String> = keyword_fields.iter().map(|s| s.to_string()).collect();
        let tuning = self.tuning;
        let shard = Self::blocking(move || {
            let exists = path.join("edge_config.json").is_file();
            let shard = if exists {
                EdgeShard::load(&path, tuning.requantized(&path)?).map_err(engine)?
            } else {
                std::fs::create_dir_all(&path).map_err(engine)?;
                let mut config = EdgeConfigBuilder::new()
                    .vector(
                        DEFAULT_VECTOR_NAME,
                        EdgeVectorParamsBuilder::new(dim, Distance::Cosine).build(),
                    )
                    .build();
                config.quantization_config = tuning.quantization();
                EdgeShard::new(&path, config).map_err(engine)?
            };
            tuning.apply(&shard)?;
            for field in &fields {
                let key = field
                    .as_str()
                    .try_into()
                    .map_err(|_| VectorError::Engine(format!("bad payload field {field:?}")))?;
                shard
                    .update(UpdateOperation::FieldIndexOperation(
                        FieldIndexOperations::CreateIndex(qdrant_edge::CreateIndex {
                            field_name: key,
                            field_schema: Some(PayloadFieldSchema::FieldType(
                                PayloadSchemaType::Keyword,
                            )),
                        }),
                    ))
                    .map_err(engine)?;
            }
            Ok(shard)
        })
        .await?;
        self.shards
            .lock()
            .map_err(engine)?
            .entry(collection.to_owned())
            .or_insert((Arc::new(shard), dim, Arc::default()));
        Ok(())
    }

    async fn upsert(&self, collection: &str, points: Vec<Point>) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        let (shard, dim) = self.shard(collection)?;
        let mut batch = Vec::with_capacity(points.len());
        for p in points {
            if p.vector.len() != dim {
                return Err(VectorError::Dimension {
                    id: p.id,
                    got: p.vector.len(),
                    want: dim,
                });
            }
            let payload: serde_json::Map<String, serde_json::Value> = p
                .payload
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
            batch.push(PointStructPersisted {
                id: PointId::Uuid(p.id),
                vector: VectorStructPersisted::Single(p.vector),
                payload: Some(qdrant_edge::Payload(payload)),
            });
        }
        let writes = self.writes.clone();
        Self::blocking(move || {
            let _shared = writes.read().map_err(engine)?;
            shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::UpsertPoints(PointInsertOperations::PointsList(batch)),
                ))
                .map_err(engine)
        })
        .await
    }

    async fn delete(&self, collection: &str, ids: Vec<Uuid>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let (shard, _) = self.shard(collection)?;
        let writes = self.writes.clone();
        Self::blocking(move || {
            let _shared = writes.read().map_err(engine)?;
            shard
                .update(UpdateOperation::PointOperation(
                    PointOperations::DeletePoints {
                        ids: ids.into_iter().map(PointId::Uuid).collect(),
                    },
                ))
                .map_err(engine)
        })
        .await
    }

    async fn search(
        &self,
        collection: &str,
        vector: Vec<f32>,
        limit: usize,
        filter: Filter,
    ) -> Result<Vec<Hit>> {
        let (shard, _, cost) = self.searchable(collection)?;
        let request = self.request(vector, limit, &filter)?;
        let quick = cost.quick();
        let search = move || {
            let started = Instant::now();
            let found = shard.search(request);
            cost.record(started.elapsed());
            hits(found.map_err(engine)?)
        };
        // A search as quick as the last ones were runs here: handing it to the blocking pool
        // would cost two thread wake-ups, more than the search itself (decide-bench's
        // profile). A collection whose searches grow slow (or wait on an optimization) goes
        // back to the pool, where a long search does not hold up other tasks.
        if quick {
            search()
        } else {
            Self::blocking(search).await
        }
    }

    async fn search_batch(&self, collection: &str, searches: Vec<Search>) -> Result<Vec<Vec<Hit>>> {
        self.search_batch_as(collection, searches, SearchMode::Tuned)
            .await
    }

    async fn scroll(
        &self,
        collection: &str,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<(Uuid, BTreeMap<String, String>)>> {
        let (shard, _) = self.shard(collection)?;
        Self::blocking(move || {
            // The engine's offset is inclusive; ask for one more and drop `after` itself.
            let (records, _) = shard
                .scroll(ScrollRequest {
                    offset: after.map(PointId::Uuid),
                    limit: Some(limit + 1),
                    filter: None,
                    with_payload: Some(WithPayloadInterface::Bool(true)),
                    with_vector: WithVector::Bool(false),
                    order_by: None,
                })
                .map_err(engine)?;
            let mut out = Vec::with_capacity(records.len());
            for r in records {
                let id = uuid_of(r.id)?;
                if Some(id) == after {
                    continue;
                }
                let payload = r
                    .payload
                    .map(|p| {
                        p.0.into_iter()
                            .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((id, payload));
            }
            out.truncate(limit);
            Ok(out)
        })
        .await
    }

    async fn count(&self, collection: &str) -> Result<u64> {
        let (shard, _) = self.shard(collection)?;
        Self::blocking(move || {
            shard
                .count(qdrant_edge::CountRequest {
                    filter: None,
                    exact: true,
                })
                .map(|n| n as u64)
                .map_err(engine)
        })
        .await
    }

    async fn optimize(&self, collection: &str) -> Result<()> {
        let (shard, _) = self.shard(collection)?;
        let writes = self.writes.clone();
        let optimizing = self.optimizing.clone();
        Self::blocking(move || {
            let _one_at_a_time = optimizing.lock().map_err(engine)?;
            {
                let _shared = writes.read().map_err(engine)?;
                shard.optimize().map_err(engine)?;
            }
            let _alone = writes.write().map_err(engine)?;
            shard.flush();
            Ok(())
        })
        .await
    }
}

/// Closes a shard: dropping its last handle flushes it (the engine's own `Drop`). That flush
/// panics when it cannot write (the directory removed under it, a full disk), and a panic in a
/// drop can abort the process (a test binary's runtime shutting down, seen in CI); so a failed
/// flush is logged instead. What it could not write is what the engine's WAL replays
/// at the next open.
fn close_shard(collection: &str, dir: &Path, shard: Arc<EdgeShard>) {
    let closed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(shard)));
    if let Err(panic) = closed {
        let why = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        tracing::warn!(
            collection,
            dir = %dir.display(),
            error = why,
            "vector collection not flushed at close"
        );
    }
}

impl Drop for EdgeIndex {
    fn drop(&mut self) {
        // A write still running on a blocking thread (its caller gone) ends first.
        let _alone = self.writes.write();
        let shards = match self.shards.get_mut() {
            Ok(shards) => std::mem::take(shards),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        for (collection, (shard, _, _)) in shards {
            close_shard(&collection, &self.root.join(&collection), shard);
        }
    }
}
