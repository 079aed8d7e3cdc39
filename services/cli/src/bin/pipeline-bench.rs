//! Measures the framework's own cost per rollout: a full training run (fit, explore, reflect,
//! curate, compile) on the embedded backends with a model that answers instantly, so what is
//! left is gRPC, the queue, the record, the vector index and the real MiniLM embeddings.
//!
//! `pipeline-bench [DEMOS] [BRANCH_POINTS]` (defaults 50 and 1; 0 branch points = every step).

use std::time::Instant;

use agent_learning_cli::bench::{BenchServer, demo_text};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let demos: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(50);
    let points: u32 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1);
    let demo_text = demo_text("driving", demos, 42)?;
    let again = demo_text.clone();
    let server = BenchServer::start(&[]).await?;
    let config = if points == 0 {
        r#"{"every_step": true, "holdout": 8}"#.to_owned()
    } else {
        format!(r#"{{"branch_points": {points}, "holdout": 8}}"#)
    };
    let started = Instant::now();
    let s = server.train("bench", "driving", demo_text, &config).await?;
    let wall = started.elapsed();
    let rollouts = s["rollouts"].as_u64().unwrap_or(0).max(1);
    println!("pipeline-bench: {demos} driving demos, branch points {points}, zero-latency model");
    println!(
        "  transitions {}  rollouts {rollouts}  reflections {}  bullets {}",
        s["transitions"], s["reflections"], s["bullets"]
    );
    for st in s["stages"].as_array().into_iter().flatten() {
        println!(
            "  {:<8} {:>8.2} s",
            st["stage"].as_str().unwrap_or("?"),
            st["seconds"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "  total {:.2} s  overhead per rollout {:.2} ms",
        wall.as_secs_f64(),
        wall.as_secs_f64() * 1000.0 / rollouts as f64
    );
    // The same demos again in another namespace, after a restart: what the record's
    // embedding cache (embedding.record_cache) saves a repeated training.
    let server = server.restart().await?;
    let s = server
        .train("bench-again", "driving", again, &config)
        .await?;
    let fit = |s: &serde_json::Value| {
        s["stages"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|st| st["stage"] == "fit")
            .and_then(|st| st["seconds"].as_f64())
            .unwrap_or(f64::NAN)
    };
    println!(
        "  again after a restart, same demos, another namespace: fit {:.2} s",
        fit(&s)
    );
    server.stop().await
}
