//! The Curator's behaviour with real parts: SQLite, the in-process Qdrant engine, MiniLM.

mod common;

use agent_learning_curator::{BatchFlushed, CuratorError, FeedbackItem, PlaybookQuery};
use agent_learning_domain::{DeltaKind, Stage, estimate_tokens};
use common::{curator_in, insight};

#[tokio::test]
async fn paraphrase_merges_new_knowledge_adds_and_replays_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = curator_in(dir.path()).await;
    let ns = "drive";
    let ops = c
        .curate(
            ns,
            &[
                insight(
                    "a",
                    "strategy",
                    "Keep a safe following distance of two seconds behind the car ahead.",
                ),
                insight(
                    "b",
                    "strategy",
                    "Stay at least two seconds behind the vehicle in front of you.",
                ),
                insight("c", "facts", "The highway exit is on the right side."),
            ],
        )
        .await
        .unwrap();
    assert_eq!(ops[0].kind, DeltaKind::Add);
    assert_eq!(
        ops[1].kind,
        DeltaKind::Merge,
        "paraphrase within one batch merges"
    );
    assert_eq!(ops[1].bullet_id, ops[0].bullet_id);
    assert!(ops[1].similarity >= 0.8);
    assert_eq!(ops[2].kind, DeltaKind::Add);

    let page = c.get_playbook(ns, &PlaybookQuery::default()).await.unwrap();
    assert_eq!(page.total, 2);
    let first = page
        .bullets
        .iter()
        .find(|b| b.id == ops[0].bullet_id)
        .unwrap();
    assert_eq!(first.evidence, 2);
    assert_eq!(first.stage, Stage::Shadow);
    assert_eq!(first.sources, vec!["test:a", "test:b"]);

    // The same ids again: reported as replayed, nothing changes.
    let again = c
        .curate(
            ns,
            &[
                insight(
                    "a",
                    "strategy",
                    "Keep a safe following distance of two seconds behind the car ahead.",
                ),
                insight(
                    "b",
                    "strategy",
                    "Stay at least two seconds behind the vehicle in front of you.",
                ),
            ],
        )
        .await
        .unwrap();
    assert!(again.iter().all(|op| op.replayed));
    assert_eq!(again[1].kind, DeltaKind::Merge);
    let page = c.get_playbook(ns, &PlaybookQuery::default()).await.unwrap();
    assert_eq!(page.total, 2);
    assert_eq!(
        page.bullets
            .iter()
            .find(|b| b.id == ops[0].bullet_id)
            .unwrap()
            .evidence,
        2
    );
    let h = c.health(ns).await.unwrap();
    assert_eq!((h.insights_applied, h.merges), (3, 1));

    // A paraphrase in another section or namespace does not merge.
    let other = c
        .curate(
            ns,
            &[insight(
                "d",
                "mistakes",
                "Keep a safe following distance of two seconds behind the car ahead.",
            )],
        )
        .await
        .unwrap();
    assert_eq!(other[0].kind, DeltaKind::Add);
    let elsewhere = c
        .curate(
            "support",
            &[insight(
                "a",
                "strategy",
                "Stay at least two seconds behind the vehicle in front of you.",
            )],
        )
        .await
        .unwrap();
    assert_eq!(elsewhere[0].kind, DeltaKind::Add);
    assert!(
        !elsewhere[0].replayed,
        "insight ids are scoped to their namespace"
    );
}

#[tokio::test]
async fn bad_input_is_named_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = curator_in(dir.path()).await;
    let ok = insight("ok", "facts", "Trucks are slower on uphill sections.");
    let cases = [
        ("bad namespace", "Bad NS", vec![ok.clone()], "namespace"),
        (
            "empty content",
            "ns",
            vec![ok.clone(), insight("x", "facts", "   ")],
            "insights[1].content",
        ),
        (
            "oversized",
            "ns",
            vec![insight("x", "facts", &"a".repeat(4097))],
            "insights[0].content",
        ),
        (
            "unknown section",
            "ns",
            vec![insight("x", "tactics", "something")],
            "insights[0].section",
        ),
        (
            "blank id",
            "ns",
            vec![insight(" ", "facts", "something")],
            "insights[0].id",
        ),
        ("no insights", "ns", vec![], "insights"),
    ];
    for (what, ns, insights, field) in cases {
        let err = c.curate(ns, &insights).await.unwrap_err();
        match err {
            CuratorError::Invalid(i) => assert_eq!(i.field, field, "{what}"),
            other => panic!("{what}: {other}"),
        }
    }
    // RenderContext's limits: the state as large as Decide's, the budget range-checked.
    let state = "y".repeat(agent_learning_domain::MAX_STATE_BYTES + 1);
    for (state, budget, field) in [
        (state.as_str(), 100, "state"),
        ("speed=3", 0, "token_budget"),
        (
            "speed=3",
            agent_learning_domain::MAX_TOKEN_BUDGET + 1,
            "token_budget",
        ),
    ] {
        match c
            .render_context("ns", state, None, budget, Stage::Shadow)
            .await
        {
            Err(CuratorError::Invalid(i)) => assert_eq!(i.field, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    // The valid insight in the rejected batch was not stored either.
    assert_eq!(c.health("ns").await.unwrap().total, 0);
    assert_eq!(c.health("ns").await.unwrap().insights_applied, 0);
}

#[tokio::test]
async fn feedback_promotes_and_search_respects_stages() {
    let dir = tempfile::tempdir().unwrap();
    let c = curator_in(dir.path()).await;
    let ns = "ops";
    let ops = c
        .curate(
            ns,
            &[
                insight(
                    "r1",
                    "strategy",
                    "Roll back the last deploy first when errors spike right after it.",
                ),
                insight(
                    "r2",
                    "strategy",
                    "Check the database connection pool before restarting web servers.",
                ),
                insight(
                    "r3",
                    "mistakes",
                    "Restarting every pod at once turns a partial outage into a full one.",
                ),
            ],
        )
        .await
        .unwrap();
    let id = |i: usize| ops[i].bullet_id.to_string();
    // Five decisions found it helpful.
    let mut stage = Stage::Shadow;
    for d in 0..5 {
        let (bullets, replayed) = vote(&c, ns, &format!("decision:{d}"), &id(0), true).await;
        assert!(!replayed);
        stage = bullets[0].stage;
    }
    assert_eq!(stage, Stage::Production);

    let prod = c
        .search(
            ns,
            "errors went up after we deployed",
            10,
            Stage::Production,
            None,
        )
        .await
        .unwrap();
    assert_eq!(prod.len(), 1);
    assert_eq!(prod[0].0.id, ops[0].bullet_id);
    let any = c
        .search(
            ns,
            "errors went up after we deployed",
            10,
            Stage::Shadow,
            None,
        )
        .await
        .unwrap();
    assert_eq!(any.len(), 3);
    assert_eq!(any[0].0.id, ops[0].bullet_id, "most relevant first");

    // Quarantine (as many decisions misled as it helped) removes it from every stage's view.
    for d in 5..10 {
        vote(&c, ns, &format!("decision:{d}"), &id(0), false).await;
    }
    let any = c
        .search(
            ns,
            "errors went up after we deployed",
            10,
            Stage::Shadow,
            None,
        )
        .await
        .unwrap();
    assert!(any.iter().all(|(b, _)| b.id != ops[0].bullet_id));

    let err = c
        .record_feedback(
            ns,
            "decision:x",
            &[FeedbackItem {
                bullet_id: "nope".into(),
                helpful: 1,
                harmful: 0,
            }],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, CuratorError::Invalid(ref i) if i.field == "feedback[0].bullet_id"),
        "{err}"
    );
}

/// One vote on one bullet from the decision `decision`.
async fn vote(
    c: &agent_learning_curator::Curator,
    ns: &str,
    decision: &str,
    bullet_id: &str,
    helpful: bool,
) -> (Vec<agent_learning_domain::Bullet>, bool) {
    c.record_feedback(
        ns,
        decision,
        &[FeedbackItem {
            bullet_id: bullet_id.to_owned(),
            helpful: u32::from(helpful),
            harmful: u32::from(!helpful),
        }],
    )
    .await
    .unwrap()
}

async fn bullet(
    c: &agent_learning_curator::Curator,
    ns: &str,
    id: &str,
) -> agent_learning_domain::Bullet {
    let page = c.get_playbook(ns, &PlaybookQuery::default()).await.unwrap();
    page.bullets
        .into_iter()
        .find(|b| b.id.to_string() == id)
        .unwrap_or_else(|| panic!("no bullet {id}"))
}

#[tokio::test]
async fn votes_are_one_per_decision_and_bullet_and_manual_stages_stick() {
    let dir = tempfile::tempdir().unwrap();
    let c = curator_in(dir.path()).await;
    let ns = "integrity";
    let ops = c
        .curate(
            ns,
            &[
                insight(
                    "i1",
                    "strategy",
                    "Merge onto the highway at the speed of traffic.",
                ),
                insight(
                    "i2",
                    "mistakes",
                    "Changing lanes without a gap forces others to brake.",
                ),
                insight(
                    "i3",
                    "facts",
                    "Trucks need a longer distance to stop than cars.",
                ),
            ],
        )
        .await
        .unwrap();
    let id = |i: usize| ops[i].bullet_id.to_string();
    let invalid_field = |e: CuratorError| match e {
        CuratorError::Invalid(i) => format!("{}: {}", i.field, i.reason),
        other => panic!("not INVALID_ARGUMENT: {other}"),
    };

    // One call cannot amplify: a thousand votes on one item, the same bullet twice, or votes
    // from nowhere are refused, and nothing is counted.
    let many = FeedbackItem {
        bullet_id: id(0),
        helpful: 1000,
        harmful: 0,
    };
    let err = c.record_feedback(ns, "d1", &[many]).await.unwrap_err();
    let text = invalid_field(err);
    assert!(
        text.starts_with("feedback[0]: one vote per bullet"),
        "{text}"
    );
    let one = |b: String| FeedbackItem {
        bullet_id: b,
        helpful: 1,
        harmful: 0,
    };
    let err = c
        .record_feedback(ns, "d1", &vec![one(id(0)); 1000])
        .await
        .unwrap_err();
    let text = invalid_field(err);
    assert!(
        text.starts_with("feedback[1].bullet_id: names the same bullet as feedback[0]"),
        "{text}"
    );
    let err = c.record_feedback(ns, "", &[one(id(0))]).await.unwrap_err();
    assert!(invalid_field(err).starts_with("feedback_id:"));
    let b = bullet(&c, ns, &id(0)).await;
    assert_eq!((b.helpful, b.harmful, b.stage), (0, 0, Stage::Shadow));

    // The same decision again is a replay: one vote per decision and bullet.
    for _ in 0..10 {
        vote(&c, ns, "d1", &id(0), true).await;
    }
    let b = bullet(&c, ns, &id(0)).await;
    assert_eq!(b.helpful, 1);

    // Harmful evidence alone quarantines: three decisions misled, none helped.
    let mut last = Stage::Shadow;
    for d in 0..3 {
        last = vote(&c, ns, &format!("bad-{d}"), &id(1), false).await.0[0].stage;
    }
    assert_eq!(last, Stage::Quarantined);

    // A quarantine set by hand sticks: helpful votes do not bring the bullet back.
    c.set_stage(ns, &id(2), Some(Stage::Quarantined), "reviewed: wrong")
        .await
        .unwrap();
    for d in 0..6 {
        vote(&c, ns, &format!("good-{d}"), &id(2), true).await;
    }
    let b = bullet(&c, ns, &id(2)).await;
    assert_eq!((b.helpful, b.stage), (6, Stage::Quarantined));
    // Set by hand again, it moves (as far as its votes earned) and stays pinned there.
    c.set_stage(ns, &id(2), Some(Stage::Staging), "reviewed again")
        .await
        .unwrap();
    vote(&c, ns, "good-6", &id(2), true).await;
    assert_eq!(bullet(&c, ns, &id(2)).await.stage, Stage::Staging);
    // Harmful evidence still quarantines a pinned bullet.
    for d in 0..7 {
        vote(&c, ns, &format!("worse-{d}"), &id(2), false).await;
    }
    assert_eq!(bullet(&c, ns, &id(2)).await.stage, Stage::Quarantined);
    let history = c.history(ns, &id(2)).await.unwrap();
    let manual = history
        .iter()
        .filter(|e| e.detail.get("manual").is_some())
        .count();
    assert_eq!(manual, 2, "{history:?}");
}

#[tokio::test]
async fn render_context_fits_the_budget_and_prefers_relevant_bullets() {
    let dir = tempfile::tempdir().unwrap();
    let c = curator_in(dir.path()).await;
    let ns = "drive";
    let mut insights = vec![
        insight(
            "x1",
            "strategy",
            "Move to the right lane well before the exit.",
        ),
        insight(
            "x2",
            "mistakes",
            "Braking hard on a free road surprises the car behind.",
        ),
        insight(
            "x3",
            "facts",
            "Customer refunds over 100 dollars need a manager's approval.",
        ),
    ];
    for i in 0..30 {
        insights.push(insight(
            &format!("filler{i}"),
            "facts",
            &format!(
                "Observation {i}: lane {} traffic averaged {} metres per second.",
                i % 3,
                20 + i
            ),
        ));
    }
    c.curate(ns, &insights).await.unwrap();
    let state = "exit in 300 m on the right, ego in the left lane";
    for budget in [1, 10, 25, 60, 200, 2000] {
        let (text, ids, tokens) = c
            .render_context(ns, state, None, budget, Stage::Shadow)
            .await
            .unwrap();
        assert!(tokens <= budget, "budget {budget}: {tokens} tokens");
        assert_eq!(tokens, estimate_tokens(&text));
        assert_eq!(
            ids.len(),
            text.lines().filter(|l| l.starts_with("- [")).count()
        );
    }
    let (text, _, _) = c
        .render_context(ns, state, None, 40, Stage::Shadow)
        .await
        .unwrap();
    assert!(text.contains("right lane well before the exit"), "{text}");
    assert!(!text.contains("refunds"), "{text}");
    // The caller's embedding of the state finds the same bullets as the state's text.
    let vector = common::embedder()
        .embed(vec![state.to_owned()])
        .await
        .unwrap()
        .remove(0);
    let (by_vector, _, _) = c
        .render_context(ns, state, Some(vector.clone()), 40, Stage::Shadow)
        .await
        .unwrap();
    assert_eq!(by_vector, text);
    let mut short = vector.clone();
    short.pop();
    match c
        .render_context(ns, state, Some(short), 40, Stage::Shadow)
        .await
    {
        Err(CuratorError::Invalid(e)) => {
            assert_eq!(e.field, "state_vector");
            assert!(e.reason.contains("383 numbers"), "{e}");
        }
        other => panic!("a vector of the wrong length: {other:?}"),
    }
    let mut nan = vector;
    nan[5] = f32::NAN;
    match c
        .render_context(ns, state, Some(nan), 40, Stage::Shadow)
        .await
    {
        Err(CuratorError::Invalid(e)) => assert_eq!(e.field, "state_vector[5]"),
        other => panic!("a vector with NaN: {other:?}"),
    }
    let (text, ids, _) = c
        .render_context(ns, state, None, 500, Stage::Production)
        .await
        .unwrap();
    assert!(
        text.is_empty() && ids.is_empty(),
        "nothing has reached production"
    );
}

#[tokio::test]
async fn explicit_update_delete_merge_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let c = curator_in(dir.path()).await;
    let ns = "review";
    let ops = c
        .curate(
            ns,
            &[
                insight(
                    "1",
                    "strategy",
                    "Ask for tests whenever a pull request changes behaviour.",
                ),
                insight(
                    "2",
                    "strategy",
                    "Point out unchecked error returns in Go code.",
                ),
                insight("3", "facts", "The team uses rustfmt defaults."),
            ],
        )
        .await
        .unwrap();
    let [a, b, f] = [0, 1, 2].map(|i| ops[i].bullet_id.to_string());
    let op = c
        .update_bullet(
            ns,
            &a,
            "Request tests for every behaviour change in a pull request.",
        )
        .await
        .unwrap();
    assert_eq!(op.kind, DeltaKind::Update);
    let found = c
        .search(
            ns,
            "request tests for behaviour changes",
            1,
            Stage::Shadow,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        found[0].0.content,
        "Request tests for every behaviour change in a pull request."
    );

    let op = c.merge_bullets(ns, &a, &b).await.unwrap();
    assert_eq!(op.merged_bullet_id.map(|u| u.to_string()), Some(b.clone()));
    let op = c.delete_bullet(ns, &f, "outdated").await.unwrap();
    assert_eq!(op.kind, DeltaKind::Delete);
    let live = c.get_playbook(ns, &PlaybookQuery::default()).await.unwrap();
    assert_eq!(live.total, 1);
    let found = c
        .search(ns, "rustfmt formatting defaults", 10, Stage::Shadow, None)
        .await
        .unwrap();
    assert!(
        found.iter().all(|(x, _)| x.id.to_string() != f),
        "deleted bullets are not served"
    );
    let kinds: Vec<String> = c
        .history(ns, &f)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["added", "deleted"]);
    assert!(matches!(
        c.delete_bullet(ns, &f, "again").await,
        Err(CuratorError::NotFound(_))
    ));
    let err = c
        .set_stage(ns, &a, Some(Stage::Production), "skip the gates")
        .await
        .unwrap_err();
    assert!(matches!(err, CuratorError::Rejected(_)), "{err}");
}

#[tokio::test]
async fn restart_heals_an_index_that_missed_writes() {
    let dir = tempfile::tempdir().unwrap();
    let query = "how early should I change lanes before the exit";
    let (before, ids) = {
        let c = curator_in(dir.path()).await;
        let ops = c
            .curate(
                "drive",
                &[
                    insight(
                        "1",
                        "strategy",
                        "Move to the right lane well before the exit.",
                    ),
                    insight(
                        "2",
                        "mistakes",
                        "Cutting across three lanes at the exit ramp causes crashes.",
                    ),
                ],
            )
            .await
            .unwrap();
        let found = c
            .search("drive", query, 10, Stage::Shadow, None)
            .await
            .unwrap();
        (found, ops)
    };
    // Lose the whole index, as if the process died before the index wrote anything.
    std::fs::remove_dir_all(dir.path().join("vectors")).unwrap();
    let c = curator_in(dir.path()).await;
    let after = c
        .search("drive", query, 10, Stage::Shadow, None)
        .await
        .unwrap();
    assert_eq!(
        before.iter().map(|(b, _)| b.id).collect::<Vec<_>>(),
        after.iter().map(|(b, _)| b.id).collect::<Vec<_>>()
    );
    assert_eq!(after.len(), ids.len());
    let report = c.reconcile().await.unwrap();
    assert_eq!(
        (report.upserted, report.deleted),
        (0, 0),
        "already consistent"
    );
}

async fn applied(c: &agent_learning_curator::Curator) -> u64 {
    c.health("drive").await.unwrap().insights_applied
}

#[tokio::test]
async fn a_live_run_curates_in_batches_that_survive_a_restart() {
    use agent_learning_domain::{RunStage, RunState, run_kind};
    use agent_learning_store::{NewRun, Store};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("db.sqlite"), 4)
        .await
        .unwrap();
    for (id, kind, config) in [
        (
            "live3",
            run_kind::LIVE,
            r#"{"episodes": 9, "curate_every": 3}"#,
        ),
        ("live-old", run_kind::LIVE, r#"{"episodes": 9}"#),
        ("train", run_kind::TRAINING, r#"{"curate_every": 3}"#),
    ] {
        store
            .create_run(NewRun {
                id,
                kind,
                stages: RunStage::LIVE,
                namespace: "drive",
                env: "driving",
                config,
                demos: "",
            })
            .await
            .unwrap();
    }
    let lessons = [
        "Move to the right lane well before the exit.",
        "Cutting across three lanes at the exit ramp causes crashes.",
        "Brake early when the light ahead turns red.",
        "Keep a two second gap to the car ahead.",
        "Honking at pedestrians never makes them move faster.",
    ];
    {
        let c = curator_in(dir.path()).await;
        assert_eq!(c.curate_every("live3").await.unwrap(), 3);
        assert_eq!(
            c.curate_every("live-old").await.unwrap(),
            1,
            "recorded before the key"
        );
        assert_eq!(
            c.curate_every("train").await.unwrap(),
            1,
            "training curates each"
        );
        assert_eq!(c.curate_every("no-such-run").await.unwrap(), 1);
        for (i, text) in lessons[..2].iter().enumerate() {
            let ops = c
                .curate_reflection(
                    "live3",
                    "drive",
                    insight(&format!("r{i}"), "strategy", text),
                )
                .await
                .unwrap();
            assert_eq!(ops, 0, "the batch of 3 is not full");
        }
        // A redelivered reflection waits once.
        c.curate_reflection("live3", "drive", insight("r0", "strategy", lessons[0]))
            .await
            .unwrap();
        assert_eq!(store.pending_insight_count("live3").await.unwrap(), 2);
        assert_eq!(
            applied(&c).await,
            0,
            "nothing curated while the batch fills"
        );
    }
    // The curator restarts: what waited is still there, and the third fills the batch.
    let c = curator_in(dir.path()).await;
    let ops = c
        .curate_reflection("live3", "drive", insight("r2", "strategy", lessons[2]))
        .await
        .unwrap();
    assert_eq!(ops, 3, "the whole batch, in one curation");
    assert_eq!(store.pending_insight_count("live3").await.unwrap(), 0);
    assert_eq!(applied(&c).await, 3);
    assert_eq!(
        store
            .run_counts("drive", "live3")
            .await
            .unwrap()
            .pending_insights,
        0
    );

    // A batch that cannot fill: kept while the run is young, curated once it waited too long.
    c.curate_reflection("live3", "drive", insight("r3", "strategy", lessons[3]))
        .await
        .unwrap();
    assert_eq!(c.flush_stale(Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(
        store
            .run_counts("drive", "live3")
            .await
            .unwrap()
            .pending_insights,
        1
    );
    assert_eq!(c.flush_stale(Duration::ZERO).await.unwrap(), 1);
    assert_eq!(applied(&c).await, 4);

    // The run has no more reflections to send: FlushBatch takes what waits, in the
    // namespace it names only.
    c.curate_reflection(
        "live3",
        "drive",
        insight("r5", "strategy", "Signal before changing lanes."),
    )
    .await
    .unwrap();
    match c.flush_batch("drive", "").await {
        Err(CuratorError::Invalid(e)) => assert_eq!(e.field, "run_id"),
        other => panic!("an empty run id: {other:?}"),
    }
    assert_eq!(
        c.flush_batch("other", "live3").await.unwrap(),
        BatchFlushed::default(),
        "another namespace's call takes nothing"
    );
    assert_eq!(store.pending_insight_count("live3").await.unwrap(), 1);
    assert_eq!(
        c.flush_batch("drive", "live3").await.unwrap(),
        BatchFlushed {
            insights: 1,
            ops: 1
        }
    );
    assert_eq!(
        c.flush_batch("drive", "live3").await.unwrap(),
        BatchFlushed::default(),
        "nothing is left to take"
    );
    assert_eq!(applied(&c).await, 5);

    // A cancelled run's waiting insights are dropped, never curated.
    c.curate_reflection("live3", "drive", insight("r4", "mistakes", lessons[4]))
        .await
        .unwrap();
    store
        .set_run_state("live3", RunState::Cancelled, None, None)
        .await
        .unwrap();
    assert_eq!(c.flush_stale(Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(store.pending_insight_count("live3").await.unwrap(), 0);
    assert_eq!(applied(&c).await, 5);

    // Other runs curate each reflection as it comes.
    let ops = c
        .curate_reflection(
            "train",
            "drive",
            insight("t0", "facts", "The exit is on the right."),
        )
        .await
        .unwrap();
    assert_eq!(ops, 1);
    assert_eq!(applied(&c).await, 6);
}

#[tokio::test]
async fn an_exact_restatement_merges_even_when_the_index_misses_its_bullet() {
    use std::sync::Arc;

    use agent_learning_curator::{Curator, ThresholdJudge};
    use agent_learning_store::Store;
    use agent_learning_vector::{EdgeIndex, VectorIndex};

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("db.sqlite"), 4)
        .await
        .unwrap();
    let index = Arc::new(EdgeIndex::open(&dir.path().join("vectors")).unwrap());
    let opts = common::options();
    let collection = opts.collection.clone();
    let judge = Arc::new(ThresholdJudge { threshold: 0.8 });
    let c = Curator::new(store, index.clone(), common::embedder(), judge, opts);
    c.start().await.unwrap();
    let text = "Signal two seconds before changing lanes.";
    let first = c
        .curate("drive", &[insight("a", "strategy", text)])
        .await
        .unwrap();
    assert_eq!(first[0].kind, DeltaKind::Add);
    // The graph search of a large playbook can miss a bullet: here it is not in the index.
    index
        .delete(&collection, vec![first[0].bullet_id])
        .await
        .unwrap();
    let ops = c
        .curate(
            "drive",
            &[
                insight("b", "strategy", &format!("  {text}\n")),
                insight("c", "facts", text),
            ],
        )
        .await
        .unwrap();
    assert_eq!(ops[0].kind, DeltaKind::Merge, "the same text, trimmed");
    assert_eq!(ops[0].bullet_id, first[0].bullet_id);
    assert!((ops[0].similarity - 1.0).abs() < 1e-6);
    assert_eq!(ops[1].kind, DeltaKind::Add, "another section's bullet");
}
