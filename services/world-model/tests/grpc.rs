//! The world model served on port 0 and called through its client wrapper, the way the
//! explorer and the coordinator call it. The embedder and the model are the testsuite fakes;
//! the record and the vector index are the real embedded ones.

use std::sync::Arc;

use agent_learning_api::{ApiError, WorldModelApi, WorldModelClient};
use agent_learning_domain::Transition;
use agent_learning_embed::testsuite::HashEmbedder;
use agent_learning_llm::testsuite::InstantModel;
use agent_learning_runtime::Context;
use agent_learning_runtime::testsuite::{self, TestServer};
use agent_learning_world_model::WorldModel;

struct Served {
    _dir: tempfile::TempDir,
    client: WorldModelClient,
    server: TestServer,
}

impl Served {
    async fn shut_down(self) {
        self.server.shut_down().await.unwrap();
    }
}

async fn serve_world_model() -> Served {
    let dir = tempfile::tempdir().unwrap();
    let (listener, addr) = testsuite::listener().await;
    let ctx = Context::new(testsuite::settings_in(dir.path()), addr)
        .unwrap()
        .with_model(Arc::new(InstantModel))
        .with_embedder(Arc::new(HashEmbedder));
    let server = TestServer::start::<WorldModel>(ctx, listener)
        .await
        .unwrap();
    Served {
        _dir: dir,
        client: WorldModelClient::new(server.channel()),
        server,
    }
}

fn t(state: &str, action: &str, next: &str) -> Transition {
    Transition {
        state: state.into(),
        action: action.into(),
        next_state: next.into(),
        done: false,
    }
}

#[tokio::test]
async fn fit_predict_and_evaluate_through_the_client() {
    let s = serve_world_model().await;
    let wm = &s.client;
    let ts = vec![
        t(
            "speed=10 lane=1 gap=30",
            "accelerate",
            "speed=12 lane=1 gap=28",
        ),
        t("speed=10 lane=1 gap=30", "brake", "speed=8 lane=1 gap=32"),
        t(
            "speed=20 lane=2 gap=5",
            "change_left",
            "speed=20 lane=1 gap=40",
        ),
    ];
    let f = wm.fit("wm-test", ts.clone(), "").await.unwrap();
    assert_eq!((f.stored, f.duplicates), (3, 0));
    let again = wm.fit("wm-test", ts.clone(), "expert").await.unwrap();
    assert_eq!((again.stored, again.duplicates), (0, 3), "stored once");

    // A state seen with this action is answered from the record, without the model.
    let known = wm
        .predict("wm-test", "speed=10 lane=1 gap=30", "brake", 0)
        .await
        .unwrap();
    assert_eq!(known.next_state, "speed=8 lane=1 gap=32");
    assert_eq!(known.confidence, 1.0);
    assert_eq!(known.usage.prompt_tokens, 0);
    assert!(!known.neighbours.is_empty());

    // An unseen state goes to the model, with the neighbours as examples.
    let imagined = wm
        .predict("wm-test", "speed=30 lane=3 gap=2", "brake", 2)
        .await
        .unwrap();
    assert_eq!(imagined.next_state, "speed=10 lane=1");
    assert!(imagined.confidence < 1.0);
    assert_eq!(imagined.usage.prompt_tokens, 1);

    let a = wm.evaluate("wm-test", vec![ts[0].clone()]).await.unwrap();
    assert_eq!(a.evaluated, 1);
    assert_eq!(a.exact_match, 1.0);
    s.shut_down().await;
}

#[tokio::test]
async fn bad_requests_name_the_field_and_untrained_namespaces_are_a_precondition() {
    let s = serve_world_model().await;
    let wm = &s.client;
    let field = |e: ApiError| match e {
        ApiError::Invalid(i) => i.field,
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    };
    assert_eq!(
        field(wm.predict("wm-test", " ", "brake", 0).await.unwrap_err()),
        "state"
    );
    assert_eq!(
        field(wm.predict("wm-test", "s", "brake", 51).await.unwrap_err()),
        "k"
    );
    assert_eq!(
        field(wm.predict("Bad NS", "s", "a", 0).await.unwrap_err()),
        "namespace"
    );
    assert_eq!(
        field(
            wm.fit("wm-test", vec![t("s", "", "n")], "")
                .await
                .unwrap_err()
        ),
        "transitions[0].action"
    );
    assert_eq!(
        field(wm.fit("wm-test", vec![], "").await.unwrap_err()),
        "transitions"
    );
    let e = wm.predict("empty-ns", "s", "a", 0).await.unwrap_err();
    assert!(matches!(e, ApiError::FailedPrecondition(_)), "{e:?}");
    assert!(e.to_string().contains("Fit the world model first"), "{e}");
    s.shut_down().await;
}
