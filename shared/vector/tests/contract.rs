//! One contract suite for every `VectorIndex`: the in-process engine always, a Qdrant server
//! when `AGENT_LEARNING_TEST_QDRANT_URL` names one (`.ci/run` starts `../shared/bin/qdrant`
//! with an API key in `AGENT_LEARNING_TEST_QDRANT_API_KEY`).

use std::collections::BTreeMap;
use std::sync::Arc;

use agent_learning_vector::{
    EdgeIndex, EdgeTuning, Filter, Hit, Point, RemoteIndex, Search, SearchMode, VectorError,
    VectorIndex,
};
use uuid::Uuid;

const DIM: usize = 4;

fn point(id: Uuid, v: [f32; DIM], ns: &str, section: &str, stage: &str) -> Point {
    Point {
        id,
        vector: v.to_vec(),
        payload: BTreeMap::from([
            ("namespace".into(), ns.into()),
            ("section".into(), section.into()),
            ("stage".into(), stage.into()),
        ]),
    }
}

/// An in-process index that builds graphs over a few points (1 KB thresholds).
fn small_graph_index(dir: &std::path::Path) -> Arc<EdgeIndex> {
    let tuning = EdgeTuning {
        full_scan_threshold_kb: 1,
        indexing_threshold_kb: 1,
        ..EdgeTuning::default()
    };
    Arc::new(EdgeIndex::open_tuned(dir, tuning).unwrap())
}

fn hit_ids(hits: &[Hit]) -> Vec<Uuid> {
    hits.iter().map(|h| h.id).collect()
}

async fn contract(index: &dyn VectorIndex, c: &str) {
    index
        .ensure_collection(c, DIM, &["namespace", "section", "stage"])
        .await
        .unwrap();
    // Idempotent.
    index
        .ensure_collection(c, DIM, &["namespace", "section", "stage"])
        .await
        .unwrap();
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    index
        .upsert(
            c,
            vec![
                point(ids[0], [1.0, 0.0, 0.0, 0.0], "a", "facts", "shadow"),
                point(ids[1], [0.9, 0.1, 0.0, 0.0], "a", "facts", "production"),
                point(ids[2], [1.0, 0.0, 0.0, 0.0], "b", "facts", "shadow"),
                point(ids[3], [0.0, 1.0, 0.0, 0.0], "a", "strategy", "staging"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(index.count(c).await.unwrap(), 4);

    let q = vec![1.0, 0.0, 0.0, 0.0];
    let hits = index
        .search(c, q.clone(), 10, Filter::default().eq("namespace", "a"))
        .await
        .unwrap();
    let got: Vec<Uuid> = hits.iter().map(|h| h.id).collect();
    assert_eq!(
        got,
        vec![ids[0], ids[1], ids[3]],
        "most similar first, namespace a only"
    );
    assert!(
        (hits[0].score - 1.0).abs() < 1e-4,
        "cosine of identical vectors"
    );
    assert!(hits[2].score.abs() < 1e-4, "cosine of orthogonal vectors");

    let hits = index
        .search(
            c,
            q.clone(),
            10,
            Filter::default()
                .eq("namespace", "a")
                .any("stage", vec!["staging".into(), "production".into()]),
        )
        .await
        .unwrap();
    assert_eq!(
        hits.iter().map(|h| h.id).collect::<Vec<_>>(),
        vec![ids[1], ids[3]]
    );

    let hits = index
        .search(
            c,
            q.clone(),
            1,
            Filter::default()
                .eq("namespace", "a")
                .eq("section", "facts"),
        )
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].id, ids[0]);

    // A batch answers each search as it would be answered alone, in the order asked (more
    // searches than cores, so the in-process engine splits them).
    let searches: Vec<Search> = (0..7)
        .map(|i| Search {
            vector: match i % 3 {
                0 => vec![1.0, 0.0, 0.0, 0.0],
                1 => vec![0.0, 1.0, 0.0, 0.0],
                _ => vec![0.5, 0.5, 0.0, 0.0],
            },
            limit: 1 + i % 3,
            filter: match i % 4 {
                0 => Filter::default().eq("namespace", "a"),
                1 => Filter::default().eq("namespace", "b"),
                2 => Filter::default().eq("section", "strategy"),
                _ => Filter::default().eq("namespace", "none"),
            },
        })
        .collect();
    let batch = index.search_batch(c, searches.clone()).await.unwrap();
    assert_eq!(batch.len(), searches.len());
    for (i, (s, got)) in searches.into_iter().zip(&batch).enumerate() {
        let alone = index.search(c, s.vector, s.limit, s.filter).await.unwrap();
        assert_eq!(hit_ids(got), hit_ids(&alone), "search {i} of the batch");
    }
    assert_eq!(hit_ids(&batch[0]), vec![ids[0]]);
    assert_eq!(
        hit_ids(&batch[1]),
        vec![ids[2]],
        "namespace b holds one point"
    );
    assert_eq!(
        hit_ids(&batch[2]),
        vec![ids[3]],
        "section strategy holds one point"
    );
    assert!(batch[3].is_empty(), "a namespace with no points");
    assert!(index.search_batch(c, Vec::new()).await.unwrap().is_empty());

    // Upsert replaces the payload (a stage change) and the vector.
    index
        .upsert(
            c,
            vec![point(
                ids[0],
                [0.0, 0.0, 1.0, 0.0],
                "a",
                "facts",
                "quarantined",
            )],
        )
        .await
        .unwrap();
    let hits = index
        .search(c, q.clone(), 10, Filter::default().eq("stage", "shadow"))
        .await
        .unwrap();
    assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![ids[2]]);

    index.delete(c, vec![ids[3], Uuid::new_v4()]).await.unwrap();
    assert_eq!(index.count(c).await.unwrap(), 3);

    // Scroll visits every point once, with payloads.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = index.scroll(c, after, 2).await.unwrap();
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        seen.extend(page);
    }
    let mut seen_ids: Vec<Uuid> = seen.iter().map(|(id, _)| *id).collect();
    seen_ids.sort();
    let mut want = vec![ids[0], ids[1], ids[2]];
    want.sort();
    assert_eq!(seen_ids, want);
    let p0 = &seen.iter().find(|(id, _)| *id == ids[0]).unwrap().1;
    assert_eq!(p0["stage"], "quarantined");

    let err = index
        .upsert(
            c,
            vec![Point {
                id: Uuid::new_v4(),
                vector: vec![1.0],
                payload: BTreeMap::new(),
            }],
        )
        .await;
    assert!(err.is_err(), "a vector of the wrong length is refused");
    index.optimize(c).await.unwrap();
    assert_eq!(index.count(c).await.unwrap(), 3);
}

#[tokio::test]
async fn edge_contract_and_persistence() {
    let dir = tempfile::tempdir().unwrap();
    {
        let index = EdgeIndex::open(dir.path()).unwrap();
        contract(&index, "contract").await;
        let err = index.count("missing").await.unwrap_err();
        assert!(matches!(err, VectorError::NoCollection(_)));
    }
    // Reopened from disk: the same points answer.
    let index = EdgeIndex::open(dir.path()).unwrap();
    index
        .ensure_collection("contract", DIM, &["namespace"])
        .await
        .unwrap();
    assert_eq!(index.count("contract").await.unwrap(), 3);
    let hits = index
        .search(
            "contract",
            vec![1.0, 0.0, 0.0, 0.0],
            1,
            Filter::default().eq("namespace", "b"),
        )
        .await
        .unwrap();
    assert_eq!(hits.len(), 1);
}

/// The engine's thresholds reach the collection: with `indexing_threshold_kb = 1`, 600 points of
/// 4 numbers (9 KB) get an HNSW graph when optimized, which the engine's own default (10,000
/// KB) would leave a plain segment; filtered searches still find the exact nearest, and the
/// collection reopens under other thresholds with every point.
#[tokio::test]
async fn edge_tuning_reaches_the_collection() {
    let dir = tempfile::tempdir().unwrap();
    // Points 0.01 rad apart: closer than the 8-bit vectors tell apart, so floats only.
    let tuned = EdgeTuning {
        full_scan_threshold_kb: 1,
        indexing_threshold_kb: 1,
        quantize: false,
        ..EdgeTuning::default()
    };
    let ids: Vec<Uuid> = (0..600).map(|_| Uuid::new_v4()).collect();
    let vector = |i: usize| {
        let a = i as f32 * 0.01;
        [a.cos(), a.sin(), (i % 7) as f32 * 0.01, 0.5]
    };
    {
        let index = EdgeIndex::open_tuned(dir.path(), tuned).unwrap();
        index
            .ensure_collection("tuned", DIM, &["namespace", "section"])
            .await
            .unwrap();
        let points = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let section = if i % 2 == 0 { "even" } else { "odd" };
                point(*id, vector(i), "a", section, "shadow")
            })
            .collect();
        index.upsert("tuned", points).await.unwrap();
        index.optimize("tuned").await.unwrap();
        let layout = index.layout("tuned").unwrap();
        assert_eq!(layout.points, 600);
        assert!(layout.indexed >= 300, "no HNSW graph was built: {layout:?}");
        for i in [10, 301, 598] {
            let section = if i % 2 == 0 { "even" } else { "odd" };
            let hits = index
                .search(
                    "tuned",
                    vector(i).to_vec(),
                    1,
                    Filter::default()
                        .eq("namespace", "a")
                        .eq("section", section),
                )
                .await
                .unwrap();
            assert_eq!(hits[0].id, ids[i], "point {i}");
        }
    }
    let index = EdgeIndex::open(dir.path()).unwrap();
    index
        .ensure_collection("tuned", DIM, &["namespace", "section"])
        .await
        .unwrap();
    assert_eq!(index.count("tuned").await.unwrap(), 600);
    assert!(
        EdgeIndex::open_tuned(
            tempfile::tempdir().unwrap().path(),
            EdgeTuning {
                full_scan_threshold_kb: 0,
                indexing_threshold_kb: 1,
                ..EdgeTuning::default()
            }
        )
        .is_err(),
        "a threshold of 0 is refused"
    );
}

/// `SearchMode::Exact` returns the true nearest point of the filter (by brute force here) with
/// its exact score, over a collection whose segment has a graph and 8-bit vectors; a search
/// with a beam width of its own, or as tuned, returns exact scores too (rescored on the floats).
#[tokio::test]
async fn exact_and_beam_width_searches_on_a_graph() {
    const D: usize = 24;
    let dir = tempfile::tempdir().unwrap();
    let index = small_graph_index(dir.path());
    index
        .ensure_collection("graph", D, &["namespace", "section"])
        .await
        .unwrap();
    // Deterministic pseudo-random unit vectors.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut unit = move || {
        let mut v: Vec<f32> = (0..D)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 11) as f32 / (1u64 << 53) as f32 - 0.5
            })
            .collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        v
    };
    let stored: Vec<(Uuid, Vec<f32>, &str)> = (0..2000)
        .map(|i| {
            (
                Uuid::new_v4(),
                unit(),
                if i % 2 == 0 { "even" } else { "odd" },
            )
        })
        .collect();
    let points = stored
        .iter()
        .map(|(id, v, section)| {
            let mut p = point(*id, [0.0; DIM], "a", section, "shadow");
            p.vector = v.clone();
            p
        })
        .collect();
    index.upsert("graph", points).await.unwrap();
    index.optimize("graph").await.unwrap();
    assert!(index.layout("graph").unwrap().indexed >= 1000, "no graph");
    let cosine = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let queries: Vec<(Vec<f32>, &str)> = (0..40)
        .map(|i| (unit(), if i % 2 == 0 { "even" } else { "odd" }))
        .collect();
    let searches: Vec<Search> = queries
        .iter()
        .map(|(v, section)| Search {
            vector: v.clone(),
            limit: 1,
            filter: Filter::default()
                .eq("namespace", "a")
                .eq("section", *section),
        })
        .collect();
    let exact = index
        .search_batch_as("graph", searches.clone(), SearchMode::Exact)
        .await
        .unwrap();
    for ((q, section), hits) in queries.iter().zip(&exact) {
        let (best, score) = stored
            .iter()
            .filter(|(_, _, s)| s == section)
            .map(|(id, v, _)| (*id, cosine(q, v)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        assert_eq!(hits[0].id, best);
        assert!(
            (hits[0].score - score).abs() < 1e-5,
            "{} vs {score}",
            hits[0].score
        );
    }
    for mode in [SearchMode::Ef(4), SearchMode::Ef(128), SearchMode::Tuned] {
        let found = index
            .search_batch_as("graph", searches.clone(), mode)
            .await
            .unwrap();
        assert_eq!(found.len(), queries.len());
        for ((q, _), hits) in queries.iter().zip(&found) {
            let v = &stored
                .iter()
                .find(|(id, _, _)| *id == hits[0].id)
                .unwrap()
                .1;
            assert!((hits[0].score - cosine(q, v)).abs() < 1e-5, "{mode:?}");
        }
    }
}

/// Indexed segments keep 8-bit copies of their vectors when `quantize` is set (the default),
/// also for a collection made without them (its next start changes its configuration, its next
/// optimization rebuilds the segments), and back; either way the search finds the nearest point
/// of the filter and the score it returns is the exact cosine, not the 8-bit estimate.
#[tokio::test]
async fn quantization_is_applied_on_reopen_and_scores_stay_exact() {
    const WIDE: usize = 32;
    let dir = tempfile::tempdir().unwrap();
    let tuning = |quantize| EdgeTuning {
        full_scan_threshold_kb: 1,
        indexing_threshold_kb: 1,
        quantize,
        ..EdgeTuning::default()
    };
    // Scattered points, as embeddings are (a fixed pseudo-random sequence).
    let vector = |i: usize| -> Vec<f32> {
        (0..WIDE)
            .map(|d| {
                // splitmix64
                let mut x = ((i * WIDE + d) as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
                x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                x ^= x >> 31;
                ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    };
    let cosine = |a: &[f32], b: &[f32]| {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (norm(a) * norm(b))
    };
    let ids: Vec<Uuid> = (0..600).map(|_| Uuid::new_v4()).collect();
    let section = |i: usize| if i.is_multiple_of(2) { "even" } else { "odd" };
    let config = dir.path().join("q").join("edge_config.json");
    for (round, quantize) in [false, true, false].into_iter().enumerate() {
        let index = EdgeIndex::open_tuned(dir.path(), tuning(quantize)).unwrap();
        index
            .ensure_collection("q", WIDE, &["namespace", "section"])
            .await
            .unwrap();
        if round == 0 {
            let points = ids
                .iter()
                .enumerate()
                .map(|(i, id)| Point {
                    id: *id,
                    vector: vector(i),
                    payload: BTreeMap::from([
                        ("namespace".into(), "a".into()),
                        ("section".into(), section(i).into()),
                    ]),
                })
                .collect();
            index.upsert("q", points).await.unwrap();
        }
        index.optimize("q").await.unwrap();
        let stored = std::fs::read_to_string(&config).unwrap();
        assert_eq!(
            stored.contains("\"scalar\""),
            quantize,
            "round {round}: {stored}"
        );
        let layout = index.layout("q").unwrap();
        assert_eq!(layout.points, 600, "round {round}");
        assert!(layout.indexed >= 300, "round {round}: {layout:?}");
        for i in [7, 300, 599] {
            // Near a point of the section, not on it.
            let query: Vec<f32> = vector(i)
                .iter()
                .zip(vector(1000 + i))
                .map(|(a, b)| 0.8 * a + 0.2 * b)
                .collect();
            let hits = index
                .search(
                    "q",
                    query.clone(),
                    1,
                    Filter::default()
                        .eq("namespace", "a")
                        .eq("section", section(i)),
                )
                .await
                .unwrap();
            assert_eq!(hits[0].id, ids[i], "round {round}, point {i}");
            let exact = cosine(&query, &vector(i));
            assert!(
                (hits[0].score - exact).abs() < 1e-5,
                "round {round}, point {i}: score {} against {exact}",
                hits[0].score
            );
        }
    }
}

/// A collection kept by `Upkeep` gets its graph built in the background once enough writes
/// were counted (1,000 for a new collection), with no call to `optimize`; with 0 it never does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upkeep_builds_the_graph_in_the_background() {
    use agent_learning_vector::Upkeep;
    let dir = tempfile::tempdir().unwrap();
    let index = small_graph_index(dir.path());
    let vector = |i: usize| {
        let a = i as f32 * 0.37;
        [a.cos(), a.sin(), (i % 11) as f32 * 0.05, 0.5]
    };
    for (collection, after_writes) in [("kept", 5000), ("never", 0)] {
        index
            .ensure_collection(collection, DIM, &["namespace", "section"])
            .await
            .unwrap();
        let upkeep = Upkeep::new(index.clone(), collection, after_writes);
        upkeep.opened_with(index.count(collection).await.unwrap());
        for chunk in 0..6 {
            let points: Vec<Point> = (chunk * 200..(chunk + 1) * 200)
                .map(|i| point(Uuid::new_v4(), vector(i), "a", "s", "shadow"))
                .collect();
            index.upsert(collection, points).await.unwrap();
            upkeep.note_writes(200);
            if chunk == 3 {
                // 800 written: not due yet.
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                assert_eq!(index.layout(collection).unwrap().indexed, 0, "{collection}");
            }
        }
        // Bounded wait for the background task ("never" starts none).
        let mut layout = index.layout(collection).unwrap();
        let polls = if after_writes == 0 { 5 } else { 600 };
        for _ in 0..polls {
            if layout.indexed > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            layout = index.layout(collection).unwrap();
        }
        assert_eq!(layout.points, 1200, "{collection}");
        if after_writes == 0 {
            assert_eq!(layout.indexed, 0, "{collection}: {layout:?}");
        } else {
            assert!(layout.indexed >= 1000, "{collection}: {layout:?}");
        }
    }
}

/// Closing an index whose files were removed under it (a test's temp dir cleaned up while a
/// task still held the index; a volume unmounted) logs instead of panicking: the engine's own
/// flush panics there, and a panic in a drop during a runtime's shutdown aborts the process.
#[tokio::test]
async fn closing_an_index_whose_files_are_gone_does_not_panic() {
    for remove in ["root", "segments"] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vectors");
        let index = EdgeIndex::open(&root).unwrap();
        index
            .ensure_collection("gone", DIM, &["namespace"])
            .await
            .unwrap();
        let id = Uuid::new_v4();
        index
            .upsert(
                "gone",
                vec![point(id, [1.0, 0.0, 0.0, 0.0], "a", "facts", "shadow")],
            )
            .await
            .unwrap();
        std::fs::remove_dir_all(match remove {
            "root" => root.clone(),
            _ => root.join("gone"),
        })
        .unwrap();
        if remove == "segments" {
            // The collection's directory is back, empty: the flush itself fails.
            std::fs::create_dir_all(root.join("gone")).unwrap();
        }
        let closed = std::thread::spawn(move || drop(index)).join();
        assert!(
            closed.is_ok(),
            "closing after removing the {remove} panicked"
        );
    }
}

#[test]
fn one_process_at_a_time_opens_the_engine_dir() {
    let dir = tempfile::tempdir().unwrap();
    let first = EdgeIndex::open(dir.path()).unwrap();
    let err = match EdgeIndex::open(dir.path()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a second open of a directory in use succeeded"),
    };
    assert!(
        err.contains("in use by another process")
            && err.contains(&dir.path().display().to_string()),
        "{err}"
    );
    drop(first);
    EdgeIndex::open(dir.path()).expect("free again once the first is closed");
}

#[tokio::test]
async fn remote_contract() {
    let Ok(url) = std::env::var("AGENT_LEARNING_TEST_QDRANT_URL") else {
        eprintln!(
            "remote_contract skipped: it needs a Qdrant server's gRPC URL in \
             AGENT_LEARNING_TEST_QDRANT_URL (.ci/run starts ../shared/bin/qdrant)"
        );
        return;
    };
    let key = std::env::var("AGENT_LEARNING_TEST_QDRANT_API_KEY").ok();
    let index = RemoteIndex::connect(&url, key.clone()).unwrap();
    let c = format!("contract_{}", Uuid::new_v4().simple());
    contract(&index, &c).await;
    // The same contract with a beam width of our own in every search (`vector.hnsw_ef`).
    let narrow = RemoteIndex::connect(&url, key.clone())
        .unwrap()
        .with_hnsw_ef(Some(16));
    contract(&narrow, &format!("contract_ef_{}", Uuid::new_v4().simple())).await;
    // Processes starting together each ensure the same new collection: all succeed (the
    // losers of the creation race find it there).
    let raced = format!("raced_{}", Uuid::new_v4().simple());
    let clients: Vec<RemoteIndex> = (0..6)
        .map(|_| RemoteIndex::connect(&url, key.clone()).unwrap())
        .collect();
    let ensured = futures::future::join_all(
        clients
            .iter()
            .map(|i| i.ensure_collection(&raced, DIM, &["namespace", "section"])),
    )
    .await;
    for r in ensured {
        r.unwrap();
    }
    assert_eq!(index.count(&raced).await.unwrap(), 0);
    if key.is_some() {
        // A server with an API key refuses a client without it, with an error, not a panic.
        let anonymous = RemoteIndex::connect(&url, None).unwrap();
        let err = anonymous.count(&c).await.unwrap_err();
        assert!(!err.to_string().is_empty());
        let wrong = RemoteIndex::connect(&url, Some("not-the-key".into())).unwrap();
        assert!(wrong.count(&c).await.is_err());
    }
}

/// Writes and optimizations (each ending with a flush of the engine's files) at the same
/// time: the engine's flush panics when a write holds its WAL, so the index must keep them
/// apart. Every write lands, every optimization succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_optimizations_and_flushes_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let index = small_graph_index(dir.path());
    index
        .ensure_collection("busy", DIM, &["namespace", "section"])
        .await
        .unwrap();
    let writer = {
        let index = index.clone();
        tokio::spawn(async move {
            for batch in 0..300usize {
                let points = (0..5)
                    .map(|j| {
                        let a = (batch * 5 + j) as f32 * 0.01;
                        point(
                            Uuid::new_v4(),
                            [a.cos(), a.sin(), 0.1, 0.5],
                            "a",
                            "s",
                            "shadow",
                        )
                    })
                    .collect();
                index.upsert("busy", points).await.unwrap();
            }
        })
    };
    let mut optimized = 0;
    while !writer.is_finished() && optimized < 200 {
        index.optimize("busy").await.unwrap();
        optimized += 1;
    }
    writer.await.unwrap();
    assert_eq!(index.count("busy").await.unwrap(), 1500);
    assert!(
        optimized > 1,
        "the optimizations did not overlap the writes"
    );
}
