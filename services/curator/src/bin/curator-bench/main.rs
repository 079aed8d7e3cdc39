//! Curate throughput and RenderContext latency at several playbook sizes.
//!
//! `cargo run --release -p agent-learning-curator --features bench --bin curator-bench -- [SIZES] [--real] [--minilm]`
//!
//! Without the embedder, vectors come from a deterministic hash of the text (the cost of
//! curation itself: index search, decision, one transaction per batch). With `--real`, the
//! MiniLM embedder is also measured on the same workload at the smallest size. With
//! `--engine-defaults`, the in-process engine keeps Qdrant's own thresholds (10,000 KB for
//! full scan and indexing) instead of the deployed `vector.*_threshold_kb` (1,000 KB), for
//! the comparison. `--ef N` sets the graph search's beam width (the engine's default: 100).
//! `--no-quantization` keeps indexed segments without their 8-bit vectors (`vector.quantize =
//! false`), for the comparison.
//! Each measurement also times the index searches curation makes (the nearest bullet of the
//! insight's section, one batch of searches per batch of insights) on their own, and measures
//! what the graph search's beam width costs in answers: for 300 restatements of stored bullets
//! (their vectors turned by a fixed angle towards a random direction: cosine 0.9, and 0.8, the
//! merge threshold) and 300 unrelated vectors, how often the nearest bullet of the section found
//! with ef 16, 32, 64 and 100 is the one an exact search finds, and how often curation's
//! decision (merge into that bullet, or add) would be the same.
//! With `--minilm`, the insights are written sentences (see `sentences.rs`) whose MiniLM vectors
//! are computed before each timed part, not hashes: the same measurements on the vectors a
//! deployment stores, and the recall of paraphrases of stored bullets and of new insights.

mod sentences;

use std::sync::Arc;
use std::time::Instant;

use agent_learning_curator::{Curator, CuratorOptions, ThresholdJudge, dedup_filter};
use agent_learning_domain::{DeltaKind, Insight, PromotionGates, Stage};
use agent_learning_embed::testsuite::{HashEmbedder, hash_vector};
use agent_learning_embed::{Cached, Embedder, MINILM, MiniLm};
use agent_learning_store::Store;
use agent_learning_vector::{EdgeIndex, EdgeTuning, Hit, Search, SearchMode, VectorIndex};

/// The templated insights of the no-embedder runs (their vectors are hashes of the text).
fn templated(prefix: &str, from: usize, n: usize) -> Vec<Insight> {
    (from..from + n)
        .map(|i| Insight {
            id: format!("{prefix}-{i}"),
            section: SECTIONS[i % 3].into(),
            content: format!(
                "Observation {i}: in situation {} the action {} worked better than {} because of {}.",
                i % 97,
                i % 13,
                (i + 5) % 13,
                i * 7919 % 10007
            ),
            source: "bench".into(),
        })
        .collect()
}

const SECTIONS: [&str; 3] = ["strategy", "mistakes", "facts"];

/// Where the insights' texts and vectors come from.
struct Workload {
    embedder: Arc<dyn Embedder>,
    /// `Some` with `--minilm`: written sentences, embedded by MiniLM into this cache (large
    /// enough for every text of the run) before the part that uses them is timed.
    cache: Option<Arc<Cached>>,
}

impl Workload {
    fn insights(&self, prefix: &str, from: usize, n: usize) -> Vec<Insight> {
        match self.cache {
            Some(_) => sentences::insights(prefix, from, n),
            None => templated(prefix, from, n),
        }
    }

    /// Embeds, untimed, what a timed part will ask for (nothing to do for hash vectors).
    async fn prepare(&self, texts: Vec<String>) -> anyhow::Result<()> {
        if let Some(c) = &self.cache {
            c.embed(texts).await?;
        }
        Ok(())
    }

    /// Texts the model has embedded so far: a timed part must not change it.
    fn embedded(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.stats().1)
    }

    fn check_prepared(&self, before: u64, part: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.embedded() == before,
            "{part} embedded texts the benchmark did not prepare"
        );
        Ok(())
    }
}

async fn curator(
    dir: &std::path::Path,
    embedder: Arc<dyn Embedder>,
    tuning: EdgeTuning,
) -> anyhow::Result<(Arc<Curator>, Arc<EdgeIndex>)> {
    let store = Store::open_sqlite(&dir.join("db.sqlite"), 4).await?;
    let index = Arc::new(EdgeIndex::open_tuned(&dir.join("vectors"), tuning)?);
    let opts = CuratorOptions {
        merge_threshold: 0.8,
        sections: SECTIONS.iter().map(|s| (*s).to_owned()).collect(),
        max_content_bytes: 4096,
        max_insights_per_request: 1000,
        gates: PromotionGates::default(),
        collection: "bench".into(),
        // As deployed (vector.optimize_after_writes): loading 100k bullets must not scan them all.
        optimize_after_writes: 5000,
    };
    let judge = Arc::new(ThresholdJudge { threshold: 0.8 });
    let c = Arc::new(Curator::new(store, index.clone(), embedder, judge, opts));
    c.start().await?;
    Ok((c, index))
}

async fn measure(
    w: &Workload,
    c: &Curator,
    index: Option<&EdgeIndex>,
    ns: &str,
    size: usize,
    label: &str,
) -> anyhow::Result<()> {
    // Fresh insights, with one in five restating an existing bullet (a MERGE).
    let mut work = w.insights("measure", size, 400);
    let existing = w.insights("seed", 0, 100);
    for (i, ins) in work.iter_mut().enumerate().filter(|(i, _)| i % 5 == 0) {
        ins.content = existing[i % existing.len()].content.clone();
        ins.section = existing[i % existing.len()].section.clone();
    }
    let restated = work.len().div_ceil(5);
    let states: Vec<String> = (0..200)
        .map(|i| format!("situation {i} with traffic ahead"))
        .collect();
    w.prepare(
        work.iter()
            .map(|i| i.content.clone())
            .chain(states.clone())
            .collect(),
    )
    .await?;
    let embedded = w.embedded();
    // The searches curation makes, alone: the nearest bullet of the insight's section.
    let search = match index {
        Some(index) => {
            let vectors = w
                .embedder
                .embed(work.iter().map(|i| i.content.clone()).collect())
                .await?;
            let searches: Vec<Search> = work
                .iter()
                .zip(vectors)
                .map(|(ins, vector)| Search {
                    vector,
                    limit: 1,
                    filter: dedup_filter(ns, &ins.section),
                })
                .collect();
            let t = Instant::now();
            for batch in searches.chunks(50) {
                index.search_batch("bench", batch.to_vec()).await?;
            }
            format!(
                "; index search alone {:.3} ms",
                t.elapsed().as_secs_f64() * 1000.0 / work.len() as f64
            )
        }
        None => String::new(),
    };
    let started = Instant::now();
    let mut merged = 0;
    for batch in work.chunks(50) {
        merged += c
            .curate(ns, batch)
            .await?
            .iter()
            .filter(|op| op.kind == DeltaKind::Merge)
            .count();
    }
    let rate = work.len() as f64 / started.elapsed().as_secs_f64();
    let mut lat = Vec::new();
    for state in &states {
        let t = Instant::now();
        c.render_context(ns, state, None, 300, Stage::Shadow)
            .await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    w.check_prepared(embedded, "a measured curation or RenderContext")?;
    println!(
        "{label:<28} playbook {size:>7}: curate {rate:>8.0} insights/s ({:.3} ms/insight); \
         render_context p50 {:.2} ms p99 {:.2} ms; restatements merged {merged} of {restated}{search}",
        1000.0 / rate,
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100]
    );
    Ok(())
}

/// `v` turned towards `toward` until their cosine is `cos` (both unit vectors).
fn turned(v: &[f32], toward: &[f32], cos: f32) -> Vec<f32> {
    let along: f32 = v.iter().zip(toward).map(|(a, b)| a * b).sum();
    let mut ortho: Vec<f32> = toward.iter().zip(v).map(|(t, a)| t - along * a).collect();
    let n = ortho.iter().map(|x| x * x).sum::<f32>().sqrt();
    ortho.iter_mut().for_each(|x| *x /= n);
    let sin = (1.0 - cos * cos).sqrt();
    v.iter()
        .zip(ortho)
        .map(|(a, o)| cos * a + sin * o)
        .collect()
}

/// Recall of the curator's dedup search (one nearest bullet of a section) at several beam
/// widths against an exact search, on restatements of stored bullets and unrelated vectors.
async fn recall(
    w: &Workload,
    index: &EdgeIndex,
    ns: &str,
    stored: &[std::ops::Range<usize>],
    threshold: f32,
) -> anyhow::Result<()> {
    const QUERIES: usize = 300;
    let total: usize = stored.iter().map(|r| r.len()).sum();
    // Stored seed insights spread evenly over everything loaded.
    let picked: Vec<usize> = (0..QUERIES)
        .filter_map(|q| {
            let mut k = q * total / QUERIES;
            stored.iter().find_map(|r| {
                if k < r.len() {
                    Some(r.start + k)
                } else {
                    k -= r.len();
                    None
                }
            })
        })
        .collect();
    let seeds = |i: usize| w.insights("seed", i, 1).remove(0);
    let mut sets: Vec<(String, Vec<Search>)> = Vec::new();
    if w.cache.is_some() {
        // Each stored bullet said again in other words, and insights nobody wrote yet.
        let restated: Vec<(String, String)> = picked
            .iter()
            .map(|&i| (sentences::paraphrase("seed", i), seeds(i).section))
            .collect();
        let fresh: Vec<(String, String)> = w
            .insights("unrelated", 0, QUERIES)
            .into_iter()
            .map(|i| (i.content, i.section))
            .collect();
        for (what, queries) in [("paraphrases", restated), ("new insights", fresh)] {
            let vectors = w
                .embedder
                .embed(queries.iter().map(|q| q.0.clone()).collect())
                .await?;
            let searches = queries
                .iter()
                .zip(vectors)
                .map(|((_, section), vector)| Search {
                    vector,
                    limit: 1,
                    filter: dedup_filter(ns, section),
                })
                .collect();
            sets.push((what.to_owned(), searches));
        }
    } else {
        for cos in [0.9f32, 0.8] {
            let searches = picked
                .iter()
                .map(|&i| {
                    let ins = seeds(i);
                    Search {
                        vector: turned(
                            &hash_vector(&ins.content),
                            &hash_vector(&format!("paraphrase {i}")),
                            cos,
                        ),
                        limit: 1,
                        filter: dedup_filter(ns, &ins.section),
                    }
                })
                .collect();
            sets.push((format!("restatements at cosine {cos}"), searches));
        }
        let unrelated = picked
            .iter()
            .map(|&i| Search {
                vector: hash_vector(&format!("unrelated {i}")),
                limit: 1,
                filter: dedup_filter(ns, &seeds(i).section),
            })
            .collect();
        sets.push(("unrelated vectors".to_owned(), unrelated));
    }
    for (what, searches) in sets {
        let exact = index
            .search_batch_as("bench", searches.clone(), SearchMode::Exact)
            .await?;
        let top = |hits: &[Hit]| hits.first().map(|h| (h.id, h.score));
        let decision =
            |hit: Option<(uuid::Uuid, f32)>| hit.filter(|h| h.1 >= threshold).map(|h| h.0);
        let mut line = format!("  {what:<28}:");
        for ef in [16, 32, 64, 100] {
            let t = Instant::now();
            let found = index
                .search_batch_as("bench", searches.clone(), SearchMode::Ef(ef))
                .await?;
            let ms = t.elapsed().as_secs_f64() * 1000.0 / searches.len() as f64;
            let same = found
                .iter()
                .zip(&exact)
                .filter(|(a, b)| top(a).map(|h| h.0) == top(b).map(|h| h.0))
                .count();
            let agreed = found
                .iter()
                .zip(&exact)
                .filter(|(a, b)| decision(top(a)) == decision(top(b)))
                .count();
            line.push_str(&format!(
                " ef {ef}: recall@1 {same}/{} decisions {agreed}/{} ({ms:.3} ms);",
                searches.len(),
                searches.len()
            ));
        }
        let merges = exact.iter().filter(|h| decision(top(h)).is_some()).count();
        println!("{line} exact merges {merges}");
    }
    Ok(())
}

async fn load(
    w: &Workload,
    c: &Curator,
    ns: &str,
    from: usize,
    to: usize,
    batch: usize,
) -> anyhow::Result<()> {
    let mut loaded = from;
    while loaded < to {
        let n = (to - loaded).min(batch);
        c.curate(ns, &w.insights("seed", loaded, n)).await?;
        loaded += n;
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(run(&dirs));
    // The engine flushes its files when dropped: a background optimization still holding it
    // ends with the runtime, while its directory still exists.
    drop(runtime);
    result
}

async fn run(dirs: &[tempfile::TempDir; 2]) -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let real = args.iter().any(|a| a == "--real");
    let minilm = args.iter().any(|a| a == "--minilm");
    let quantize = !args.iter().any(|a| a == "--no-quantization");
    let hnsw_ef = match args.iter().position(|a| a == "--ef") {
        Some(i) => Some(
            args.get(i + 1)
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| anyhow::anyhow!("--ef takes a positive number"))?,
        ),
        None => None,
    };
    let (tuning, mut label) = if args.iter().any(|a| a == "--engine-defaults") {
        let qdrant = EdgeTuning {
            full_scan_threshold_kb: 10_000,
            indexing_threshold_kb: 10_000,
            hnsw_ef,
            quantize,
        };
        (qdrant, "no-embedder, engine defaults".to_owned())
    } else {
        (
            EdgeTuning {
                hnsw_ef,
                quantize,
                ..EdgeTuning::default()
            },
            "no-embedder".to_owned(),
        )
    };
    if let Some(ef) = hnsw_ef {
        label.push_str(&format!(", ef {ef}"));
    }
    if !quantize {
        label.push_str(", floats only");
    }
    let models = agent_learning_config::default_models_dir();
    let w = if minilm {
        let model = MiniLm::load(&MINILM.path(&models), 32)?;
        let cache = Arc::new(Cached::new(Arc::new(model), usize::MAX));
        label = label.replacen("no-embedder", "minilm vectors", 1);
        Workload {
            embedder: cache.clone(),
            cache: Some(cache),
        }
    } else {
        Workload {
            embedder: Arc::new(HashEmbedder),
            cache: None,
        }
    };
    let sizes: Vec<usize> = match args
        .iter()
        .enumerate()
        .find(|(i, a)| !a.starts_with("--") && (*i == 0 || args[i - 1] != "--ef"))
        .map(|(_, a)| a)
    {
        Some(list) => list
            .split(',')
            .map(|n| n.parse())
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("sizes must look like 1000,10000: {e}"))?,
        None => vec![1_000, 10_000, 100_000],
    };
    anyhow::ensure!(!sizes.is_empty(), "no playbook sizes given");
    let (c, index) = curator(dirs[0].path(), w.embedder.clone(), tuning).await?;
    let ns = "bench";
    let mut loaded = 0;
    let mut stored = Vec::new();
    for &size in &sizes {
        let new = size.saturating_sub(loaded);
        if w.cache.is_some() {
            let t = Instant::now();
            let texts = w
                .insights("seed", loaded, new)
                .into_iter()
                .map(|i| i.content);
            w.prepare(texts.collect()).await?;
            eprintln!(
                "embedded {new} seed insights in {:.1} s (not counted)",
                t.elapsed().as_secs_f64()
            );
        }
        let t = Instant::now();
        let embedded = w.embedded();
        load(&w, &c, ns, loaded, size, 1000).await?;
        w.check_prepared(embedded, "loading")?;
        if size > loaded {
            stored.push(loaded..size);
        }
        loaded = loaded.max(size);
        let load_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        c.optimize_index().await?;
        let layout = index.layout("bench")?;
        println!(
            "loaded to {size} bullets in {load_s:.1} s ({:.3} ms/insight with the background \
             optimizations), index optimized in {:.1} s: {} segments, {} points, {} in HNSW",
            load_s * 1000.0 / new.max(1) as f64,
            t.elapsed().as_secs_f64(),
            layout.segments,
            layout.points,
            layout.indexed
        );
        measure(&w, &c, Some(&index), ns, size, &label).await?;
        recall(&w, &index, ns, &stored, c.options().merge_threshold).await?;
        // The measured insights were ADDed too: the next size starts above them.
        loaded += 400;
    }
    if real {
        let embedder = Arc::new(MiniLm::load(&MINILM.path(&models), 32)?);
        let (c, _) = curator(dirs[1].path(), embedder.clone(), tuning).await?;
        // The templated texts, embedded as curation goes.
        let w = Workload {
            embedder,
            cache: None,
        };
        load(&w, &c, ns, 0, sizes[0], 500).await?;
        measure(&w, &c, None, ns, sizes[0], "minilm").await?;
    }
    Ok(())
}
