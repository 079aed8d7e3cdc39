//! The deployment with every trust boundary on, as a platform team runs it off loopback: the
//! server speaks TLS and asks every client for a certificate from its CA (mutual TLS), every
//! call needs an API key whose roles cover it, PostgreSQL is reached over TLS
//! (`sslmode=require`) and Redis only on its TLS port with a client certificate and a
//! password. A training run driven by the CLI from another process completes over all of it;
//! the same server refuses plaintext, clients without a certificate, clients that do not trust
//! its CA, callers without a key and callers whose key lacks the role; and no secret reaches
//! the server's log.
//!
//! Needs the `agent-learning` binary (`cargo test --workspace` builds it), PostgreSQL on
//! loopback with TLS on, and `redis-server` (started here on a port of its own); without
//! `redis-server` the test says so and is skipped.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_learning_llm::testsuite::ScriptedEndpoint;
use agent_learning_proto::v1 as pb;
use agent_learning_server::auth::key_hash;
use agent_learning_store::testsuite::TestDatabase;
use agent_learning_tests::{Pki, Process, agent_learning, free_port};
use sea_orm::{ConnectionTrait as _, Database, Statement};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Secrets that must never appear in a log: each is distinctive enough to grep for.
const INTERNAL_KEY: &str = "canary-internal-7f3a9c";
const LEARN_KEY: &str = "canary-learner-51d2e8";
const DECIDE_KEY: &str = "canary-decider-0b6f44";
const REDIS_PASSWORD: &str = "canary-redis-c81d07";

async fn health(endpoint: Endpoint) -> Result<(), String> {
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner()
        .status;
    if status == ServingStatus::Serving as i32 {
        Ok(())
    } else {
        Err(format!("health status {status}"))
    }
}

fn with_key<T>(key: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {key}")).unwrap(),
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_everywhere_with_keys() {
    let Some(redis_server) = agent_learning_tests::on_path("redis-server") else {
        eprintln!("skipped: needs redis-server on PATH (Redis with TLS is started here)");
        return;
    };
    agent_learning_tests::fetch_embedder();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());

    // Redis on a TLS port only: a client certificate from our CA and a password.
    let redis_port = free_port();
    let _redis = Process(
        Command::new(redis_server)
            .args(["--port", "0", "--tls-port", &redis_port.to_string()])
            .args(["--tls-cert-file", &pki.path("server.pem")])
            .args(["--tls-key-file", &pki.path("server.key")])
            .args(["--tls-ca-cert-file", &pki.path("ca.pem")])
            .args(["--tls-auth-clients", "yes"])
            .args(["--requirepass", REDIS_PASSWORD])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &dir.path().display().to_string()])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server"),
    );

    let db = TestDatabase::create("secure").await;
    let model = ScriptedEndpoint::start(Duration::ZERO).await;
    let keys_file = dir.path().join("api-keys");
    std::fs::write(
        &keys_file,
        format!(
            "learner {} learn:secure-*,read:secure-*\ndecider {} decide:secure-*\n",
            key_hash(LEARN_KEY),
            key_hash(DECIDE_KEY)
        ),
    )
    .unwrap();

    let port = free_port();
    let log = dir.path().join("serve.log");
    let tls_env = |cmd: &mut Command| {
        cmd.env("AGENT_LEARNING__TLS__CA", pki.path("ca.pem"))
            .env("AGENT_LEARNING__TLS__CLIENT_CERT", pki.path("client.pem"))
            .env("AGENT_LEARNING__TLS__CLIENT_KEY", pki.path("client.key"))
            .env("AGENT_LEARNING__TLS__SERVER_NAME", "localhost");
    };
    let mut serve = agent_learning();
    serve
        .args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .env(
            "AGENT_LEARNING__DATABASE__URL",
            format!("{}?sslmode=require", db.url),
        )
        .env(
            "AGENT_LEARNING__QUEUE__REDIS_URL",
            format!("rediss://:{REDIS_PASSWORD}@127.0.0.1:{redis_port}"),
        )
        .env("AGENT_LEARNING__QUEUE__BLOCK_MS", "200")
        .env("AGENT_LEARNING__LLM__PROVIDER", "openai")
        .env("AGENT_LEARNING__LLM__BASE_URL", model.uri())
        .env("AGENT_LEARNING__LLM__MODEL", "instant")
        .env("AGENT_LEARNING__LLM__API_KEY", "sk-test")
        .env("AGENT_LEARNING__AUTH__KEYS_FILE", &keys_file)
        .env("AGENT_LEARNING__AUTH__INTERNAL_KEY", INTERNAL_KEY)
        .env("AGENT_LEARNING__TLS__CERT", pki.path("server.pem"))
        .env("AGENT_LEARNING__TLS__KEY", pki.path("server.key"))
        .env("AGENT_LEARNING__TLS__CLIENT_CA", pki.path("ca.pem"))
        .env("AGENT_LEARNING__DATA_DIR", dir.path().join("data"))
        .env("AGENT_LEARNING__TELEMETRY__LOG_FILTER", "info")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap());
    tls_env(&mut serve);
    let mut server = Process(serve.spawn().expect("spawn agent-learning serve"));
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    let https = format!("https://127.0.0.1:{port}");
    let trusted = || {
        Endpoint::from_shared(https.clone())
            .unwrap()
            .tls_config(pki.client("ca.pem", Some("client")))
            .unwrap()
    };
    let started = Instant::now();
    while let Err(e) = health(trusted()).await {
        if let Some(status) = server.exited() {
            panic!("serve exited with {status}:\n{}", log_text());
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no answer over mutual TLS after 180 s ({e}):\n{}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Refused at the connection: plaintext, no client certificate, a certificate from another
    // CA, a client that does not trust the server's CA.
    let plain = health(Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap()).await;
    assert!(plain.is_err(), "plaintext was answered");
    for (what, config) in [
        ("no client certificate", pki.client("ca.pem", None)),
        (
            "a client certificate from another CA",
            pki.client("ca.pem", Some("stranger")),
        ),
        (
            "a client that trusts another CA",
            pki.client("other-ca.pem", Some("client")),
        ),
    ] {
        let refused = health(
            Endpoint::from_shared(https.clone())
                .unwrap()
                .tls_config(config)
                .unwrap(),
        )
        .await;
        assert!(refused.is_err(), "{what}: answered");
    }

    // Over mutual TLS: a key is needed, and its roles decide.
    let channel: Channel = trusted().connect().await.unwrap();
    let mut policy = pb::policy_client::PolicyClient::new(channel.clone());
    let mut curator = pb::curator_client::CuratorClient::new(channel.clone());
    let mut coordinator = pb::coordinator_client::CoordinatorClient::new(channel.clone());
    let decide = || pb::DecideRequest {
        namespace: "secure-driving".into(),
        state: "lane 1 of 3, speed 20, gap ahead 35".into(),
        valid_actions: vec!["accelerate".into(), "brake".into(), "keep_lane".into()],
        ..Default::default()
    };
    let anonymous = policy.decide(decide()).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
    let wrong = policy
        .decide(with_key("not-a-key", decide()))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    let denied = curator
        .delete_bullet(with_key(
            DECIDE_KEY,
            pb::DeleteBulletRequest {
                namespace: "secure-driving".into(),
                bullet_id: "00000000-0000-0000-0000-000000000000".into(),
                reason: "a decide key tries".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let denied = coordinator
        .start_training(with_key(
            DECIDE_KEY,
            pb::StartTrainingRequest {
                namespace: "secure-driving".into(),
                env: "driving".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let elsewhere = policy
        .decide(with_key(
            DECIDE_KEY,
            pb::DecideRequest {
                history: Vec::new(),
                namespace: "other-team".into(),
                ..decide()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(elsewhere.code(), Code::PermissionDenied, "{elsewhere:?}");

    // Every mutating RPC of every service: UNAUTHENTICATED without a key; PERMISSION_DENIED
    // for a key without the role (decide-only; learn+read against the admin RPCs).
    let mut world_model = pb::world_model_client::WorldModelClient::new(channel.clone());
    let mut explorer = pb::explorer_client::ExplorerClient::new(channel.clone());
    let mut reflector = pb::reflector_client::ReflectorClient::new(channel.clone());
    let ns = || "secure-driving".to_owned();
    macro_rules! call {
        ($client:ident . $method:ident ($msg:expr), $key:expr) => {{
            let mut r = tonic::Request::new($msg);
            if let Some(k) = $key {
                r.metadata_mut().insert(
                    "authorization",
                    MetadataValue::try_from(format!("Bearer {k}")).unwrap(),
                );
            }
            $client.$method(r).await.map(drop).map_err(|s| s.code())
        }};
    }
    macro_rules! each_key {
        ($client:ident . $method:ident ($msg:expr)) => {
            [None, Some(DECIDE_KEY), Some(LEARN_KEY)]
                .map(|k| (stringify!($method), k))
                .into_iter()
                .zip([
                    call!($client.$method($msg), None::<&str>),
                    call!($client.$method($msg), Some(DECIDE_KEY)),
                    call!($client.$method($msg), Some(LEARN_KEY)),
                ])
                .collect::<Vec<_>>()
        };
    }
    let mut outcomes = Vec::new();
    outcomes.extend(each_key!(world_model.fit(pb::FitRequest {
        namespace: ns(),
        ..Default::default()
    })));
    outcomes.extend(each_key!(explorer.explore(pb::ExploreRequest {
        namespace: ns(),
        ..Default::default()
    })));
    outcomes.extend(each_key!(reflector.reflect(pb::ReflectRequest {
        namespace: ns(),
        ..Default::default()
    })));
    outcomes.extend(each_key!(curator.curate(pb::CurateRequest {
        namespace: ns(),
        ..Default::default()
    })));
    outcomes.extend(each_key!(curator.record_feedback(
        pb::RecordFeedbackRequest {
            namespace: ns(),
            ..Default::default()
        }
    )));
    outcomes.extend(each_key!(coordinator.start_training(
        pb::StartTrainingRequest {
            namespace: ns(),
            ..Default::default()
        }
    )));
    outcomes.extend(each_key!(coordinator.start_live_loop(
        pb::StartLiveLoopRequest {
            namespace: ns(),
            ..Default::default()
        }
    )));
    let admin_rpcs = [
        "update_bullet",
        "delete_bullet",
        "merge_bullets",
        "set_bullet_stage",
        "compile",
        "cancel_run",
    ];
    outcomes.extend(each_key!(curator.update_bullet(pb::UpdateBulletRequest {
        namespace: ns(),
        ..Default::default()
    })));
    outcomes.extend(each_key!(curator.delete_bullet(pb::DeleteBulletRequest {
        namespace: ns(),
        ..Default::default()
    })));
    outcomes.extend(each_key!(curator.merge_bullets(pb::MergeBulletsRequest {
        namespace: ns(),
        ..Default::default()
    })));
    outcomes.extend(each_key!(curator.set_bullet_stage(
        pb::SetBulletStageRequest {
            namespace: ns(),
            ..Default::default()
        }
    )));
    outcomes.extend(each_key!(policy.compile(pb::CompileRequest {
        namespace: ns(),
        ..Default::default()
    })));
    outcomes.extend(each_key!(coordinator.cancel_run(pb::CancelRunRequest {
        run_id: "00000000-0000-0000-0000-000000000000".into(),
    })));
    assert_eq!(outcomes.len(), 13 * 3);
    for ((rpc, key), got) in outcomes {
        let expected = match key {
            None => Some(Code::Unauthenticated),
            Some(DECIDE_KEY) => Some(Code::PermissionDenied),
            Some(_) if admin_rpcs.contains(&rpc) => Some(Code::PermissionDenied),
            // The learner passes the gate; the empty request then fails on its content.
            Some(_) => None,
        };
        match expected {
            Some(code) => assert_eq!(got, Err(code), "{rpc} with {key:?}"),
            None => assert!(
                !matches!(got, Err(Code::Unauthenticated | Code::PermissionDenied)),
                "{rpc} with the learn key: {got:?}"
            ),
        }
    }

    // A training run from another process: the CLI over mutual TLS with the learner's key;
    // the server's own services call each other over TLS with the internal key, the queue
    // is Redis over TLS and the record PostgreSQL over TLS.
    let demos = agent_learning_envs::generate_demos("driving", 6, 11).unwrap();
    let demos_file = dir.path().join("demos.jsonl");
    agent_learning_envs::write_demos(&mut std::fs::File::create(&demos_file).unwrap(), &demos)
        .unwrap();
    let mut train = agent_learning();
    train
        .args(["train", "--env", "driving", "--namespace", "secure-driving"])
        .args(["--server", &https])
        .arg("--demos")
        .arg(&demos_file)
        .args(["--config-json", r#"{"holdout": 2}"#])
        .env("AGENT_LEARNING_API_KEY", LEARN_KEY)
        .env("AGENT_LEARNING__DATA_DIR", dir.path().join("cli"));
    tls_env(&mut train);
    let out = tokio::task::spawn_blocking(move || train.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "train over TLS failed: {}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        log_text()
    );

    let decided = policy
        .decide(with_key(DECIDE_KEY, decide()))
        .await
        .unwrap_or_else(|s| panic!("Decide with the decide key: {s:?}"))
        .into_inner();
    assert!(
        decide().valid_actions.contains(&decided.action),
        "{decided:?}"
    );
    let playbook = curator
        .get_playbook(with_key(
            LEARN_KEY,
            pb::GetPlaybookRequest {
                namespace: "secure-driving".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !playbook.bullets.is_empty(),
        "the run curated nothing over TLS"
    );

    // Every connection the server holds to the record is encrypted.
    let admin = Database::connect(db.url.as_str()).await.unwrap();
    let rows = admin
        .query_all_raw(Statement::from_string(
            admin.get_database_backend(),
            format!(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.datname = '{}' AND a.pid <> pg_backend_pid()",
                db.name()
            ),
        ))
        .await
        .unwrap();
    let ssl: Vec<bool> = rows
        .iter()
        .map(|r| r.try_get::<bool>("", "ssl").unwrap())
        .collect();
    assert!(
        !ssl.is_empty() && ssl.iter().all(|s| *s),
        "server connections to PostgreSQL, TLS or not: {ssl:?}"
    );
    drop(admin);

    // SIGTERM: the server stops by itself, then its log is searched for every secret.
    server.terminate();
    let stopped = Instant::now();
    while server.exited().is_none() {
        assert!(
            stopped.elapsed() < Duration::from_secs(30),
            "still running 30 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = log_text();
    assert!(text.contains("grpc server listening"), "{text}");
    for secret in [INTERNAL_KEY, LEARN_KEY, DECIDE_KEY, REDIS_PASSWORD] {
        assert!(!text.contains(secret), "{secret} is in the server's log");
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains(secret)
                && !String::from_utf8_lossy(&out.stdout).contains(secret),
            "{secret} is in the CLI's output"
        );
    }
    db.drop_database().await;
}
