//! The reflector served on port 0 and called through its client wrapper: the Reflect RPC with
//! the testsuite's instant model, the real embedded record and queue.

use std::sync::Arc;

use agent_learning_api::{ApiError, ReflectRequest, ReflectorApi, ReflectorClient};
use agent_learning_domain::{Rollout, RolloutSource};
use agent_learning_llm::testsuite::InstantModel;
use agent_learning_queue::{EmbeddedQueue, Queue, QueueOptions, streams};
use agent_learning_reflector::Reflector;
use agent_learning_runtime::Context;
use agent_learning_runtime::testsuite::{self, TestServer};
use agent_learning_store::Store;

fn request() -> ReflectRequest {
    ReflectRequest {
        namespace: "reflect-test".into(),
        state: "speed=30 lane=2 gap=8 exit_in=400m".into(),
        expert_action: "change_right".into(),
        expert_next_state: "speed=30 lane=1 gap=40 exit_in=370m".into(),
        alternatives: vec![Rollout {
            id: "alt-1".into(),
            run_id: String::new(),
            demo_id: String::new(),
            step_index: 0,
            state: "speed=30 lane=2 gap=8 exit_in=400m".into(),
            expert_action: "change_right".into(),
            action: "accelerate".into(),
            next_state: "speed=34 lane=2 gap=3 exit_in=366m".into(),
            done: false,
            source: RolloutSource::Env,
            group_id: String::new(),
        }],
    }
}

#[tokio::test]
async fn reflect_writes_four_sections_once_and_publishes_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = testsuite::settings_in(dir.path());
    // No stream consumers: this test calls the RPC only.
    settings.pipeline.reflectors = 0;
    let store = Store::open(&settings).await.unwrap();
    let queue = EmbeddedQueue::new(store.clone(), QueueOptions::default());
    queue
        .ensure_group(streams::REFLECTIONS, streams::CURATORS)
        .await
        .unwrap();
    let (listener, addr) = testsuite::listener().await;
    let ctx = Context::new(settings, addr)
        .unwrap()
        .with_model(Arc::new(InstantModel));
    let server = TestServer::start::<Reflector>(ctx, listener).await.unwrap();
    let client = ReflectorClient::new(server.channel());

    let r = client.reflect(request()).await.unwrap();
    assert!(r.valid, "{}", r.problem);
    for section in [&r.situation, &r.evaluation, &r.alternatives, &r.conclusion] {
        assert!(!section.trim().is_empty());
    }
    assert_eq!(r.rollout_ids, ["alt-1"]);
    assert_eq!(r.usage.prompt_tokens, 1);
    let again = client.reflect(request()).await.unwrap();
    assert_eq!(again, r, "the same branch point is reflected once");
    assert_eq!(store.reflection(&r.id).await.unwrap().unwrap(), r);
    let lag = queue
        .lag(streams::REFLECTIONS, streams::CURATORS)
        .await
        .unwrap();
    assert_eq!(lag.undelivered, 1, "published once");

    let field = |e: ApiError| match e {
        ApiError::Invalid(i) => i.field,
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    };
    let mut empty = request();
    empty.state = " ".into();
    assert_eq!(field(client.reflect(empty).await.unwrap_err()), "state");
    let mut no_expert = request();
    no_expert.expert_action.clear();
    assert_eq!(
        field(client.reflect(no_expert).await.unwrap_err()),
        "expert_action"
    );
    server.shut_down().await.unwrap();
}
