//! Helpers shared by the process tests of the `agent-learning` binary.

#![allow(dead_code)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command};
use std::time::Duration;

use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_agent-learning");

/// A child process killed and reaped when dropped; `url` is where it serves, if it does.
pub struct Proc {
    pub child: Child,
    pub url: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `cmd` (stdout piped) and reads the `listening on ADDR` line it prints first.
pub fn spawn_serving(mut cmd: Command) -> Proc {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn agent-learning");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("first line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Proc {
        child,
        url: format!("http://{addr}"),
    }
}

/// A channel to `url` once the server there reports SERVING (it answers NOT_SERVING, and
/// UNAVAILABLE to every other call, while it loads models and opens backends).
pub async fn channel(url: &str) -> Channel {
    agent_learning_cli::health::wait_serving(url, "", Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    Channel::from_shared(url.to_owned())
        .expect("a valid URL")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

/// grpcio and grpcio-tools for the Python example environment (from PyPI when missing).
pub fn ensure_grpcio() {
    let ok = || {
        Command::new("python3")
            .args(["-c", "import grpc, grpc_tools"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok() {
        let status = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "grpcio", "grpcio-tools"])
            .status()
            .expect("python3 -m pip");
        assert!(status.success(), "pip install grpcio grpcio-tools failed");
    }
}

/// The repository's Python example environment (the corridor), serving on a free port.
pub fn python_corridor() -> Proc {
    ensure_grpcio();
    let mut cmd = Command::new("python3");
    cmd.arg(example("text_env_server.py")).args(["--port", "0"]);
    spawn_serving(cmd)
}

pub fn example(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/python")
        .join(file)
}

/// Asserts that a finished command succeeded, showing what it printed when it did not.
#[track_caller]
pub fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
