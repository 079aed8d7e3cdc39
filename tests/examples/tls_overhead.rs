//! What API keys and mutual TLS cost a Decide: two `agent-learning serve` processes side by side,
//! one plain (no keys, no TLS) and one with keys and mutual TLS, the same policy, the same
//! states, an LLM endpoint that answers at once; rounds alternate between the two so both see
//! the same machine. Prints p50/p99 latency and requests/s at each concurrency.
//!
//! ```sh
//! cargo build --release -p agent-learning-cli
//! cargo run --release -p agent-learning-tests --example tls_overhead [-- ROUNDS PER_ROUND]
//! ```

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use agent_learning_llm::testsuite::ScriptedEndpoint;
use agent_learning_proto::v1 as pb;
use agent_learning_server::auth::key_hash;
use agent_learning_tests::{Pki, Process, agent_learning, free_port};
use pb::policy_client::PolicyClient;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const KEY: &str = "bench-decide-key";
const INTERNAL: &str = "bench-internal-key";

struct Server {
    _process: Process,
    channel: Channel,
    key: Option<&'static str>,
}

async fn start(dir: &Path, pki: &Pki, model: &str, secure: bool) -> Server {
    let name = if secure { "secure" } else { "plain" };
    let port = free_port();
    let mut cmd = agent_learning();
    cmd.args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .env("AGENT_LEARNING__DATA_DIR", dir.join(name))
        .env("AGENT_LEARNING__TELEMETRY__LOG_FILTER", "warn")
        .env("AGENT_LEARNING__LLM__PROVIDER", "openai")
        .env("AGENT_LEARNING__LLM__BASE_URL", model)
        .env("AGENT_LEARNING__LLM__MODEL", "instant")
        .env("AGENT_LEARNING__LLM__API_KEY", "sk-bench")
        .env("AGENT_LEARNING__LLM__MAX_CONCURRENCY", "64")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap());
    if secure {
        let keys = dir.join("api-keys");
        std::fs::write(&keys, format!("bench {} *:*\n", key_hash(KEY))).unwrap();
        cmd.env("AGENT_LEARNING__AUTH__KEYS_FILE", keys)
            .env("AGENT_LEARNING__AUTH__INTERNAL_KEY", INTERNAL)
            .env("AGENT_LEARNING__TLS__CERT", pki.path("server.pem"))
            .env("AGENT_LEARNING__TLS__KEY", pki.path("server.key"))
            .env("AGENT_LEARNING__TLS__CLIENT_CA", pki.path("ca.pem"))
            .env("AGENT_LEARNING__TLS__CA", pki.path("ca.pem"))
            .env("AGENT_LEARNING__TLS__CLIENT_CERT", pki.path("client.pem"))
            .env("AGENT_LEARNING__TLS__CLIENT_KEY", pki.path("client.key"))
            .env("AGENT_LEARNING__TLS__SERVER_NAME", "localhost");
    }
    let process = Process(cmd.spawn().expect("spawn agent-learning serve"));
    let endpoint = if secure {
        Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
            .unwrap()
            .tls_config(pki.client("ca.pem", Some("client")))
            .unwrap()
    } else {
        Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap()
    };
    let started = Instant::now();
    let channel = loop {
        if let Ok(ch) = endpoint.connect().await {
            let serving = HealthClient::new(ch.clone())
                .check(HealthCheckRequest::default())
                .await
                .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32);
            if serving {
                break ch;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{name} server not serving"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let server = Server {
        _process: process,
        channel,
        key: secure.then_some(KEY),
    };
    PolicyClient::new(server.channel.clone())
        .compile(request(
            server.key,
            pb::CompileRequest {
                namespace: "bench".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("compile");
    server
}

fn request<T>(key: Option<&str>, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(k) = key {
        r.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {k}")).unwrap(),
        );
    }
    r
}

/// `n` Decides at `concurrency`; the latency of each.
async fn drive(s: &Server, n: usize, concurrency: usize, offset: usize) -> Vec<Duration> {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency {
        let mut client = PolicyClient::new(s.channel.clone());
        let key = s.key;
        tasks.spawn(async move {
            let mut out = Vec::new();
            let mut i = w;
            while i < n {
                let j = offset + i;
                let req = request(
                    key,
                    pb::DecideRequest {
                        namespace: "bench".into(),
                        state: format!(
                            "lane {} of 3, speed {}, gap ahead {}",
                            j % 3,
                            20 + j % 17,
                            j % 61
                        ),
                        valid_actions: vec![
                            "accelerate".into(),
                            "brake".into(),
                            "keep_lane".into(),
                        ],
                        ..Default::default()
                    },
                );
                let t = Instant::now();
                client.decide(req).await.expect("decide");
                out.push(t.elapsed());
                i += concurrency;
            }
            out
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        all.extend(r.unwrap());
    }
    all
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("ROUNDS PER_ROUND"))
        .collect();
    let rounds = args.first().copied().unwrap_or(6);
    let per_round = args.get(1).copied().unwrap_or(200);
    agent_learning_tests::fetch_embedder();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let model = ScriptedEndpoint::start(Duration::ZERO).await;
    let plain = start(dir.path(), &pki, &model.uri(), false).await;
    let secure = start(dir.path(), &pki, &model.uri(), true).await;
    // Warm both (connections, caches, the embedder).
    drive(&plain, 50, 4, 0).await;
    drive(&secure, 50, 4, 0).await;

    println!(
        "Decide, instant model, {rounds} rounds x {per_round} calls per configuration, alternating"
    );
    println!("| concurrency | configuration | p50 ms | p99 ms | requests/s |");
    println!("|---|---|---|---|---|");
    for concurrency in [1, 16] {
        let mut lat = [Vec::new(), Vec::new()];
        let mut busy = [Duration::ZERO; 2];
        for round in 0..rounds {
            // Alternate which goes first, so neither always meets a warmer machine.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for which in order {
                let s = if which == 0 { &plain } else { &secure };
                let t = Instant::now();
                lat[which].extend(drive(s, per_round, concurrency, round * per_round).await);
                busy[which] += t.elapsed();
            }
        }
        for (which, name) in [(0, "plain"), (1, "keys + mutual TLS")] {
            let mut l = lat[which].clone();
            l.sort();
            println!(
                "| {concurrency} | {name} | {:.2} | {:.2} | {:.0} |",
                pct(&l, 0.50).as_secs_f64() * 1e3,
                pct(&l, 0.99).as_secs_f64() * 1e3,
                l.len() as f64 / busy[which].as_secs_f64()
            );
        }
    }
}
