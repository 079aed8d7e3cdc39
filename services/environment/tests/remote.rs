//! The Environment protocol end to end: built-in environments served over gRPC and reached
//! through `RemoteEnvironment`, and the Python example server reached the same way.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agent_learning_environment::{RemoteEnvironment, serve_environment};
use agent_learning_envs::{EnvError, Environment, built_in, factory};
use agent_learning_proto::v1 as pb;
use agent_learning_server::ServerLimits;

fn limits() -> ServerLimits {
    ServerLimits {
        max_message_bytes: 4 << 20,
        concurrency_limit_per_connection: 64,
        max_in_flight: 0,
        request_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(1),
    }
}

/// Serves `name` on a runtime of its own thread; returns the URL.
fn serve(name: &'static str) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            serve_environment(
                name,
                agent_learning_server::GrpcServer::new(limits()).unwrap(),
                listener,
                std::future::pending(),
            )
            .await
            .unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

/// Plays the same actions locally and remotely; every state must match.
fn play(env: &mut dyn Environment, seed: u64, actions: &[&str]) -> Vec<String> {
    let mut out = vec![env.reset(seed).unwrap()];
    for a in actions {
        match env.step(a) {
            Ok(s) => {
                out.push(s.state);
                if s.done {
                    break;
                }
            }
            Err(e) => out.push(format!("error: {e}")),
        }
    }
    out
}

#[test]
fn remote_built_in_environments_match_local_ones() {
    for name in ["driving", "support", "devops", "code-review"] {
        let url = serve(name);
        let mut remote = RemoteEnvironment::connect(&url).unwrap();
        let mut local = factory(name).unwrap()();
        let (_, mut expert) = built_in(name).unwrap();
        // The expert's actions on the local copy, replayed remotely.
        let mut actions = Vec::new();
        local.reset(11).unwrap();
        for _ in 0..40 {
            let a = expert.act(local.as_ref());
            let done = local.step(&a).unwrap().done;
            actions.push(a);
            if done {
                break;
            }
        }
        let refs: Vec<&str> = actions.iter().map(String::as_str).collect();
        assert_eq!(
            play(&mut remote, 11, &refs),
            play(local.as_mut(), 11, &refs),
            "{name}"
        );
        assert_eq!(
            remote.outcome().map(|o| o.success),
            local.outcome().map(|o| o.success),
            "{name}"
        );
        local.reset(11).unwrap();
        remote.reset(11).unwrap();
        assert_eq!(remote.actions(), local.actions(), "{name}");

        // Branching: restore, then the same steps give the same states.
        remote.reset(5).unwrap();
        remote.step(&actions[0]).ok();
        let snap = remote.snapshot().expect("built-in environments snapshot");
        let first: Vec<String> = (0..3)
            .filter_map(|i| {
                remote
                    .step(&actions[i % actions.len()])
                    .ok()
                    .map(|s| s.state)
            })
            .collect();
        remote.restore(&snap).unwrap();
        let again: Vec<String> = (0..3)
            .filter_map(|i| {
                remote
                    .step(&actions[i % actions.len()])
                    .ok()
                    .map(|s| s.state)
            })
            .collect();
        assert_eq!(first, again, "{name}");
        assert!(matches!(
            remote.restore(b"no-such-snapshot"),
            Err(EnvError::Snapshot(_))
        ));

        // Bad input: a clear error naming the valid actions.
        remote.reset(1).unwrap();
        let err = remote.step("teleport").unwrap_err();
        assert!(
            matches!(err, EnvError::InvalidAction { .. }),
            "{name}: {err}"
        );
        assert!(err.to_string().contains("valid actions"), "{name}: {err}");
    }
}

#[test]
fn many_concurrent_episodes_on_one_server() {
    let url = serve("driving");
    let handles: Vec<_> = (0..8u64)
        .map(|seed| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut remote = RemoteEnvironment::connect(&url).unwrap();
                let mut local = factory("driving").unwrap()();
                let actions = ["keep_lane", "accelerate", "brake", "change_lane_right"];
                let script: Vec<&str> = (0..30).map(|i| actions[(i + seed as usize) % 4]).collect();
                assert_eq!(
                    play(&mut remote, seed, &script),
                    play(local.as_mut(), seed, &script)
                );
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[tokio::test]
async fn unknown_episodes_and_missing_ids_are_named() {
    let url = tokio::task::spawn_blocking(|| serve("support"))
        .await
        .unwrap();
    let mut client = pb::environment_client::EnvironmentClient::connect(url)
        .await
        .unwrap();
    let err = client
        .step(pb::StepRequest {
            episode_id: "nope".into(),
            action: "apologize".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("episode_id"), "{}", err.message());
    let err = client
        .actions(pb::ActionsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("episode_id"), "{}", err.message());
}

#[tokio::test]
async fn a_closed_episode_is_forgotten() {
    let url = tokio::task::spawn_blocking(|| serve("driving"))
        .await
        .unwrap();
    let mut client = pb::environment_client::EnvironmentClient::connect(url)
        .await
        .unwrap();
    let id = client
        .reset(pb::ResetRequest { seed: 1 })
        .await
        .unwrap()
        .into_inner()
        .episode_id;
    client
        .snapshot(pb::SnapshotRequest {
            episode_id: id.clone(),
        })
        .await
        .unwrap();
    client
        .close(pb::CloseRequest {
            episode_id: id.clone(),
        })
        .await
        .unwrap();
    let err = client
        .step(pb::StepRequest {
            episode_id: id.clone(),
            action: "keep_lane".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    // Closing again, or an episode the server never had, is not an error.
    client
        .close(pb::CloseRequest { episode_id: id })
        .await
        .unwrap();
    let err = client.close(pb::CloseRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

struct Python(Child);

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ensure_grpcio() {
    let ok = |py: &str| {
        Command::new("python3")
            .args(["-c", py])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok("import grpc, grpc_tools") {
        // From PyPI, like the models: the example's only dependencies.
        let status = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "grpcio", "grpcio-tools"])
            .status()
            .expect("python3 -m pip");
        assert!(status.success(), "pip install grpcio grpcio-tools failed");
    }
}

#[test]
fn the_python_example_environment_through_the_rust_client() {
    ensure_grpcio();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut child = Command::new("python3")
        .arg(root.join("examples/python/text_env_server.py"))
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _server = Python(child);
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));

    let mut env = agent_learning_environment::open_env(&format!("grpc://{addr}")).unwrap();
    let start = env.reset(3).unwrap();
    assert!(start.starts_with("corridor"), "{start}");
    assert_eq!(
        env.actions().unwrap(),
        vec!["left".to_string(), "right".into(), "wait".into()]
    );
    let snap = env.snapshot().unwrap();
    // The contract: an invalid action's error ends with the valid ones.
    match env.step("jump").unwrap_err() {
        EnvError::InvalidAction { action, valid } => {
            assert_eq!(action, "jump");
            assert_eq!(valid, "left, right, wait");
        }
        err => panic!("{err}"),
    }
    let mut states = Vec::new();
    loop {
        let s = env.step("right").unwrap();
        states.push(s.state);
        if s.done {
            break;
        }
    }
    let outcome = env.outcome().unwrap();
    assert!(
        outcome.success,
        "walking right reaches the door: {states:?}"
    );
    assert!(matches!(env.step("right"), Err(EnvError::Done)));
    // Restore the start and walk the other way: the pit.
    assert_eq!(env.restore(&snap).unwrap(), start);
    loop {
        if env.step("left").unwrap().done {
            break;
        }
    }
    assert!(!env.outcome().unwrap().success);
}
