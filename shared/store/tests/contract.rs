//! One contract suite for every backend of the store: SQLite (embedded) and PostgreSQL.
//! PostgreSQL runs against `AGENT_LEARNING_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`) in a fresh database per run.

use agent_learning_domain::{
    DeltaKind, PolicyVersion, PromotionGates, Reflection, RunStage, RunState, Stage,
};
use agent_learning_store::testsuite::TestDatabase;
use agent_learning_store::{
    CurationChange, ListFilter, NewBullet, NewRun, Outbox, Store, StoreError,
};
use sea_orm::ConnectionTrait;
use uuid::Uuid;

fn emb(seed: f32) -> Vec<f32> {
    (0..8).map(|i| seed + i as f32 * 0.5).collect()
}

fn add(insight: &str, section: &str, content: &str) -> (Uuid, CurationChange) {
    let id = Uuid::new_v4();
    (
        id,
        CurationChange::Add {
            insight_id: insight.into(),
            bullet: NewBullet {
                id,
                section: section.into(),
                content: content.into(),
                source: format!("src-{insight}"),
                embedding: emb(id.as_u128() as u8 as f32),
            },
            similarity: 0.1,
        },
    )
}

async fn curation_and_idempotency_records(store: &Store) {
    let ns = "contract-curate";
    let (a, add_a) = add("i1", "strategy", "keep distance");
    let (b, add_b) = add("i2", "facts", "exit is right");
    store.apply_curation(ns, &[add_a, add_b]).await.unwrap();
    store
        .apply_curation(
            ns,
            &[CurationChange::Merge {
                insight_id: "i3".into(),
                bullet_id: a,
                source: "src-i3".into(),
                similarity: 0.91,
            }],
        )
        .await
        .unwrap();

    let applied = store
        .applied_insights(ns, &["i1".into(), "i3".into(), "unknown".into()])
        .await
        .unwrap();
    assert_eq!(applied.len(), 2);
    assert_eq!(applied["i1"].kind, DeltaKind::Add);
    assert_eq!(applied["i3"].kind, DeltaKind::Merge);
    assert_eq!(applied["i3"].bullet_id, a);
    assert!((applied["i3"].similarity - 0.91).abs() < 1e-6);

    let bullet = store.get_bullet(ns, a).await.unwrap().unwrap();
    assert_eq!(bullet.evidence, 2);
    assert_eq!(bullet.stage, Stage::Shadow);
    assert_eq!(bullet.sources, vec!["src-i1", "src-i3"]);
    assert!(store.get_bullet(ns, b).await.unwrap().is_some());
    // Another namespace sees none of it.
    assert!(
        store
            .get_bullet("contract-other", a)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .applied_insights("contract-other", &["i1".into()])
            .await
            .unwrap()
            .is_empty()
    );

    // A batch that fails half-way stores nothing: the merge target does not exist.
    let (c, add_c) = add("i4", "facts", "never stored");
    let err = store
        .apply_curation(
            ns,
            &[
                add_c,
                CurationChange::Merge {
                    insight_id: "i5".into(),
                    bullet_id: Uuid::new_v4(),
                    source: String::new(),
                    similarity: 0.9,
                },
            ],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert!(store.get_bullet(ns, c).await.unwrap().is_none());
    assert!(
        store
            .applied_insights(ns, &["i4".into()])
            .await
            .unwrap()
            .is_empty()
    );

    let history = store.history(ns, a).await.unwrap();
    let kinds: Vec<&str> = history.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["added", "merged"]);
    assert_eq!(history[1].insight_id.as_deref(), Some("i3"));
}

async fn feedback_promotes_through_every_stage(store: &Store) {
    let ns = "contract-feedback";
    let gates = PromotionGates::default();
    let (a, add_a) = add("f1", "strategy", "brake early");
    store.apply_curation(ns, &[add_a]).await.unwrap();

    let (bullets, replayed) = store
        .record_feedback(ns, Some("fb-1"), &[(a, 2, 0)], &gates)
        .await
        .unwrap();
    assert!(!replayed);
    assert_eq!(bullets[0].stage, Stage::Shadow);
    // The same feedback id again changes nothing.
    let (bullets, replayed) = store
        .record_feedback(ns, Some("fb-1"), &[(a, 2, 0)], &gates)
        .await
        .unwrap();
    assert!(replayed);
    assert_eq!(bullets[0].helpful, 2);

    let (bullets, _) = store
        .record_feedback(ns, None, &[(a, 3, 0)], &gates)
        .await
        .unwrap();
    assert_eq!(bullets[0].helpful, 5);
    assert_eq!(bullets[0].stage, Stage::Production);
    let stages: Vec<(Option<Stage>, Option<Stage>)> = store
        .history(ns, a)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "stage_changed")
        .map(|e| (e.from_stage, e.to_stage))
        .collect();
    assert_eq!(
        stages,
        [
            (Some(Stage::Shadow), Some(Stage::Staging)),
            (Some(Stage::Staging), Some(Stage::Production))
        ],
        "promotion passes through staging"
    );

    // Harmful votes catch up: quarantine.
    let (bullets, _) = store
        .record_feedback(ns, None, &[(a, 0, 5)], &gates)
        .await
        .unwrap();
    assert_eq!(bullets[0].stage, Stage::Quarantined);

    // Unknown bullet: the whole request fails and the known one is unchanged.
    let err = store
        .record_feedback(
            ns,
            Some("fb-2"),
            &[(a, 1, 0), (Uuid::new_v4(), 1, 0)],
            &gates,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }));
    assert_eq!(store.get_bullet(ns, a).await.unwrap().unwrap().helpful, 5);
    // ... and its feedback id was not consumed.
    let (_, replayed) = store
        .record_feedback(ns, Some("fb-2"), &[(a, 1, 0)], &gates)
        .await
        .unwrap();
    assert!(!replayed);
}

async fn manual_stage_changes_respect_the_gates(store: &Store) {
    let ns = "contract-stage";
    let gates = PromotionGates::default();
    let (a, add_a) = add("s1", "strategy", "signal before changing lanes");
    store.apply_curation(ns, &[add_a]).await.unwrap();
    let err = store
        .set_stage(ns, a, Stage::Production, "eager", &gates)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Rejected(_)), "{err}");
    store
        .record_feedback(ns, None, &[(a, 3, 0)], &gates)
        .await
        .unwrap();
    // Earned staging: rollback to shadow is allowed, and promotion back up to what it earned.
    let b = store
        .set_stage(ns, a, Stage::Shadow, "rollback", &gates)
        .await
        .unwrap();
    assert_eq!(b.stage, Stage::Shadow);
    let b = store
        .set_stage(ns, a, Stage::Staging, "restore", &gates)
        .await
        .unwrap();
    assert_eq!(b.stage, Stage::Staging);
    let b = store
        .set_stage(ns, a, Stage::Quarantined, "incident 42", &gates)
        .await
        .unwrap();
    assert_eq!(b.stage, Stage::Quarantined);
    let last = store.history(ns, a).await.unwrap().pop().unwrap();
    assert_eq!(last.detail["reason"], "incident 42");
}

async fn delete_update_and_merge_keep_history(store: &Store) {
    let ns = "contract-edit";
    let gates = PromotionGates::default();
    let (a, add_a) = add("e1", "facts", "left lane is faster");
    let (b, add_b) = add("e2", "facts", "the left lane moves quicker");
    let (c, add_c) = add("e3", "facts", "to be deleted");
    store
        .apply_curation(ns, &[add_a, add_b, add_c])
        .await
        .unwrap();
    store
        .record_feedback(ns, None, &[(a, 2, 0), (b, 1, 0)], &gates)
        .await
        .unwrap();

    let updated = store
        .update_bullet(ns, a, "the left lane is faster", &emb(3.0))
        .await
        .unwrap();
    assert_eq!(updated.content, "the left lane is faster");

    let merged = store.merge_bullets(ns, a, b, &gates).await.unwrap();
    assert_eq!((merged.helpful, merged.evidence), (3, 2));
    assert_eq!(merged.stage, Stage::Staging, "merged counters earn staging");
    assert!(store.get_bullet(ns, b).await.unwrap().unwrap().deleted);

    let deleted = store.delete_bullet(ns, c, "obsolete").await.unwrap();
    assert!(deleted.deleted);
    let err = store.delete_bullet(ns, c, "again").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }));
    let kinds: Vec<String> = store
        .history(ns, c)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, ["added", "deleted"]);
    let kinds: Vec<String> = store
        .history(ns, a)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "added",
            "counters_changed",
            "updated",
            "merged",
            "stage_changed"
        ]
    );

    let live = store
        .list_bullets(ns, &ListFilter::default(), 0, 10)
        .await
        .unwrap();
    assert_eq!(live.total, 1);
    let all = store
        .list_bullets(
            ns,
            &ListFilter {
                include_deleted: true,
                ..Default::default()
            },
            0,
            10,
        )
        .await
        .unwrap();
    assert_eq!(all.total, 3);

    let h = store.health(ns).await.unwrap();
    assert_eq!((h.total, h.deleted), (1, 2));
    assert_eq!(h.by_stage[&Stage::Staging], 1);
    assert_eq!(h.by_section, vec![("facts".to_string(), 1)]);
    assert_eq!(h.insights_applied, 3);
}

async fn pagination_and_index_rebuild_pages(store: &Store) {
    let ns = "contract-pages";
    let mut changes = Vec::new();
    let mut ids = Vec::new();
    for i in 0..25 {
        let (id, c) = add(
            &format!("p{i}"),
            if i % 2 == 0 { "strategy" } else { "facts" },
            &format!("bullet {i}"),
        );
        ids.push(id);
        changes.push(c);
    }
    store.apply_curation(ns, &changes).await.unwrap();
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let page = store
            .list_bullets(ns, &ListFilter::default(), offset, 10)
            .await
            .unwrap();
        assert_eq!(page.total, 25);
        seen.extend(page.bullets.iter().map(|b| b.id));
        match page.next_offset {
            Some(next) => offset = next,
            None => break,
        }
    }
    seen.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(seen, want);
    let facts = store
        .list_bullets(
            ns,
            &ListFilter {
                section: Some("facts".into()),
                ..Default::default()
            },
            0,
            100,
        )
        .await
        .unwrap();
    assert_eq!(facts.total, 12);

    // Paging the live bullets of every namespace visits each once, embeddings intact.
    let mut after = None;
    let mut visited = 0;
    loop {
        let page = store.live_bullets_page(after, 7).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for b in &page {
            if b.namespace == ns {
                visited += 1;
                assert_eq!(b.embedding, emb(b.id.as_u128() as u8 as f32));
            }
        }
    }
    assert_eq!(visited, 25);
    let indexed = store.indexed_bullets(&ids[..3]).await.unwrap();
    assert_eq!(indexed.len(), 3);
}

/// Two writers of the same policy version: the second gets `Conflict` from the database's key,
/// not from reading its error text; a stored `quarantined` minimum would be refused on read.
async fn policy_versions_conflict_by_key(store: &Store) {
    let p = PolicyVersion {
        namespace: "contract-policy".into(),
        version: 1,
        instructions_template: "t".into(),
        exemplars_k: 3,
        min_stage: Stage::Staging,
        token_budget: 100,
        created_at: chrono::Utc::now(),
    };
    let stored = store.insert_policy(&p).await.unwrap();
    assert_eq!(stored.min_stage, Stage::Staging);
    let err = store.insert_policy(&p).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    let latest = store
        .latest_policy("contract-policy")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest.version, 1);
    assert!(store.policy("contract-policy", 2).await.unwrap().is_none());
}

/// A run moves through typed states and stages; an unknown stored stage is an error, not a
/// default.
async fn runs_keep_typed_states_and_stages(store: &Store) {
    store
        .create_run(NewRun {
            kind: agent_learning_domain::run_kind::TRAINING,
            stages: agent_learning_domain::RunStage::TRAINING,
            id: "contract-run",
            namespace: "contract-runs",
            env: "driving",
            config: "{}",
            demos: "",
        })
        .await
        .unwrap();
    let (run, stages) = store.load_run("contract-run").await.unwrap();
    assert_eq!(run.state, RunState::Pending);
    assert_eq!(run.current_stage, None);
    assert_eq!(
        stages.iter().map(|s| s.stage).collect::<Vec<_>>(),
        RunStage::TRAINING.to_vec()
    );
    store
        .set_run_state(
            "contract-run",
            RunState::Running,
            Some(RunStage::Reflect),
            None,
        )
        .await
        .unwrap();
    let (run, _) = store.load_run("contract-run").await.unwrap();
    assert_eq!(
        (run.state, run.current_stage),
        (RunState::Running, Some(RunStage::Reflect))
    );
    assert_eq!(store.unfinished_runs().await.unwrap(), ["contract-run"]);
    store
        .connection()
        .execute_unprepared("UPDATE run_stages SET stage = 'compiel' WHERE stage = 'compile' AND run_id = 'contract-run'")
        .await
        .unwrap();
    let err = store.load_run("contract-run").await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("compiel"), "{err}");
}

/// Insert once, publish once: a failed publish leaves the row unpublished, so the next attempt
/// publishes; after a success nothing publishes again.
async fn the_outbox_publishes_once(store: &Store) {
    let r = Reflection {
        id: "contract-reflection".into(),
        namespace: "contract-outbox".into(),
        valid: true,
        conclusion: "Brake early.".into(),
        rollout_ids: vec!["a".into()],
        ..Default::default()
    };
    let stored = store.insert_reflection(&r).await.unwrap();
    assert_eq!(stored, r);
    let again = store
        .insert_reflection(&Reflection {
            conclusion: "something else".into(),
            ..r.clone()
        })
        .await
        .unwrap();
    assert_eq!(again.conclusion, "Brake early.", "the first insert wins");
    let item = Outbox::Reflection(&r.id);
    let failed = store
        .publish_once(item, || async {
            Err::<(), _>(StoreError::Rejected("down".into()))
        })
        .await;
    assert!(failed.is_err());
    assert!(!store.is_published(item).await.unwrap());
    let published = std::sync::atomic::AtomicUsize::new(0);
    for _ in 0..3 {
        store
            .publish_once(item, || async {
                published.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok::<(), StoreError>(())
            })
            .await
            .unwrap();
    }
    assert_eq!(published.into_inner(), 1);
    assert!(store.is_published(item).await.unwrap());
}

/// One holder per run lease; an expired lease goes to whoever claims it next; an ended run
/// keeps its end against a late driver.
async fn leases_and_conditional_ends(store: &Store) {
    use std::time::Duration;
    let minute = Duration::from_secs(60);
    assert!(store.claim_run("lease-1", "a", minute).await.unwrap());
    assert!(
        !store.claim_run("lease-1", "b", minute).await.unwrap(),
        "held by a"
    );
    assert!(
        store.claim_run("lease-1", "a", minute).await.unwrap(),
        "a renews"
    );
    store.release_run("lease-1", "b").await.unwrap();
    assert_eq!(store.run_lease("lease-1").await.unwrap().unwrap().0, "a");
    store.release_run("lease-1", "a").await.unwrap();
    assert_eq!(store.run_lease("lease-1").await.unwrap(), None);
    assert!(
        store
            .claim_run("lease-2", "a", Duration::ZERO)
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        store.claim_run("lease-2", "b", minute).await.unwrap(),
        "expired: taken"
    );
    assert!(!store.claim_run("lease-2", "a", minute).await.unwrap());

    store
        .create_run(NewRun {
            kind: agent_learning_domain::run_kind::TRAINING,
            stages: agent_learning_domain::RunStage::TRAINING,
            id: "contract-end",
            namespace: "contract-runs",
            env: "driving",
            config: "{}",
            demos: "",
        })
        .await
        .unwrap();
    let advance = |state| store.advance_run("contract-end", state, None, None);
    assert!(advance(RunState::Running).await.unwrap());
    assert!(advance(RunState::Cancelled).await.unwrap());
    assert!(!advance(RunState::Succeeded).await.unwrap(), "ended: kept");
    assert_eq!(
        store.run_state("contract-end").await.unwrap(),
        Some(RunState::Cancelled)
    );
    assert_eq!(store.run_state("no-such-run").await.unwrap(), None);
}

/// 64 votes at once on one bullet, through two handles: every vote counted, and the history a
/// chain in which each change starts where the previous one ended.
async fn concurrent_votes_are_all_counted(a: &Store, b: &Store) {
    let ns = "contract-votes";
    let (id, add_one) = add("votes-1", "strategy", "keep a gap");
    a.apply_curation(ns, &[add_one]).await.unwrap();
    let gates = PromotionGates::default();
    let votes = (0..64).map(|i| {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tokio::spawn(async move {
            store
                .record_feedback(ns, Some(&format!("vote-{i}")), &[(id, 1, 0)], &gates)
                .await
        })
    });
    for v in futures::future::join_all(votes).await {
        v.unwrap().unwrap();
    }
    let bullet = a.get_bullet(ns, id).await.unwrap().unwrap();
    assert_eq!(bullet.helpful, 64);
    let changes: Vec<(i64, i64)> = a
        .history(ns, id)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "counters_changed")
        .map(|e| {
            let h = &e.detail["helpful"];
            (h[0].as_i64().unwrap(), h[1].as_i64().unwrap())
        })
        .collect();
    assert_eq!(changes.len(), 64);
    for (i, (before, after)) in changes.iter().enumerate() {
        assert_eq!((*before, *after), (i as i64, i as i64 + 1), "change {i}");
    }
}

async fn insights_wait_for_their_batch(store: &Store) {
    use agent_learning_domain::Insight;
    let insight = |id: &str| Insight {
        id: id.into(),
        section: "strategy".into(),
        content: format!("lesson {id}"),
        source: format!("reflection:{id}"),
    };
    assert!(store.pending_runs().await.unwrap().is_empty());
    assert!(
        store
            .add_pending_insight("batch-run", "ns", &insight("p1"))
            .await
            .unwrap()
    );
    assert!(
        store
            .add_pending_insight("batch-run", "ns", &insight("p2"))
            .await
            .unwrap()
    );
    assert!(
        !store
            .add_pending_insight("batch-run", "ns", &insight("p1"))
            .await
            .unwrap(),
        "kept once"
    );
    store
        .add_pending_insight("other-run", "ns2", &insight("q1"))
        .await
        .unwrap();
    let waiting = store.pending_insights("batch-run").await.unwrap();
    assert_eq!(
        waiting
            .iter()
            .map(|(ns, i)| (ns.as_str(), i.id.as_str()))
            .collect::<Vec<_>>(),
        [("ns", "p1"), ("ns", "p2")]
    );
    assert_eq!(waiting[1].1, insight("p2"));
    let mut runs = store.pending_runs().await.unwrap();
    runs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    assert_eq!(
        runs.iter()
            .map(|r| (r.run_id.as_str(), r.count))
            .collect::<Vec<_>>(),
        [("batch-run", 2), ("other-run", 1)]
    );
    assert!(runs[0].oldest <= chrono::Utc::now());
    assert_eq!(
        store
            .remove_pending_insights(&["p1".into(), "p2".into(), "nope".into()])
            .await
            .unwrap(),
        2
    );
    assert_eq!(store.pending_insight_count("batch-run").await.unwrap(), 0);
    assert_eq!(store.pending_insight_count("other-run").await.unwrap(), 1);
    store.remove_pending_insights(&["q1".into()]).await.unwrap();
}

async fn decisions_are_kept_alone_or_together(store: &Store) {
    use agent_learning_domain::DecisionRecord;
    let decision = |id: &str, bullets: &[&str]| DecisionRecord {
        id: id.into(),
        namespace: "decide-ns".into(),
        policy_version: 3,
        state: format!("state of {id}"),
        action: "brake".into(),
        reasoning: "a light ahead".into(),
        bullet_ids: bullets.iter().map(|b| (*b).to_owned()).collect(),
        exemplar_ids: vec!["e1".into(), "e2".into()],
        fallback: id == "d2",
        created_at: chrono::Utc::now(),
    };
    store.insert_decision(&decision("d0", &[])).await.unwrap();
    store.insert_decisions(&[]).await.unwrap();
    let together: Vec<DecisionRecord> = (1..=300)
        .map(|i| decision(&format!("d{i}"), &["b1", "b2"]))
        .collect();
    store.insert_decisions(&together).await.unwrap();
    for d in std::iter::once(decision("d0", &[])).chain(together) {
        let got = store.decision(&d.id).await.unwrap().expect(&d.id);
        assert_eq!(
            (&got.state, &got.bullet_ids, &got.exemplar_ids, got.fallback),
            (&d.state, &d.bullet_ids, &d.exemplar_ids, d.fallback),
            "{}",
            d.id
        );
    }
    // A batch holding an id already kept is refused whole: nothing of it is kept.
    let clash = [decision("d301", &[]), decision("d7", &[])];
    assert!(store.insert_decisions(&clash).await.is_err());
    assert!(store.decision("d301").await.unwrap().is_none());
    assert!(store.decision("nope").await.unwrap().is_none());
}

async fn embeddings_are_kept_by_content_hash(store: &Store) {
    use agent_learning_store::embedding_key;
    let k = |text: &str| embedding_key("minilm-test", text);
    assert_ne!(
        k("a"),
        embedding_key("other-model", "a"),
        "the model is part of the key"
    );
    assert_eq!(k("a"), k("a"));
    assert_eq!(k("a").len(), 64);
    // More than one statement's worth, with text no SQL could hold unquoted.
    let entries: Vec<(String, Vec<f32>)> = (0..1200)
        .map(|i| (k(&format!("state {i} 'quoted' \u{e9}")), emb(i as f32)))
        .collect();
    store
        .keep_embeddings("minilm-test", &entries)
        .await
        .unwrap();
    store.keep_embeddings("minilm-test", &[]).await.unwrap();
    let mut keys: Vec<String> = entries.iter().map(|(k, _)| k.clone()).collect();
    keys.push(k("never embedded"));
    let found = store.cached_embeddings(&keys).await.unwrap();
    assert_eq!(found.len(), 1200);
    for (key, v) in &entries {
        assert_eq!(&found[key], v);
    }
    // Kept again, a key gets the new vector (a damaged row is mended), and stays one row.
    store
        .keep_embeddings("minilm-test", &[(entries[5].0.clone(), vec![9.0; 3])])
        .await
        .unwrap();
    let found = store
        .cached_embeddings(std::slice::from_ref(&entries[5].0))
        .await
        .unwrap();
    assert_eq!(found[&entries[5].0], vec![9.0; 3]);
    assert!(store.cached_embeddings(&[]).await.unwrap().is_empty());
}

async fn bullets_are_found_by_their_exact_content(store: &Store) {
    let ns = "contract-verbatim";
    let (a, add_a) = add("v1", "facts", "brake before the bend");
    let (b, add_b) = add("v2", "strategy", "brake before the bend");
    let (c, add_c) = add("v3", "facts", "to be deleted");
    let (_, add_d) = add("v4", "facts", "edited away");
    let d = match &add_d {
        CurationChange::Add { bullet, .. } => bullet.id,
        _ => unreachable!(),
    };
    store
        .apply_curation(ns, &[add_a, add_b, add_c, add_d])
        .await
        .unwrap();
    // The same text elsewhere is not this namespace's.
    let (_, other) = add("v1", "facts", "to be deleted");
    store
        .apply_curation("contract-verbatim-other", &[other])
        .await
        .unwrap();
    store.delete_bullet(ns, c, "obsolete").await.unwrap();
    store
        .update_bullet(ns, d, "edited into this", &emb(4.0))
        .await
        .unwrap();

    let found = store
        .live_bullets_with_content(
            ns,
            &[
                "brake before the bend",
                "to be deleted",
                "edited away",
                "edited into this",
                "never kept",
            ],
        )
        .await
        .unwrap();
    let key = |section: &str, content: &str| (section.to_owned(), content.to_owned());
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(found[&key("facts", "brake before the bend")], a);
    assert_eq!(found[&key("strategy", "brake before the bend")], b);
    assert_eq!(
        found[&key("facts", "edited into this")],
        d,
        "the new text, not the old"
    );
    assert!(
        store
            .live_bullets_with_content(ns, &[])
            .await
            .unwrap()
            .is_empty()
    );
}

async fn transitions_are_kept_once_and_read_by_id(store: &Store) {
    use agent_learning_domain::Transition;
    use agent_learning_store::StoredTransition;
    let t = |i: usize| StoredTransition {
        id: Uuid::new_v4(),
        namespace: "contract-transitions".into(),
        transition: Transition {
            state: format!("lane {i} 'quoted'"),
            action: if i.is_multiple_of(2) {
                "brake"
            } else {
                "steer"
            }
            .into(),
            next_state: format!("lane {}", i + 1),
            done: i == 2,
        },
        source: "expert".into(),
        embedding: emb(i as f32),
    };
    let rows: Vec<StoredTransition> = (0..3).map(t).collect();
    assert_eq!(store.insert_transitions(&rows).await.unwrap(), 3);
    // Stored again, nothing is added.
    assert_eq!(store.insert_transitions(&rows[..1]).await.unwrap(), 0);
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut asked = ids.clone();
    asked.push(Uuid::new_v4());
    let mut known = store.known_transitions(&asked).await.unwrap();
    known.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(known, expected);
    let found = store.transitions_by_ids(&asked).await.unwrap();
    assert_eq!(found.len(), 3, "the unknown id is left out");
    for r in &rows {
        assert_eq!(found[&r.id], r.transition);
    }
    assert!(store.transitions_by_ids(&[]).await.unwrap().is_empty());
    assert_eq!(
        store
            .count_transitions(Some("contract-transitions"))
            .await
            .unwrap(),
        3
    );
}

async fn run_suite(store: Store) {
    transitions_are_kept_once_and_read_by_id(&store).await;
    embeddings_are_kept_by_content_hash(&store).await;
    bullets_are_found_by_their_exact_content(&store).await;
    decisions_are_kept_alone_or_together(&store).await;
    insights_wait_for_their_batch(&store).await;
    leases_and_conditional_ends(&store).await;
    policy_versions_conflict_by_key(&store).await;
    runs_keep_typed_states_and_stages(&store).await;
    the_outbox_publishes_once(&store).await;
    curation_and_idempotency_records(&store).await;
    feedback_promotes_through_every_stage(&store).await;
    manual_stage_changes_respect_the_gates(&store).await;
    delete_update_and_merge_keep_history(&store).await;
    pagination_and_index_rebuild_pages(&store).await;
}

#[tokio::test]
async fn sqlite_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("contract.db");
    run_suite(Store::open_sqlite(&path, 4).await.unwrap()).await;
    // Reopening applies no migration twice and keeps everything.
    let store = Store::open_sqlite(&path, 4).await.unwrap();
    assert_eq!(store.health("contract-pages").await.unwrap().total, 25);
    let other = Store::open_sqlite(&path, 4).await.unwrap();
    concurrent_votes_are_all_counted(&store, &other).await;
}

#[tokio::test]
async fn postgres_contract() {
    let db = TestDatabase::create("contract").await;
    let url = db.url.clone();
    let store = Store::connect(&url, 4).await.unwrap();
    assert_eq!(store.backend(), sea_orm::DbBackend::Postgres);
    run_suite(store.clone()).await;
    // Two handles with their own pools, as two curator processes have.
    let other = Store::connect(&url, 4).await.unwrap();
    concurrent_votes_are_all_counted(&store, &other).await;
    other.close().await.unwrap();
    store.close().await.unwrap();
    let again = Store::connect(&url, 2).await.unwrap();
    assert_eq!(again.health("contract-pages").await.unwrap().total, 25);
    again.close().await.unwrap();
    db.drop_database().await;
}
