//! Two curator replicas on one PostgreSQL record and one vector index, as two processes of a
//! split deployment would be (each its own pool and its own in-process locks).

mod common;

use std::sync::Arc;

use agent_learning_curator::{Curator, PlaybookQuery, ThresholdJudge};
use agent_learning_domain::DeltaKind;
use agent_learning_store::Store;
use agent_learning_store::testsuite::TestDatabase;
use agent_learning_vector::EdgeIndex;
use common::{embedder, insight, options};

async fn replica(url: &str, index: Arc<EdgeIndex>) -> Arc<Curator> {
    let store = Store::connect(url, 4).await.unwrap();
    let opts = options();
    let judge = Arc::new(ThresholdJudge {
        threshold: opts.merge_threshold,
    });
    let c = Arc::new(Curator::new(store, index, embedder(), judge, opts));
    c.start().await.unwrap();
    c
}

/// The same lesson learnt 16 times, curated concurrently through two replicas: one bullet with
/// evidence 16. Without the namespace lock in the record, both replicas search the index
/// before either has written and each adds its own copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curation_is_ordered_per_namespace_across_replicas() {
    let db = TestDatabase::create("curator_replicas").await;
    let dir = tempfile::tempdir().unwrap();
    let index = Arc::new(EdgeIndex::open(&dir.path().join("vectors")).unwrap());
    let replicas = [
        replica(&db.url, index.clone()).await,
        replica(&db.url, index.clone()).await,
    ];
    let lesson = "Brake early when the car ahead slows down, before the gap closes.";
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let c = replicas[i % 2].clone();
            tokio::spawn(async move {
                c.curate("drive", &[insight(&format!("i{i}"), "strategy", lesson)])
                    .await
                    .unwrap()
                    .remove(0)
            })
        })
        .collect();
    let mut adds = 0;
    let mut bullets = std::collections::HashSet::new();
    for t in tasks {
        let op = t.await.unwrap();
        adds += usize::from(op.kind == DeltaKind::Add);
        bullets.insert(op.bullet_id);
    }
    assert_eq!(adds, 1, "one replica adds, every other curation merges");
    assert_eq!(bullets.len(), 1);
    let page = replicas[1]
        .get_playbook("drive", &PlaybookQuery::default())
        .await
        .unwrap();
    assert_eq!(page.total, 1);
    assert_eq!(page.bullets[0].evidence, 16);
    drop(replicas);
    drop(index);
    db.drop_database().await;
}
