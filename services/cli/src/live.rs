//! `agent-learning live`: a live-loop run through the coordinator (a running server's, or an
//! all-in-one server in this process): episodes acting through Decide while the namespace
//! learns from them, with progress from WatchRun and, at the end, the learning curve.

use std::path::PathBuf;

use agent_learning_api::{CoordinatorApi, CoordinatorClient, LiveLoopRequest};
use agent_learning_config::Settings;
use anyhow::Context as _;

use crate::train::{Server, wait_for_coordinator};

#[derive(clap::Args, Clone)]
pub struct LiveArgs {
    /// driving, support, devops, code-review, or grpc://HOST:PORT.
    #[arg(long)]
    pub env: String,
    /// The trained namespace; else the environment's name (a grpc:// one's from ResetResponse.env).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Episodes to run.
    #[arg(long, default_value_t = 20)]
    pub episodes: u32,
    /// Episodes played at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: u32,
    /// Steps after which an episode ends unfinished (a failure).
    #[arg(long, default_value_t = 200)]
    pub max_steps: u32,
    /// Reflect on every n-th episode.
    #[arg(long, default_value_t = 1)]
    pub reflect_every: u32,
    /// Curate the valid reflections in batches of this many (the last batch when every episode
    /// is reflected on).
    #[arg(long, default_value_t = 1)]
    pub curate_every: u32,
    /// Episode i plays seed S + i, skipping the demos' seeds.
    #[arg(long, default_value_t = 200_000)]
    pub first_seed: u64,
    /// Stop early once the last --stop-window episodes succeeded at least this often (0: never).
    #[arg(long, default_value_t = 0.0)]
    pub stop_success_rate: f64,
    #[arg(long, default_value_t = 20)]
    pub stop_window: u32,
    /// Past steps sent with each Decide.
    #[arg(long, default_value_t = 4)]
    pub history: u32,
    /// A running server (HOST:PORT or http(s)://HOST:PORT); else an all-in-one server runs in
    /// this process on the data dir.
    #[arg(long)]
    pub server: Option<String>,
    /// Where live.json goes (else <data dir>/live-<namespace>).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

impl LiveArgs {
    /// `--namespace`, else the environment's name (a `grpc://` one's as it reports it).
    pub async fn namespace(&self) -> anyhow::Result<String> {
        crate::train::namespace_for(&self.env, self.namespace.as_deref(), &[]).await
    }

    fn request(&self, namespace: &str) -> LiveLoopRequest {
        LiveLoopRequest {
            namespace: namespace.to_owned(),
            env: self.env.clone(),
            episodes: self.episodes,
            reflect_every: self.reflect_every,
            concurrency: self.concurrency,
            max_steps: self.max_steps,
            first_seed: self.first_seed,
            stop_success_rate: self.stop_success_rate,
            stop_window: self.stop_window,
            history: self.history,
            curate_every: self.curate_every,
        }
    }
}

pub async fn run(settings: &Settings, args: &LiveArgs) -> anyhow::Result<serde_json::Value> {
    let namespace = args.namespace().await?;
    let server = Server::start(settings, args.server.as_deref()).await?;
    let result = drive(&server.url, &args.request(&namespace)).await;
    let summary = server.stop(result).await?;
    let dir = args
        .output
        .clone()
        .unwrap_or_else(|| settings.data_dir.join(format!("live-{namespace}")));
    write(&dir, &summary)?;
    Ok(summary)
}

/// Writes live.json (the run summary with its learning curve) and learning-curve.png under
/// `dir`.
pub fn write(dir: &std::path::Path, summary: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    let path = dir.join("live.json");
    std::fs::write(&path, serde_json::to_string_pretty(summary)? + "\n")
        .with_context(|| path.display().to_string())?;
    let successes = curve_successes(summary);
    let curve = dir.join("learning-curve.png");
    crate::plot::learning_curve(
        &curve,
        &format!(
            "live loop on {} ({})",
            summary["env"].as_str().unwrap_or_default(),
            summary["namespace"].as_str().unwrap_or_default()
        ),
        &successes,
        5,
    )?;
    eprintln!("wrote {} and {}", path.display(), curve.display());
    Ok(())
}

/// Starts a live run on the coordinator at `url`, shows its progress, prints its summary and
/// returns it.
pub async fn drive(url: &str, req: &LiveLoopRequest) -> anyhow::Result<serde_json::Value> {
    wait_for_coordinator(url).await?;
    let channel = agent_learning_api::endpoint(url)?
        .connect()
        .await
        .with_context(|| format!("coordinator at {url}"))?;
    let coordinator = CoordinatorClient::new(channel);
    let run = coordinator.start_live_loop(req.clone()).await?;
    eprintln!(
        "live run {} started: {} episodes of {} on namespace {}",
        run.id, req.episodes, req.env, req.namespace
    );
    let summary = crate::train::follow(&coordinator, &run.id, "live run").await?;
    print_summary(&summary);
    Ok(summary)
}

/// Each episode's success, in the order the episodes finished.
fn curve_successes(summary: &serde_json::Value) -> Vec<bool> {
    summary["curve"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| p["success"].as_bool().unwrap_or(false))
                .collect()
        })
        .unwrap_or_default()
}

/// Success in consecutive blocks of episodes, in the order they finished.
pub fn curve_blocks(summary: &serde_json::Value, blocks: usize) -> Vec<(usize, usize, usize)> {
    let points = curve_successes(summary);
    if points.is_empty() {
        return Vec::new();
    }
    let size = points.len().div_ceil(blocks.max(1));
    points
        .chunks(size)
        .enumerate()
        .map(|(i, c)| (i * size + 1, c.len(), c.iter().filter(|s| **s).count()))
        .collect()
}

fn print_summary(s: &serde_json::Value) {
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or_default();
    println!(
        "live run {}: {} episodes in {:.0} s ({:.1}/min){}",
        s["run_id"].as_str().unwrap_or_default(),
        s["episodes"],
        f(&s["seconds"]),
        f(&s["episodes_per_minute"]),
        if s["stopped_early"].as_bool() == Some(true) {
            ", stopped early"
        } else {
            ""
        }
    );
    println!(
        "success {}/{} ({:.2}, Wilson 95% {:.2}-{:.2}), mean steps {:.1}, {} cut by the step limit",
        s["successes"],
        s["episodes"],
        f(&s["success_rate"]),
        f(&s["wilson95"][0]),
        f(&s["wilson95"][1]),
        f(&s["mean_steps"]),
        s["truncated"]
    );
    println!(
        "learning: {} episodes reflected on, {} reflections ({} valid), {} curated; playbook {} -> {} bullets, {} merges",
        s["reflected"],
        s["reflections"],
        s["reflections_valid"],
        s["curated"],
        s["bullets_before"],
        s["bullets"],
        s["merges"]
    );
    let blocks = curve_blocks(s, 5);
    if !blocks.is_empty() {
        println!("learning curve (episodes in the order they finished):");
        for (first, n, ok) in blocks {
            println!(
                "  episodes {first:>4}-{:<4} {ok}/{n} {}",
                first + n - 1,
                "#".repeat(ok)
            );
        }
    }
}
