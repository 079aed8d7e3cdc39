//! The split deployment as a platform team runs it: every service its own process, configured
//! only through `AGENT_LEARNING__*` variables as a container is, on PostgreSQL, Redis Streams
//! and a Qdrant server. A training run survives `kill -9` of a reflector, of the curator and of
//! the coordinator driving it (a second coordinator takes the run over) and leaves exactly what
//! an undisturbed run leaves; CancelRun reaches a run through the coordinator that does not
//! drive it; two curator processes count 64 concurrent votes; a Python client decides; every
//! process exports its metrics; and after everything restarts, the playbook and the policy are
//! served unchanged.
//!
//! Needs the `agent-learning` binary (`cargo test --workspace` builds it), PostgreSQL and Redis
//! on loopback, and a Qdrant server at `AGENT_LEARNING_TEST_QDRANT_URL` (`.ci/run` starts
//! `../shared/bin/qdrant`); without the server the test says so and is skipped.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use agent_learning_llm::testsuite::ScriptedEndpoint;
use agent_learning_proto::v1 as pb;
use agent_learning_store::Store;
use agent_learning_store::testsuite::{TestDatabase, assert_each_once};
use agent_learning_tests::{finished, stage_done};
use pb::coordinator_client::CoordinatorClient;
use pb::curator_client::CuratorClient;
use pb::policy_client::PolicyClient;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const DEMOS: usize = 12;
const ALTERNATIVES: u64 = 2;
/// Each reflection's model call takes this long, so work is in flight when processes die.
const MODEL_DELAY: Duration = Duration::from_millis(2500);

/// One service process: `agent-learning service NAME`, its settings in the environment only.
struct Node {
    name: String,
    service: &'static str,
    port: u16,
    metrics_port: u16,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = agent_learning_tests::agent_learning();
        cmd.args(["service", self.service]);
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "AGENT_LEARNING__SERVER__ADDR",
                format!("127.0.0.1:{}", self.port),
            )
            .env(
                "AGENT_LEARNING__TELEMETRY__METRICS_ADDR",
                format!("127.0.0.1:{}", self.metrics_port),
            )
            .env("HOSTNAME", &self.name)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn agent-learning service"));
    }

    /// `kill -9`: no shutdown, no lease release, no acknowledgement of work in hand.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log)
            .unwrap_or_else(|e| format!("{}: {e}", self.log.display()));
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn wait_serving(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("{} exited with {status}:\n{}", self.name, self.log_tail());
            }
            if let Ok(ch) = Channel::from_shared(self.url()).unwrap().connect().await {
                let serving = HealthClient::new(ch)
                    .check(HealthCheckRequest::default())
                    .await
                    .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32);
                if serving {
                    return;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{} not SERVING after 120 s:\n{}",
                self.name,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn metrics(&self) -> String {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.metrics_port))
            .await
            .unwrap_or_else(|e| panic!("{} metrics endpoint: {e}", self.name));
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"))
}

async fn wait_finished(c: &mut CoordinatorClient<Channel>, run_id: &str) -> pb::Run {
    let started = Instant::now();
    loop {
        let run = c
            .get_run(pb::GetRunRequest {
                run_id: run_id.into(),
            })
            .await
            .unwrap()
            .into_inner();
        if finished(&run) {
            return run;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "run {run_id} unfinished after 300 s: {run:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The figures of a run's summary that must not depend on what was killed on the way.
fn counted(summary: &str) -> Value {
    let s: Value = serde_json::from_str(summary).expect("summary JSON");
    serde_json::json!({
        "transitions": s["transitions"],
        "rollouts": s["rollouts"],
        "rollouts_by_source": s["rollouts_by_source"],
        "branch_points": s["branch_points"],
        "reflections": s["reflections"],
        "reflections_valid": s["reflections_valid"],
        "curated": s["curated"],
        "bullets": s["bullets"],
        "tokens": s["tokens"],
    })
}

async fn playbook(c: &mut CuratorClient<Channel>, ns: &str) -> Vec<(String, String, u32)> {
    let mut out: Vec<(String, String, u32)> = c
        .get_playbook(pb::GetPlaybookRequest {
            namespace: ns.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .bullets
        .into_iter()
        .map(|b| (b.id, b.content, b.helpful))
        .collect();
    out.sort();
    out
}

fn ensure_grpcio() {
    let ok = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let status = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "grpcio", "grpcio-tools"])
            .status()
            .expect("python3 -m pip");
        assert!(status.success(), "pip install grpcio grpcio-tools failed");
    }
}

/// `examples/python/decide_client.py` against the policy process: the decision as JSON.
fn python_decide(policy: &Node, ns: &str, state: &str, actions: &BTreeSet<String>) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new("python3");
    cmd.arg(root.join("examples/python/decide_client.py"))
        .args(["--addr", &format!("127.0.0.1:{}", policy.port)])
        .args(["--namespace", ns, "--state", state]);
    for a in actions {
        cmd.args(["--action", a]);
    }
    let out = cmd.output().expect("python3");
    assert!(
        out.status.success(),
        "decide_client.py: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON decision")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_deployment_survives_kills_and_restarts() {
    let Ok(qdrant_url) = std::env::var("AGENT_LEARNING_TEST_QDRANT_URL") else {
        eprintln!(
            "skipped: needs a Qdrant server at AGENT_LEARNING_TEST_QDRANT_URL (.ci/run starts ../shared/bin/qdrant)"
        );
        return;
    };
    let qdrant_key = std::env::var("AGENT_LEARNING_TEST_QDRANT_API_KEY").unwrap_or_default();
    agent_learning_tests::fetch_embedder();
    ensure_grpcio();

    // The pipeline's streams have fixed names: start from empty ones.
    let redis_url = "redis://127.0.0.1:6379";
    {
        let client = redis::Client::open(redis_url).unwrap();
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis on 127.0.0.1:6379");
        let _: () = redis::cmd("DEL")
            .arg("agent_learning:rollouts")
            .arg("agent_learning:rollouts:dead")
            .arg("agent_learning:reflections")
            .arg("agent_learning:reflections:dead")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let db = TestDatabase::create("distributed").await;
    let model = ScriptedEndpoint::start(MODEL_DELAY).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("e2e_{}", std::process::id());

    // world-model, explorer, 3 reflectors, policy, curator, 2 coordinators, and a second
    // curator for the vote test.
    let layout: [(&str, &'static str); 10] = [
        ("curator", "curator"),
        ("world-model", "world-model"),
        ("policy", "policy"),
        ("explorer", "explorer"),
        ("reflector-1", "reflector"),
        ("reflector-2", "reflector"),
        ("reflector-3", "reflector"),
        ("coord-a", "coordinator"),
        ("coord-b", "coordinator"),
        ("curator-2", "curator"),
    ];
    let ports = agent_learning_tests::free_ports(layout.len() * 2);
    let url_of = |name: &str| {
        let i = layout.iter().position(|(n, _)| *n == name).unwrap();
        format!("http://127.0.0.1:{}", ports[2 * i])
    };
    let shared: Vec<(String, String)> = [
        ("AGENT_LEARNING__DATABASE__URL", db.url.clone()),
        ("AGENT_LEARNING__DATABASE__MAX_CONNECTIONS", "4".into()),
        ("AGENT_LEARNING__QUEUE__REDIS_URL", redis_url.into()),
        ("AGENT_LEARNING__QUEUE__VISIBILITY_TIMEOUT_SECS", "3".into()),
        ("AGENT_LEARNING__QUEUE__BLOCK_MS", "200".into()),
        ("AGENT_LEARNING__VECTOR__QDRANT_URL", qdrant_url.clone()),
        ("AGENT_LEARNING__VECTOR__QDRANT_API_KEY", qdrant_key.clone()),
        ("AGENT_LEARNING__VECTOR__COLLECTION_PREFIX", prefix.clone()),
        ("AGENT_LEARNING__LLM__PROVIDER", "openai".into()),
        ("AGENT_LEARNING__LLM__BASE_URL", model.uri()),
        ("AGENT_LEARNING__LLM__MODEL", "instant".into()),
        ("AGENT_LEARNING__LLM__API_KEY", "sk-test".into()),
        (
            "AGENT_LEARNING__SERVICES__WORLD_MODEL",
            url_of("world-model"),
        ),
        ("AGENT_LEARNING__SERVICES__EXPLORER", url_of("explorer")),
        ("AGENT_LEARNING__SERVICES__REFLECTOR", url_of("reflector-1")),
        ("AGENT_LEARNING__SERVICES__POLICY", url_of("policy")),
        ("AGENT_LEARNING__SERVICES__CURATOR", url_of("curator")),
        ("AGENT_LEARNING__PIPELINE__RUN_LEASE_SECS", "3".into()),
        ("AGENT_LEARNING__TELEMETRY__LOG_FILTER", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut nodes: Vec<Node> = layout
        .iter()
        .enumerate()
        .map(|(i, (name, service))| {
            let mut env = shared.clone();
            env.push((
                "AGENT_LEARNING__DATA_DIR".into(),
                dir.path().join(name).display().to_string(),
            ));
            Node {
                name: (*name).to_owned(),
                service,
                port: ports[2 * i],
                metrics_port: ports[2 * i + 1],
                env,
                log: dir.path().join(format!("{name}.log")),
                child: None,
            }
        })
        .collect();
    let idx = |name: &str| layout.iter().position(|(n, _)| *n == name).unwrap();
    let (curator, policy, reflector1, coord_a, coord_b, curator2) = (
        idx("curator"),
        idx("policy"),
        idx("reflector-1"),
        idx("coord-a"),
        idx("coord-b"),
        idx("curator-2"),
    );

    // The curator first (it migrates the record), then the others, coordinators last (they
    // wait for the services they drive).
    nodes[curator].start();
    nodes[curator].wait_serving().await;
    for n in nodes.iter_mut().take(coord_a).skip(1) {
        n.start();
    }
    for n in nodes.iter_mut().take(coord_a).skip(1) {
        n.wait_serving().await;
    }
    for i in [coord_a, coord_b] {
        nodes[i].start();
    }
    for i in [coord_a, coord_b] {
        nodes[i].wait_serving().await;
    }

    let demos = agent_learning_envs::generate_demos("driving", DEMOS, 7).unwrap();
    let mut demos_jsonl = Vec::new();
    agent_learning_envs::write_demos(&mut demos_jsonl, &demos).unwrap();
    let demos_jsonl = String::from_utf8(demos_jsonl).unwrap();
    let store = Store::connect(&db.url, 2).await.unwrap();
    let mut a = CoordinatorClient::new(channel(&nodes[coord_a].url()).await);
    let mut b = CoordinatorClient::new(channel(&nodes[coord_b].url()).await);
    let training = |ns: &str| pb::StartTrainingRequest {
        namespace: ns.into(),
        demos_jsonl: demos_jsonl.clone(),
        env: "driving".into(),
        config_json: r#"{"holdout": 0}"#.into(),
    };

    // The disturbed run, submitted to coordinator A and watched through B.
    let run = a
        .start_training(training("driving"))
        .await
        .unwrap()
        .into_inner();
    let a_holder = "coordinator-coord-a-";
    let b_holder = "coordinator-coord-b-";
    let mut holders: Vec<String> = Vec::new();
    let mut kills: Vec<String> = Vec::new();
    let (mut reflector_killed, mut curator_killed, mut driver_killed, mut a_back) =
        (false, false, false, false);
    let started = Instant::now();
    let done = loop {
        if let Some((holder, _)) = store.run_lease(&run.id).await.unwrap()
            && holders.last() != Some(&holder)
        {
            holders.push(holder);
        }
        let r = b
            .get_run(pb::GetRunRequest {
                run_id: run.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        if finished(&r) {
            break r;
        }
        let reflected = stage_done(&r, "reflect");
        let at = format!(
            "{} at reflect {reflected}/{} ({:.1} s)",
            r.current_stage,
            DEMOS,
            started.elapsed().as_secs_f64()
        );
        if !reflector_killed && reflected >= 2 {
            nodes[reflector1].kill9();
            nodes[reflector1].start();
            reflector_killed = true;
            kills.push(format!("reflector-1 killed and restarted in {at}"));
        } else if reflector_killed && !curator_killed && reflected >= 4 {
            nodes[curator].kill9();
            nodes[curator].start();
            curator_killed = true;
            kills.push(format!("curator killed and restarted in {at}"));
        } else if curator_killed && !driver_killed && reflected >= 6 {
            assert!(
                holders.len() == 1 && holders[0].starts_with(a_holder),
                "A drives the run it was given, alone: {holders:?}"
            );
            nodes[coord_a].kill9();
            driver_killed = true;
            kills.push(format!("coordinator A (the driver) killed in {at}"));
        }
        if driver_killed && !a_back && holders.len() >= 2 {
            nodes[coord_a].start();
            a_back = true;
            kills.push(format!(
                "coordinator A restarted after B took the run over ({:.1} s)",
                started.elapsed().as_secs_f64()
            ));
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "run unfinished after 300 s: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for k in &kills {
        eprintln!("e2e: {k}");
    }
    assert!(
        reflector_killed && curator_killed && driver_killed,
        "the run ended before every kill: {kills:?}"
    );
    assert_eq!(done.state, pb::RunState::Succeeded as i32, "{}", done.error);
    assert_eq!(
        holders.len(),
        2,
        "one driver, then one taker-over: {holders:?}"
    );
    assert!(holders[0].starts_with(a_holder) && holders[1].starts_with(b_holder));
    eprintln!("e2e: run {} driven by {holders:?}", run.id);

    // The same demos again, undisturbed, in a namespace of their own: the same figures.
    nodes[coord_a].wait_serving().await;
    nodes[curator].wait_serving().await;
    let mut a = CoordinatorClient::new(channel(&nodes[coord_a].url()).await);
    let calm = a
        .start_training(training("driving-calm"))
        .await
        .unwrap()
        .into_inner();
    let calm = wait_finished(&mut a, &calm.id).await;
    assert_eq!(calm.state, pb::RunState::Succeeded as i32, "{}", calm.error);
    let (disturbed_counts, calm_counts) =
        (counted(&done.summary_json), counted(&calm.summary_json));
    eprintln!("e2e: disturbed {disturbed_counts}");
    eprintln!("e2e: undisturbed {calm_counts}");
    assert_eq!(disturbed_counts, calm_counts);
    let record = assert_each_once(&store, 2 * DEMOS as u64, ALTERNATIVES).await;
    eprintln!("e2e: record over both runs {record:?}");

    // CancelRun through the coordinator that does not drive the run.
    let third = b
        .start_training(training("driving-cancelled"))
        .await
        .unwrap()
        .into_inner();
    let holder = loop {
        if let Some((h, _)) = store.run_lease(&third.id).await.unwrap() {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        holder.starts_with(b_holder),
        "B drives what it was given: {holder}"
    );
    let cancelled = a
        .cancel_run(pb::CancelRunRequest {
            run_id: third.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state, pb::RunState::Cancelled as i32);
    let third_done = wait_finished(&mut b, &third.id).await;
    assert_eq!(third_done.state, pb::RunState::Cancelled as i32);
    // B notices at its next lease renewal (every run_lease_secs / 3 = 1 s), stops the stage
    // and releases the lease; well before the lease would have expired by itself (3 s).
    let mut lease = store.run_lease(&third.id).await.unwrap();
    for _ in 0..25 {
        if lease.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        lease = store.run_lease(&third.id).await.unwrap();
    }
    assert_eq!(
        lease, None,
        "B stopped driving the cancelled run and gave its lease up"
    );
    eprintln!("e2e: run {} driven by B, cancelled through A", third.id);

    // 64 concurrent votes on one bullet through two curator processes.
    nodes[curator2].start();
    nodes[curator2].wait_serving().await;
    let mut c1 = CuratorClient::new(channel(&nodes[curator].url()).await);
    let c2 = CuratorClient::new(channel(&nodes[curator2].url()).await);
    let before = playbook(&mut c1, "driving").await;
    let (bullet, _, helpful_before) = before.first().cloned().expect("a bullet");
    // The bullet's counter changes, in order: `helpful: [before, after]` of each.
    let counter_chain = |mut c: CuratorClient<Channel>, id: String| async move {
        c.get_bullet_history(pb::GetBulletHistoryRequest {
            namespace: "driving".into(),
            bullet_id: id,
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .filter(|e| e.kind == "counters_changed")
        .map(|e| {
            let d: Value = serde_json::from_str(&e.detail).unwrap();
            (
                d["helpful"][0].as_i64().unwrap(),
                d["helpful"][1].as_i64().unwrap(),
            )
        })
        .collect::<Vec<_>>()
    };
    let chain_before = counter_chain(c1.clone(), bullet.clone()).await.len();
    let votes = (0..64).map(|i| {
        let mut c = if i % 2 == 0 { c1.clone() } else { c2.clone() };
        let bullet = bullet.clone();
        async move {
            c.record_feedback(pb::RecordFeedbackRequest {
                namespace: "driving".into(),
                feedback: vec![pb::BulletFeedback {
                    bullet_id: bullet,
                    helpful: 1,
                    harmful: 0,
                }],
                feedback_id: format!("vote-{i}"),
            })
            .await
            .unwrap()
        }
    });
    futures::future::join_all(votes).await;
    let after = playbook(&mut c1, "driving").await;
    let helpful_after = after.iter().find(|b| b.0 == bullet).unwrap().2;
    let chain = counter_chain(c2.clone(), bullet.clone()).await;
    let votes_chain = &chain[chain_before..];
    eprintln!(
        "e2e: 64 votes through two curators: helpful {helpful_before} -> {helpful_after}, {} counter events chained {:?} .. {:?}",
        votes_chain.len(),
        votes_chain.first(),
        votes_chain.last()
    );
    assert_eq!(helpful_after, helpful_before + 64);
    assert_eq!(votes_chain.len(), 64);
    for (n, step) in votes_chain.iter().enumerate() {
        let from = i64::from(helpful_before) + n as i64;
        assert_eq!(*step, (from, from + 1), "no vote lost");
    }

    // Decide from Python, against the policy process.
    let state = demos[0].steps[0].state.clone();
    let actions: BTreeSet<String> = demos
        .iter()
        .flat_map(|d| d.steps.iter().map(|s| s.action.clone()))
        .collect();
    let decision = python_decide(&nodes[policy], "driving", &state, &actions);
    eprintln!("e2e: python Decide: {decision}");
    assert!(actions.contains(decision["action"].as_str().unwrap()));
    let version = decision["policy_version"].as_str().unwrap().to_owned();

    // Every process exports what an operator watches.
    for (node, wanted) in [
        (
            idx("reflector-2"),
            &[
                "agent_learning_reflections_total{",
                "agent_learning_llm_tokens_total{",
                "agent_learning_queue_undelivered{",
                "agent_learning_rpc_requests_total{",
            ][..],
        ),
        (
            curator,
            &[
                "agent_learning_curation_ops_total{",
                "agent_learning_queue_pending{",
            ][..],
        ),
        (
            policy,
            &[
                "agent_learning_decide_duration_seconds_bucket{",
                "agent_learning_rpc_duration_seconds_bucket{",
            ][..],
        ),
        (
            coord_b,
            &["method=\"/agent_learning.v1.Coordinator/GetRun\",code=\"Ok\""][..],
        ),
    ] {
        let text = nodes[node].metrics().await;
        for w in wanted {
            assert!(
                text.contains(w),
                "{} /metrics lacks {w}:\n{text}",
                nodes[node].name
            );
        }
        let excerpt: Vec<&str> = text
            .lines()
            .filter(|l| wanted.iter().any(|w| l.contains(w.trim_end_matches('{'))))
            .take(4)
            .collect();
        eprintln!(
            "e2e: {} /metrics: {}",
            nodes[node].name,
            excerpt.join(" | ")
        );
    }

    // Everything killed and started again: the playbook and the policy are intact and served.
    let playbook_before = playbook(&mut c1, "driving").await;
    for n in nodes.iter_mut() {
        n.kill9();
    }
    for n in nodes.iter_mut() {
        n.start();
    }
    for n in nodes.iter_mut() {
        n.wait_serving().await;
    }
    let mut c1 = CuratorClient::new(channel(&nodes[curator].url()).await);
    assert_eq!(playbook(&mut c1, "driving").await, playbook_before);
    let mut p = PolicyClient::new(channel(&nodes[policy].url()).await);
    let served = p
        .get_policy(pb::GetPolicyRequest {
            namespace: "driving".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(served.version, version);
    let again = python_decide(&nodes[policy], "driving", &state, &actions);
    assert_eq!(again["policy_version"], decision["policy_version"]);
    eprintln!(
        "e2e: after a restart of all {} processes: {} bullets, policy {version} served",
        nodes.len(),
        playbook_before.len()
    );

    drop(nodes);
    store.close().await.unwrap();
    db.drop_database().await;
}
