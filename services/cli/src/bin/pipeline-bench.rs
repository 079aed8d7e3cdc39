//! Measures the framework's own cost per rollout: a full training run (fit, explore, reflect,
//! curate, compile) on the embedded backends with a model that answers instantly, so what is
//! left is gRPC, the queue, the record, the vector index and the real MiniLM embeddings.
//!
//! `pipeline-bench [DEMOS] [BRANCH_POINTS]` (defaults 50 and 1; 0 branch points = every step).

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_learning_cli::all::serve_all_with;
use agent_learning_config::{Settings, Sources};
use agent_learning_llm::testsuite::InstantModel;
use agent_learning_proto::v1 as pb;
use agent_learning_proto::v1::coordinator_client::CoordinatorClient;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let demos: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(50);
    let points: u32 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1);
    let dir = tempfile::tempdir()?;
    let settings = Settings::load(&Sources {
        file: None,
        overrides: vec![
            ("data_dir".into(), dir.path().display().to_string()),
            ("telemetry.log_filter".into(), "error".into()),
        ],
    })?;
    let demo_text = {
        let d = agent_learning_envs::generate_demos("driving", demos, 42)?;
        let mut buf = Vec::new();
        agent_learning_envs::write_demos(&mut buf, &d)?;
        String::from_utf8(buf)?
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let token = stop.clone();
    let s = settings.clone();
    let server = tokio::spawn(async move {
        serve_all_with(
            &s,
            listener,
            token.cancelled_owned(),
            None,
            Arc::new(InstantModel),
        )
        .await
    });
    let mut c = loop {
        match CoordinatorClient::connect(url.clone()).await {
            Ok(c) => {
                break c
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let config = if points == 0 {
        r#"{"every_step": true, "holdout": 8}"#.to_owned()
    } else {
        format!(r#"{{"branch_points": {points}, "holdout": 8}}"#)
    };
    let started = Instant::now();
    let run = c
        .start_training(pb::StartTrainingRequest {
            namespace: "bench".into(),
            demos_jsonl: demo_text,
            env: "driving".into(),
            config_json: config,
        })
        .await?
        .into_inner();
    let run = loop {
        let r = c
            .get_run(pb::GetRunRequest {
                run_id: run.id.clone(),
            })
            .await?
            .into_inner();
        if r.state != pb::RunState::Running as i32 && r.state != pb::RunState::Pending as i32 {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let wall = started.elapsed();
    anyhow::ensure!(
        run.state == pb::RunState::Succeeded as i32,
        "run failed: {}",
        run.error
    );
    let s: serde_json::Value = serde_json::from_str(&run.summary_json)?;
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
    stop.cancel();
    server.await??;
    Ok(())
}
