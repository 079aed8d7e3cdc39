//! `agent-learning train`: a training run through the coordinator, either a running server's
//! (`--server`) or an all-in-one server started in this process on the data dir, with progress
//! from WatchRun and the run summary at the end.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_learning_api::{CoordinatorApi, CoordinatorClient, RunEvent, TrainingRequest};
use agent_learning_config::Settings;
use agent_learning_domain::RunState;
use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use crate::all::serve_all;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Expert demonstrations, one JSON episode per line.
    #[arg(long)]
    pub demos: PathBuf,
    /// driving, support, devops, code-review, or grpc://HOST:PORT.
    #[arg(long)]
    pub env: String,
    /// Playbook namespace; else the environment's name (a grpc:// one's from ResetResponse.env).
    #[arg(long)]
    pub namespace: Option<String>,
    /// A running coordinator (HOST:PORT or http://HOST:PORT); else an all-in-one server runs
    /// in this process on the data dir.
    #[arg(long)]
    pub server: Option<String>,
    /// Write the run summary here as JSON.
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// Training configuration overrides as JSON, e.g. '{"branch_points": 2}'.
    #[arg(long, default_value = "")]
    pub config_json: String,
}

fn endpoint(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

pub(crate) async fn wait_for_coordinator(url: &str) -> anyhow::Result<()> {
    crate::health::wait_serving(
        url,
        agent_learning_proto::service_names::COORDINATOR,
        Duration::from_secs(120),
    )
    .await
}

pub async fn run(settings: &Settings, args: &TrainArgs) -> anyhow::Result<()> {
    // Check the file here first, so a bad line is reported before anything starts.
    let demos = agent_learning_envs::read_demos(&args.demos)?;
    let text = std::fs::read_to_string(&args.demos)
        .with_context(|| format!("{}", args.demos.display()))?;
    let namespace = namespace_for(&args.env, args.namespace.as_deref(), &demos).await?;

    let server = Server::start(settings, args.server.as_deref()).await?;
    let result = drive(&server.url, &namespace, &args.env, &text, demos.len(), args).await;
    server.stop(result).await
}

/// The namespace a command works on: `--namespace`, else a built-in environment's name, else
/// the name a `grpc://` environment reports (`ResetResponse.env`). A `grpc://` environment's
/// name is checked against the demos' `env` either way: demos of another task are refused,
/// naming their line.
pub async fn namespace_for(
    env: &str,
    explicit: Option<&str>,
    demos: &[agent_learning_envs::Demo],
) -> anyhow::Result<String> {
    let reported = match env.strip_prefix("grpc://") {
        Some(addr) => {
            let (env, addr) = (env.to_owned(), addr.to_owned());
            Some(tokio::task::spawn_blocking(move || reported_name(&env, &addr)).await??)
        }
        None => None,
    };
    if let Some(name) = reported.as_deref().filter(|n| !n.is_empty())
        && let Some((i, d)) = demos
            .iter()
            .enumerate()
            .find(|(_, d)| d.env != name && d.env != env)
    {
        bail!(
            "the demos are not of {env}: line {} has env {:?}, and {env} reports {name:?} (ResetResponse.env)",
            i + 1,
            d.env
        );
    }
    let ns = match (explicit, reported) {
        (Some(ns), _) => ns.to_owned(),
        (None, None) => env.to_owned(),
        (None, Some(name)) if !name.is_empty() => name,
        (None, Some(_)) => bail!("{env} reports no name in ResetResponse.env: give --namespace"),
    };
    agent_learning_domain::validate_namespace("--namespace", &ns)?;
    Ok(ns)
}

/// What a remote environment calls itself: one episode is started to ask, and closed.
fn reported_name(env: &str, addr: &str) -> anyhow::Result<String> {
    use agent_learning_envs::Environment as _;
    let mut remote = agent_learning_api::RemoteEnvironment::connect(&format!("http://{addr}"))
        .with_context(|| env.to_owned())?;
    remote
        .reset(0)
        .with_context(|| format!("{env}: Reset, to read the environment's name"))?;
    Ok(remote.reported_name().trim().to_owned())
}

/// The server a command talks to: a running one (`--server`), or an all-in-one server started
/// in this process on the data dir, stopped by [`Server::stop`].
pub struct Server {
    pub url: String,
    stop: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    pub async fn start(settings: &Settings, server: Option<&str>) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        if let Some(addr) = server {
            return Ok(Self {
                url: endpoint(addr),
                stop,
                handle: None,
            });
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!(
            "{}://{}",
            agent_learning_runtime::tls::own_scheme(settings),
            listener.local_addr()?
        );
        let s = settings.clone();
        let token = stop.clone();
        let mut handle = tokio::spawn(async move {
            serve_all(&s, listener, async move { token.cancelled().await }, None).await
        });
        // The server answers NOT_SERVING while it loads the model; a server that fails to
        // start ends its task with the reason.
        tokio::select! {
            ready = wait_for_coordinator(&url) => ready?,
            ended = &mut handle => {
                ended??;
                anyhow::bail!("the in-process server stopped while starting");
            }
        }
        Ok(Self {
            url,
            stop,
            handle: Some(handle),
        })
    }

    /// Stops an in-process server; its error wins over a successful `result`.
    pub async fn stop<T>(self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        self.stop.cancel();
        if let Some(h) = self.handle {
            match h.await {
                Ok(Err(e)) if result.is_ok() => return Err(e),
                _ => {}
            }
        }
        result
    }
}

/// Starts a run on the coordinator at `url`, shows its progress and prints its summary.
pub async fn drive(
    url: &str,
    namespace: &str,
    env: &str,
    demos_jsonl: &str,
    demos: usize,
    args: &TrainArgs,
) -> anyhow::Result<()> {
    wait_for_coordinator(url).await?;
    let channel = agent_learning_api::endpoint(url)?
        .connect()
        .await
        .with_context(|| format!("coordinator at {url}"))?;
    let coordinator = CoordinatorClient::with_max_message_bytes(channel, 64 << 20);
    let run = coordinator
        .start_training(TrainingRequest {
            namespace: namespace.to_owned(),
            demos_jsonl: demos_jsonl.to_owned(),
            env: env.to_owned(),
            config_json: args.config_json.clone(),
        })
        .await?;
    eprintln!(
        "run {} started: {demos} demos, env {env}, namespace {namespace}",
        run.id
    );
    let summary = follow(&coordinator, &run.id, "run").await?;
    print_summary(&summary);
    if let Some(path) = &args.summary {
        write_summary(path, &summary)?;
    }
    Ok(())
}

/// Shows a run's progress until it ends; its summary when it succeeded, else why not.
pub(crate) async fn follow(
    coordinator: &CoordinatorClient,
    run_id: &str,
    what: &str,
) -> anyhow::Result<serde_json::Value> {
    let mut events = coordinator.watch_run(run_id).await?;
    let mut bars = Bars::new();
    while let Some(e) = events.next().await {
        let e = e?;
        bars.show(&e);
        if e.state.terminal() {
            break;
        }
    }
    bars.finish();
    let run = coordinator.get_run(run_id).await?;
    match run.state {
        RunState::Succeeded => {}
        RunState::Cancelled => bail!("{what} {} was cancelled", run.id),
        _ => bail!("{what} {} failed: {}", run.id, run.error),
    }
    serde_json::from_str(&run.summary_json).with_context(|| format!("{what} summary"))
}

fn write_summary(path: &Path, summary: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(summary)? + "\n")
        .with_context(|| format!("--summary {}", path.display()))
}

/// One progress bar per stage on a terminal; a line per change otherwise.
pub(crate) struct Bars {
    tty: bool,
    stage: String,
    last_line: Instant,
}

impl Bars {
    pub(crate) fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            stage: String::new(),
            last_line: Instant::now() - Duration::from_secs(60),
        }
    }

    pub(crate) fn show(&mut self, e: &RunEvent) {
        let Some(stage) = e.stage.map(|s| s.as_str()) else {
            return;
        };
        let mut err = std::io::stderr();
        if stage != self.stage {
            if self.tty && !self.stage.is_empty() {
                let _ = writeln!(err);
            }
            self.stage = stage.to_owned();
        }
        let width = 30usize;
        let filled = if e.total > 0 {
            ((e.done.min(e.total) as f64 / e.total as f64) * width as f64) as usize
        } else {
            0
        };
        let bar = format!("{}{}", "#".repeat(filled), "-".repeat(width - filled));
        let line = format!(
            "{:<8} [{bar}] {:>5}/{:<5} {}",
            stage, e.done, e.total, e.message
        );
        if self.tty {
            let _ = write!(err, "\r{line:<100}");
            let _ = err.flush();
        } else if !e.message.is_empty() || self.last_line.elapsed() > Duration::from_secs(2) {
            let _ = writeln!(err, "{}", line.trim_end());
            self.last_line = Instant::now();
        }
    }

    pub(crate) fn finish(&self) {
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }
}

fn print_summary(s: &serde_json::Value) {
    let num = |v: &serde_json::Value| match v {
        serde_json::Value::Number(n) => n
            .as_f64()
            .filter(|f| f.fract() != 0.0)
            .map(|f| format!("{f:.3}"))
            .unwrap_or_else(|| n.to_string()),
        serde_json::Value::String(t) => t.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let rows = [
        ("namespace", num(&s["namespace"])),
        ("demos", num(&s["demos"])),
        ("transitions", num(&s["transitions"])),
        (
            "rollouts",
            format!("{} {}", num(&s["rollouts"]), s["rollouts_by_source"]),
        ),
        ("branch points", num(&s["branch_points"])),
        ("reflections", num(&s["reflections"])),
        ("reflections valid", num(&s["reflections_valid"])),
        ("curated", num(&s["curated"])),
        ("bullets", num(&s["bullets"])),
        ("policy version", num(&s["policy_version"])),
        ("world model exact", num(&s["world_model"]["exact_match"])),
        (
            "world model similarity",
            num(&s["world_model"]["mean_similarity"]),
        ),
        ("tokens (prompt)", num(&s["tokens"]["prompt"])),
        ("tokens (completion)", num(&s["tokens"]["completion"])),
    ];
    println!("{:<24} value", "run summary");
    println!("{}", "-".repeat(48));
    for (k, v) in rows {
        println!("{k:<24} {v}");
    }
    if let Some(stages) = s["stages"].as_array() {
        println!("{}", "-".repeat(48));
        for st in stages {
            println!(
                "{:<24} {:>8.1}s  {}/{}",
                format!("stage {}", num(&st["stage"])),
                st["seconds"].as_f64().unwrap_or(0.0),
                num(&st["done"]),
                num(&st["total"])
            );
        }
    }
}
