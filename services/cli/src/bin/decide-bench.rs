//! Load on `Policy.Decide`: an all-in-one server on the embedded backends with a model that
//! answers instantly, a namespace trained on driving demos, then Decide calls from many
//! clients at once, each level in turn. What is measured is the framework's own cost per
//! decision: gRPC, the embedding of the state (real MiniLM), the exemplar search, the
//! playbook's RenderContext, the prompt and the decision's record. A first round calls once
//! per state, one call at a time (each state embedded on its first sight); the rounds at each
//! level then see the same states again, with their vectors cached. Latencies are split by
//! path: "settled" (a demonstrated state this close decides: no RenderContext, no model) and
//! "asked" (RenderContext, the prompt and the model).
//!
//! `decide-bench [--requests N] [--levels 1,64,1024] [--states N] [--connections N]`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent_learning_cli::bench::{BenchServer, demo_text};
use agent_learning_proto::v1 as pb;
use agent_learning_proto::v1::policy_client::PolicyClient;
use clap::Parser;
use tonic::transport::Channel;

#[derive(Parser)]
struct Args {
    /// Decide calls per concurrency level.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Calls in flight at once, one level after the other.
    #[arg(long, value_delimiter = ',', default_value = "1,64,1024")]
    levels: Vec<usize>,
    /// Distinct states the calls cycle through (expert episodes on seeds no demo used).
    #[arg(long, default_value_t = 400)]
    states: usize,
    /// HTTP/2 connections the clients share (backends calling the policy).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Driving demos the namespace is trained on.
    #[arg(long, default_value_t = 20)]
    demos: usize,
}

/// States with their valid actions, from expert episodes on seeds the demos did not use.
fn states(n: usize) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let (mut env, mut expert) = agent_learning_envs::built_in("driving")?;
    let mut out = Vec::with_capacity(n);
    let mut seed = 900_000;
    while out.len() < n {
        let mut state = env.reset(seed)?;
        seed += 1;
        for _ in 0..200 {
            let actions = env.actions().unwrap_or_default();
            out.push((state.clone(), actions));
            if out.len() == n {
                break;
            }
            let step = env.step(&expert.act(env.as_ref()))?;
            if step.done {
                break;
            }
            state = step.state;
        }
    }
    Ok(out)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

/// Each answered call's latency and whether the demonstrations settled it; the errors; the
/// wall time of the round.
type Round = (Vec<(Duration, bool)>, usize, f64);

/// `requests` Decide calls, `level` in flight at once, cycling through `states`.
async fn round(
    channels: &[Channel],
    states: &Arc<Vec<(String, Vec<String>)>>,
    level: usize,
    requests: usize,
) -> anyhow::Result<Round> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..level.max(1) {
        let mut policy = PolicyClient::new(channels[w % channels.len()].clone());
        let next = next.clone();
        let states = states.clone();
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let (state, actions) = &states[i % states.len()];
                let t = Instant::now();
                let r = policy
                    .decide(pb::DecideRequest {
                        namespace: "bench".into(),
                        state: state.clone(),
                        valid_actions: actions.clone(),
                        ..Default::default()
                    })
                    .await;
                let took = t.elapsed();
                match r {
                    Ok(d) => lat.push((
                        took,
                        d.into_inner()
                            .reasoning
                            .starts_with("[policy] the same situation"),
                    )),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut answered = Vec::with_capacity(requests);
    let mut errors = 0;
    for w in workers {
        let (l, e) = w.await?;
        answered.extend(l);
        errors += e;
    }
    Ok((answered, errors, started.elapsed().as_secs_f64()))
}

fn row(label: &str, (answered, errors, wall): &Round) {
    let sorted = |settled: Option<bool>| {
        let mut l: Vec<Duration> = answered
            .iter()
            .filter(|(_, s)| settled.is_none_or(|want| *s == want))
            .map(|(d, _)| *d)
            .collect();
        l.sort();
        l
    };
    let (all, settled, asked) = (sorted(None), sorted(Some(true)), sorted(Some(false)));
    let calls = all.len() + errors;
    println!(
        "| {label} | {calls} | {errors} | {:.0} | {:.1} | {:.1} | {:.1} | {} | {:.1} / {:.1} | {} | {:.1} / {:.1} |",
        calls as f64 / wall,
        pct(&all, 0.50),
        pct(&all, 0.99),
        pct(&all, 1.0),
        settled.len(),
        pct(&settled, 0.50),
        pct(&settled, 0.99),
        asked.len(),
        pct(&asked, 0.50),
        pct(&asked, 0.99),
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let demo_text = demo_text("driving", args.demos, 42)?;
    let server = BenchServer::start(&[]).await?;
    let url = server.url.clone();
    let s = server
        .train("bench", "driving", demo_text, r#"{"holdout": 0}"#)
        .await?;
    let states = Arc::new(states(args.states)?);
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(Channel::from_shared(url.clone())?.connect().await?);
    }
    println!(
        "decide-bench: driving, {} demos, {} bullets, zero-latency model, {} distinct states, {} connections, {} cores",
        args.demos,
        s["bullets"],
        states.len(),
        channels.len(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| concurrency | calls | errors | calls/s | p50 ms | p99 ms | max ms | settled | p50 / p99 ms | asked | p50 / p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    // Each state once, one call at a time: the state is embedded (MiniLM) on its first sight.
    // The rounds after it see the same states again, their vectors cached.
    let first = round(&channels, &states, 1, states.len()).await?;
    row("1, each state's first sight", &first);
    for &level in &args.levels {
        row(
            &level.to_string(),
            &round(&channels, &states, level, args.requests).await?,
        );
    }
    server.stop().await
}
