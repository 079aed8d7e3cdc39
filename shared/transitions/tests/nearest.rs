//! `nearest` against the embedded backends: the rows it returns are the record's, the second
//! time from memory.

use std::sync::Arc;

use agent_learning_domain::Transition;
use agent_learning_embed::testsuite::HashEmbedder;
use agent_learning_store::Store;
use agent_learning_transitions::Transitions;
use agent_learning_vector::EdgeIndex;
use sea_orm::ConnectionTrait;

fn t(state: &str, action: &str) -> Transition {
    Transition {
        state: state.into(),
        action: action.into(),
        next_state: format!("{state} after {action}"),
        done: action == "stop",
    }
}

#[tokio::test]
async fn exemplars_are_read_from_the_record_once_and_then_from_memory() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("record.db"), 4)
        .await
        .unwrap();
    let index = Arc::new(EdgeIndex::open(&dir.path().join("vectors")).unwrap());
    let transitions = Transitions::new(store.clone(), index, Arc::new(HashEmbedder), "test", 0);
    transitions.start().await.unwrap();
    let items = [
        t("red light ahead", "stop"),
        t("green light ahead", "go"),
        t("pedestrian crossing", "wait"),
    ];
    assert_eq!(
        transitions.add("ns", &items, "expert").await.unwrap(),
        (3, 0)
    );
    // Another namespace's transition of the same state is not among ns's exemplars.
    transitions
        .add("other", &[t("red light ahead", "honk")], "expert")
        .await
        .unwrap();

    let query = transitions.embed_one("red light ahead").await.unwrap();
    let first = transitions
        .nearest("ns", query.clone(), 3, None, None)
        .await
        .unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(first[0].state, "red light ahead");
    assert_eq!(first[0].action, "stop");
    assert_eq!(first[0].next_state, "red light ahead after stop");
    assert!(first[0].done);
    assert!(first[0].similarity > 0.99, "{}", first[0].similarity);
    for f in &first {
        let want = items.iter().find(|i| i.state == f.state).unwrap();
        assert_eq!(
            (&f.action, &f.next_state, f.done),
            (&want.action, &want.next_state, want.done)
        );
    }

    // The rows are gone from the record; what was read stays answerable from memory, with
    // the same fields, while a hit never read before is left out.
    store
        .connection()
        .execute_unprepared("DELETE FROM transitions")
        .await
        .unwrap();
    let again = transitions
        .nearest("ns", query, 3, None, None)
        .await
        .unwrap();
    assert_eq!(again, first);
    let other = transitions.embed_one("red light ahead").await.unwrap();
    assert!(
        transitions
            .nearest("other", other, 1, None, None)
            .await
            .unwrap()
            .is_empty()
    );
}
