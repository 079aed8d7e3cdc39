//! Steps per second of each built-in environment, in process and over gRPC.
//!
//! `cargo run --release -p agent-learning-environment --bin env-bench`

use std::time::{Duration, Instant};

use agent_learning_environment::{RemoteEnvironment, serve_environment};
use agent_learning_envs::{BUILT_IN, Environment, built_in, factory};
use agent_learning_server::ServerLimits;

/// Runs expert-driven episodes for about `budget`; returns steps per second.
fn local_rate(name: &str, budget: Duration) -> anyhow::Result<f64> {
    let (mut env, mut expert) = built_in(name)?;
    let started = Instant::now();
    let (mut steps, mut seed) = (0u64, 0u64);
    while started.elapsed() < budget {
        env.reset(seed)?;
        seed += 1;
        loop {
            let a = expert.act(env.as_ref());
            steps += 1;
            if env.step(&a)?.done {
                break;
            }
        }
    }
    Ok(steps as f64 / started.elapsed().as_secs_f64())
}

/// Replays the first valid action through a remote environment; returns steps per second.
fn remote_rate(env: &mut dyn Environment, budget: Duration) -> anyhow::Result<f64> {
    let started = Instant::now();
    let (mut steps, mut seed) = (0u64, 0u64);
    while started.elapsed() < budget {
        env.reset(seed)?;
        seed += 1;
        for _ in 0..50 {
            steps += 1;
            if env.step("keep_lane")?.done {
                break;
            }
        }
    }
    Ok(steps as f64 / started.elapsed().as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let budget = Duration::from_secs(2);
    for name in BUILT_IN {
        factory(name)?;
        println!(
            "{name:<12} in process: {:>10.0} steps/s (expert acting)",
            local_rate(name, budget)?
        );
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Runtime::new()?;
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            tx.send(listener.local_addr()?)?;
            let limits = ServerLimits {
                max_message_bytes: 4 << 20,
                concurrency_limit_per_connection: 256,
                max_in_flight: 0,
                request_timeout: Duration::from_secs(30),
                shutdown_grace: Duration::from_secs(1),
            };
            serve_environment(
                "driving",
                agent_learning_server::GrpcServer::new(limits)?,
                listener,
                std::future::pending(),
            )
            .await?;
            Ok(())
        })
    });
    let addr = rx.recv()?;
    let mut remote = RemoteEnvironment::connect(&format!("http://{addr}"))?;
    println!(
        "{:<12} over gRPC:   {:>10.0} steps/s (one client, loopback)",
        "driving",
        remote_rate(&mut remote, budget)?
    );
    Ok(())
}
