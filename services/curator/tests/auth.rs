//! API keys on a served curator, called through its client the way other teams' backends and
//! tools would: anonymous and unknown keys are UNAUTHENTICATED, a key without the role or the
//! namespace is PERMISSION_DENIED with the reason, health stays open, and a rewritten keys
//! file takes effect without a restart.

use std::time::Duration;

use agent_learning_api::{ApiError, ApiKey, CuratorApi, CuratorClient, PlaybookQuery};
use agent_learning_config::{Settings, Sources};
use agent_learning_curator::Curator;
use agent_learning_domain::{Insight, Stage};
use agent_learning_runtime::Context;
use agent_learning_runtime::testsuite::{self, TestServer};
use agent_learning_server::auth::key_hash;
use tonic::Code;

fn keys(lines: &[(&str, &str, &str)]) -> String {
    lines
        .iter()
        .map(|(id, key, grants)| format!("{id} {} {grants}\n", key_hash(key)))
        .collect()
}

fn insight(id: &str) -> Insight {
    Insight {
        id: id.into(),
        section: "strategy".into(),
        content: format!("Keep two seconds of distance ({id})."),
        source: "test".into(),
    }
}

/// The status code and message of a refused call.
fn refused<T: std::fmt::Debug>(r: Result<T, ApiError>) -> (Code, String) {
    match r.unwrap_err() {
        ApiError::Remote(s) => (s.code(), s.message().to_owned()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn keys_roles_and_namespaces_are_enforced_and_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api-keys");
    std::fs::write(
        &file,
        keys(&[
            ("reader-a", "k-reader", "read:team-a"),
            ("decider-a", "k-decider", "decide:team-a"),
            ("learner-a", "k-learner", "learn:team-a*"),
            ("admin-a", "k-admin", "admin:team-a,read:team-a"),
        ]),
    )
    .unwrap();
    let settings = Settings::load(&Sources {
        file: None,
        overrides: vec![
            (
                "data_dir".into(),
                dir.path().join("data").display().to_string(),
            ),
            ("auth.mode".into(), "required".into()),
            ("auth.internal_key".into(), "k-internal".into()),
            ("auth.keys_file".into(), file.display().to_string()),
        ],
    })
    .unwrap();
    let (listener, addr) = testsuite::listener().await;
    let ctx = Context::new(settings, addr).unwrap();
    let server = TestServer::start::<Curator>(ctx, listener).await.unwrap();
    let as_key = |key: Option<&str>| {
        let key = key.map_or_else(ApiKey::none, |k| ApiKey::new(k).unwrap());
        CuratorClient::new_with_key(server.channel(), key)
    };

    // Health needs no key.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();

    // No key, an unknown key.
    let (code, msg) = refused(as_key(None).delete_bullet("team-a", "x", "r").await);
    assert_eq!(code, Code::Unauthenticated, "{msg}");
    assert!(msg.contains("authorization: Bearer"), "{msg}");
    let (code, msg) = refused(
        as_key(Some("k-guess"))
            .get_playbook("team-a", PlaybookQuery::default())
            .await,
    );
    assert_eq!(
        (code, msg.as_str()),
        (Code::Unauthenticated, "unknown API key")
    );

    // A role the key does not have, on any namespace.
    let (code, msg) = refused(
        as_key(Some("k-decider"))
            .delete_bullet("team-a", "x", "r")
            .await,
    );
    assert_eq!(code, Code::PermissionDenied);
    assert!(
        msg.contains("\"decider-a\" has no \"admin\" grant"),
        "{msg}"
    );

    // The role, but on another namespace (prefix grants included).
    let learner = as_key(Some("k-learner"));
    let ops = learner
        .curate("team-a-eu", vec![insight("i1")])
        .await
        .unwrap();
    let (code, msg) = refused(learner.curate("team-b", vec![insight("i2")]).await);
    assert_eq!(code, Code::PermissionDenied);
    assert!(msg.contains("namespace \"team-b\""), "{msg}");
    let ops_a = learner.curate("team-a", vec![insight("i3")]).await.unwrap();
    let reader = as_key(Some("k-reader"));
    // Provenance: the bullet names the key that sent it.
    let page = reader
        .get_playbook("team-a", PlaybookQuery::default())
        .await
        .unwrap();
    assert_eq!(page.bullets[0].sources, ["key:learner-a/test"]);
    assert_eq!(
        reader
            .get_playbook("team-a", PlaybookQuery::default())
            .await
            .unwrap()
            .bullets
            .len(),
        1
    );
    let (code, _) = refused(
        reader
            .get_playbook("team-a-eu", PlaybookQuery::default())
            .await,
    );
    assert_eq!(code, Code::PermissionDenied);

    // Votes are learn, stage changes admin, each on its namespace.
    let bullet = ops_a[0].bullet_id.to_string();
    let (code, _) = refused(
        reader
            .set_stage("team-a", &bullet, Some(Stage::Quarantined), "r")
            .await,
    );
    assert_eq!(code, Code::PermissionDenied);
    let admin = as_key(Some("k-admin"));
    let b = admin
        .set_stage("team-a", &bullet, Some(Stage::Quarantined), "reviewed")
        .await
        .unwrap();
    assert_eq!(b.stage, Stage::Quarantined);
    let eu_bullet = ops[0].bullet_id.to_string();
    let (code, _) = refused(admin.delete_bullet("team-a-eu", &eu_bullet, "r").await);
    assert_eq!(code, Code::PermissionDenied);
    // The internal key reaches everything.
    as_key(Some("k-internal"))
        .delete_bullet("team-a-eu", &eu_bullet, "cleanup")
        .await
        .unwrap();

    // Rotation: the reader's key is replaced in the file; no restart.
    std::fs::write(
        &file,
        keys(&[
            ("reader-a", "k-reader-2", "read:team-a"),
            ("admin-a", "k-admin", "admin:team-a,read:team-a"),
        ]),
    )
    .unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let mut rotated = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let old = as_key(Some("k-reader"))
            .get_playbook("team-a", PlaybookQuery::default())
            .await;
        if old.is_err() {
            rotated = true;
            break;
        }
    }
    assert!(
        rotated,
        "the old key still works after the keys file changed"
    );
    as_key(Some("k-reader-2"))
        .get_playbook("team-a", PlaybookQuery::default())
        .await
        .unwrap();
    let (code, _) = refused(
        as_key(Some("k-learner"))
            .curate("team-a", vec![insight("i4")])
            .await,
    );
    assert_eq!(code, Code::Unauthenticated);

    server.shut_down().await.unwrap();
}
