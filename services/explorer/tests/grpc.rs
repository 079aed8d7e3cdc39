//! The explorer served on port 0 and called through its client wrapper, the way the
//! coordinator calls it: real branching in the built-in driving simulator, the real embedded
//! record and queue, the testsuite's instant model.

use std::sync::Arc;

use agent_learning_api::{ApiError, Demo, ExploreRequest, ExplorerApi, ExplorerClient};
use agent_learning_domain::{Rollout, RolloutSource};
use agent_learning_explorer::Explorer;
use agent_learning_llm::testsuite::InstantModel;
use agent_learning_queue::{EmbeddedQueue, Queue, QueueOptions, streams};
use agent_learning_runtime::Context;
use agent_learning_runtime::testsuite::{self, TestServer};
use agent_learning_store::Store;
use futures::TryStreamExt as _;

fn request(demos: &[Demo]) -> ExploreRequest {
    ExploreRequest {
        namespace: "explore-test".into(),
        run_id: "run-1".into(),
        demos: demos.to_vec(),
        env: "driving".into(),
        alternatives: 2,
        branch_points: 1,
        every_step: false,
        publish: true,
    }
}

async fn explore(client: &ExplorerClient, req: ExploreRequest) -> Vec<Rollout> {
    client
        .explore(req)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test]
async fn explores_by_real_branching_stores_once_and_publishes_once() {
    let dir = tempfile::tempdir().unwrap();
    let settings = testsuite::settings_in(dir.path());
    // The consumer group exists before anything is published, as the coordinator makes sure.
    let store = Store::open(&settings).await.unwrap();
    let queue = EmbeddedQueue::new(store.clone(), QueueOptions::default());
    queue
        .ensure_group(streams::ROLLOUTS, streams::REFLECTORS)
        .await
        .unwrap();
    let (listener, addr) = testsuite::listener().await;
    let ctx = Context::new(settings, addr)
        .unwrap()
        .with_model(Arc::new(InstantModel));
    let server = TestServer::start::<Explorer>(ctx, listener).await.unwrap();
    let client = ExplorerClient::new(server.channel());

    let demos: Vec<Demo> = agent_learning_envs::generate_demos("driving", 2, 5)
        .unwrap()
        .iter()
        .map(Demo::from)
        .collect();
    let rollouts = explore(&client, request(&demos)).await;
    assert_eq!(
        rollouts.len(),
        6,
        "two demos, one branch point, expert + 2 each"
    );
    let by = |s: RolloutSource| rollouts.iter().filter(|r| r.source == s).count();
    assert_eq!((by(RolloutSource::Expert), by(RolloutSource::Env)), (2, 4));
    for r in rollouts.iter().filter(|r| r.source == RolloutSource::Env) {
        assert_ne!(
            r.action, r.expert_action,
            "an alternative is another action"
        );
        assert!(!r.next_state.is_empty());
    }
    let counts = store.run_counts("explore-test", "run-1").await.unwrap();
    assert_eq!((counts.rollouts, counts.groups), (6, 2));
    assert_eq!(
        queue
            .lag(streams::ROLLOUTS, streams::REFLECTORS)
            .await
            .unwrap()
            .undelivered,
        2,
        "one entry per branch point"
    );

    // The same request again: the same rollouts, nothing stored or published twice.
    let again = explore(&client, request(&demos)).await;
    let ids = |rs: &[Rollout]| rs.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&again), ids(&rollouts));
    let counts = store.run_counts("explore-test", "run-1").await.unwrap();
    assert_eq!(counts.rollouts, 6);
    assert_eq!(
        queue
            .lag(streams::ROLLOUTS, streams::REFLECTORS)
            .await
            .unwrap()
            .undelivered,
        2
    );

    // Bad requests name the field, before anything streams.
    let field = |e: ApiError| match e {
        ApiError::Invalid(i) => i.field,
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    };
    let mut flying = request(&demos);
    flying.env = "flying".into();
    assert_eq!(field(client.explore(flying).await.err().unwrap()), "env");
    // A remote environment outside environments.allowed_remotes (loopback by default) is
    // refused before any connection is made.
    let mut elsewhere = request(&demos);
    elsewhere.env = "grpc://192.0.2.7:50061".into();
    match client.explore(elsewhere).await.err().unwrap() {
        ApiError::Invalid(i) => {
            assert_eq!(i.field, "env");
            assert!(
                i.reason.contains("environments.allowed_remotes"),
                "{}",
                i.reason
            );
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    let mut wide = request(&demos);
    wide.branch_points = 101;
    assert_eq!(
        field(client.explore(wide).await.err().unwrap()),
        "branch_points"
    );
    let mut huge = request(&demos);
    huge.demos[0].steps[0].state = "s".repeat(agent_learning_domain::MAX_STATE_BYTES + 1);
    assert_eq!(
        field(client.explore(huge).await.err().unwrap()),
        "demos[0].steps[0]"
    );
    let mut twice = request(&demos);
    twice.demos[1].id = twice.demos[0].id.clone();
    assert_eq!(
        field(client.explore(twice).await.err().unwrap()),
        "demos[1].id"
    );
    assert_eq!(
        field(client.explore(request(&[])).await.err().unwrap()),
        "demos"
    );
    server.shut_down().await.unwrap();
}
