//! The main job on the embedded default: start every service in-process on a free port, then
//! drive it through its gRPC clients as any backend would.
//!
//! A. expert support demos -> world-model fit -> exploration -> reflections by the local model
//!    -> curated playbook -> compiled policy;
//! B. the live loop: episodes on seeds no demo used, acting through Decide while the namespace
//!    learns from them (reflections, curation, votes from the outcome);
//! C. the evaluation: the trained policy against the expert, random, nearest-demo imitation and
//!    the bare model, on unseen seeds, with Wilson intervals;
//! D-G. the playbook's own life: paraphrased insights merge, new knowledge adds, votes move
//!    bullets through their stages, and the context a policy receives fits its budget.
//!
//! Everything it measured goes to `<data dir>/demo/report.md` (and JSON beside it).

use agent_learning_api::{CuratorApi as _, FeedbackItem};
use agent_learning_config::Settings;
use agent_learning_domain::{Insight, Stage};
use anyhow::Context as _;

const NAMESPACE: &str = "driving-demo";

/// Insights as reflections on driving demonstrations state them; several restate the same
/// lesson in other words.
const INSIGHTS: &[(&str, &str)] = &[
    (
        "strategy",
        "Keep a safe following distance of at least two seconds behind the car ahead.",
    ),
    (
        "strategy",
        "Stay at least two seconds behind the vehicle in front of you.",
    ),
    (
        "strategy",
        "Move to the right lane well before the exit instead of at the last moment.",
    ),
    (
        "strategy",
        "Change into the exit lane early rather than waiting until the exit is close.",
    ),
    (
        "strategy",
        "Overtake a slow car only when the gap in the left lane is large.",
    ),
    (
        "mistakes",
        "Braking hard on a free road wastes time and surprises the car behind.",
    ),
    (
        "mistakes",
        "Changing lanes without checking the gap behind in the target lane causes collisions.",
    ),
    (
        "mistakes",
        "Switching lanes without looking at the space behind you in the other lane leads to crashes.",
    ),
    (
        "mistakes",
        "Accelerating while the gap ahead is shrinking leads to a rear-end collision.",
    ),
    ("facts", "The exit is on the right side of the highway."),
    (
        "facts",
        "Traffic in the left lane is usually faster than in the right lane.",
    ),
    (
        "facts",
        "The highway exit is located on the right-hand side.",
    ),
];

const STATE: &str = "ego lane 0 of 3, speed 28 m/s; car ahead in lane 0 at 18 m doing 22 m/s; \
                     lane 1 free ahead, car behind at 25 m; exit in 600 m on the right";

/// The task the demo learns: short episodes, so that the local model's share stays minutes.
const ENV: &str = "support";
/// Demos trained on.
const DEMOS: usize = 10;
/// Episodes of the live loop.
const LIVE_EPISODES: u32 = 16;
/// Episodes per configuration in the evaluation.
const EVAL_EPISODES: usize = 8;
/// Steps after which an episode counts as failed.
const MAX_STEPS: u32 = 12;

pub async fn run(settings: &Settings) -> anyhow::Result<()> {
    crate::fetch_models(settings, &agent_learning_embed::ALL_MODELS)?;
    let started = std::time::Instant::now();
    let server = agent_learning_cli::train::Server::start(settings, None).await?;
    println!(
        "serving the embedded services on {} (data dir {})",
        server.url,
        settings.data_dir.display()
    );
    let url = server.url.clone();
    let shown = async {
        let report = learn(settings, &url).await?;
        curate(&url).await?;
        Ok::<_, anyhow::Error>(report)
    }
    .await;
    let report = server.stop(shown).await?;
    let dir = settings.data_dir.join("demo");
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    let report = format!(
        "{report}\nThe whole demo took {:.0} s.\n",
        started.elapsed().as_secs_f64()
    );
    std::fs::write(dir.join("report.md"), &report)?;
    println!(
        "\nreport: {} ({:.0} s in all)",
        dir.join("report.md").display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Train, run the live loop, evaluate; returns the report's Markdown.
async fn learn(settings: &Settings, url: &str) -> anyhow::Result<String> {
    println!("\nA. learn {ENV} from {DEMOS} expert demonstrations, with no reward");
    let demos = agent_learning_envs::generate_demos(ENV, DEMOS, 42)?;
    let mut jsonl = Vec::new();
    agent_learning_envs::write_demos(&mut jsonl, &demos)?;
    let jsonl = String::from_utf8(jsonl)?;
    let dir = settings.data_dir.join("demo");
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    let demos_path = dir.join(format!("{ENV}-demos.jsonl"));
    std::fs::write(&demos_path, &jsonl).with_context(|| demos_path.display().to_string())?;
    let summary_path = dir.join("train.json");
    let args = crate::train::TrainArgs {
        demos: demos_path.clone(),
        env: ENV.into(),
        namespace: Some(ENV.into()),
        server: Some(url.to_owned()),
        summary: Some(summary_path.clone()),
        config_json: r#"{"holdout": 2}"#.into(),
    };
    crate::train::drive(url, ENV, ENV, &jsonl, DEMOS, &args).await?;
    let train: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary_path)?)?;

    println!(
        "\nB. the live loop: {LIVE_EPISODES} episodes on seeds no demo used, learning as they finish"
    );
    let live = agent_learning_cli::live::drive(
        url,
        &agent_learning_api::LiveLoopRequest {
            namespace: ENV.into(),
            env: ENV.into(),
            episodes: LIVE_EPISODES,
            reflect_every: 4,
            concurrency: 2,
            max_steps: MAX_STEPS,
            ..Default::default()
        },
    )
    .await?;
    agent_learning_cli::live::write(&dir, &live)?;

    println!(
        "\nC. evaluate the policy against its baselines: {EVAL_EPISODES} episodes each on other unseen seeds"
    );
    let eval = crate::eval::run(
        settings,
        &crate::eval::EvalArgs {
            env: ENV.into(),
            namespace: Some(ENV.into()),
            play: crate::eval::Episodes {
                episodes: EVAL_EPISODES,
                seeds: "100000..".into(),
                max_steps: MAX_STEPS as usize,
                history: 4,
            },
            demos: Some(demos_path),
            server: Some(url.to_owned()),
            configs: vec![
                crate::eval::Config::Expert,
                crate::eval::Config::Random,
                crate::eval::Config::NearestDemo,
                crate::eval::Config::LlmBare,
                crate::eval::Config::Full,
            ],
            output: Some(dir.clone()),
            avoid_seeds: Default::default(),
        },
    )
    .await?;

    let mut md = format!(
        "# agent-learning demo\n\n## Training on {ENV}\n\n{} demos, {} transitions; {} rollouts; {} reflections ({} valid), {} curated; {} bullets; policy version {}.\n",
        train["demos"],
        train["transitions"],
        train["rollouts"],
        train["reflections"],
        train["reflections_valid"],
        train["curated"],
        train["bullets"],
        train["policy_version"].as_str().unwrap_or_default(),
    );
    md.push_str(&format!(
        "\n## Live loop\n\n{} episodes in {:.0} s, success {}/{} (Wilson 95% {:.2}-{:.2}); {} reflections ({} valid), {} curated; playbook {} -> {} bullets, {} merges.\n\n| episodes (in finishing order) | successes |\n|---|---|\n",
        live["episodes"],
        live["seconds"].as_f64().unwrap_or_default(),
        live["successes"],
        live["episodes"],
        live["wilson95"][0].as_f64().unwrap_or_default(),
        live["wilson95"][1].as_f64().unwrap_or_default(),
        live["reflections"],
        live["reflections_valid"],
        live["curated"],
        live["bullets_before"],
        live["bullets"],
        live["merges"],
    ));
    for (first, n, ok) in agent_learning_cli::live::curve_blocks(&live, 4) {
        md.push_str(&format!("| {first}-{} | {ok}/{n} |\n", first + n - 1));
    }
    md.push_str(&format!(
        "\n## Evaluation\n\n{}\n",
        eval["markdown"].as_str().unwrap_or_default()
    ));
    Ok(md)
}

/// The playbook's own life, on a namespace of its own.
async fn curate(url: &str) -> anyhow::Result<()> {
    let curator = crate::playbook::connect(url).await?;

    println!(
        "\nD. the playbook's own life: curate {} insights",
        INSIGHTS.len()
    );
    let insights: Vec<Insight> = INSIGHTS
        .iter()
        .enumerate()
        .map(|(i, (section, content))| Insight {
            id: format!("demo-insight-{i}"),
            section: (*section).to_owned(),
            content: (*content).to_owned(),
            source: "demo".to_owned(),
        })
        .collect();
    let ops = curator.curate(NAMESPACE, insights.clone()).await?;
    for (op, insight) in ops.iter().zip(&insights) {
        let kind = crate::playbook::kind_name(op.kind);
        let replay = if op.replayed {
            " (already applied)"
        } else {
            ""
        };
        println!(
            "   {:<16} sim {:.2}  {}{}",
            kind.trim_start_matches("DELTA_KIND_"),
            op.similarity,
            insight.content,
            replay
        );
    }

    println!(
        "\nE. feedback: the following-distance bullet helped 5 times, the hard-braking one misled twice"
    );
    let bullets = crate::playbook::all_bullets(&curator, NAMESPACE, None, None).await?;
    let helpful = bullets
        .iter()
        .find(|b| b.content.contains("following distance"));
    let harmful = bullets
        .iter()
        .find(|b| b.content.starts_with("Braking hard"));
    // One vote per decision: five decisions the first bullet helped, one the second helped
    // and two it misled (which quarantines it: harmful >= helpful).
    let mut votes = Vec::new();
    if let Some(b) = helpful {
        votes.extend(std::iter::repeat_n((b, true), 5));
    }
    if let Some(b) = harmful {
        votes.push((b, true));
        votes.extend(std::iter::repeat_n((b, false), 2));
    }
    let mut latest: Vec<agent_learning_domain::Bullet> = Vec::new();
    for (i, (b, good)) in votes.into_iter().enumerate() {
        let updated = curator
            .record_feedback(
                NAMESPACE,
                &format!("demo-decision-{}", i + 1),
                vec![FeedbackItem {
                    bullet_id: b.id.to_string(),
                    helpful: u32::from(good),
                    harmful: u32::from(!good),
                }],
            )
            .await?;
        for u in updated.bullets {
            match latest.iter_mut().find(|x| x.id == u.id) {
                Some(x) => *x = u,
                None => latest.push(u),
            }
        }
    }
    for b in &latest {
        println!(
            "   {:<17} +{} -{}  {}",
            b.stage.as_str().to_uppercase(),
            b.helpful,
            b.harmful,
            b.content
        );
    }

    for (step, label, min_stage) in [
        ("F1", "any stage", Stage::Shadow),
        ("F2", "production only", Stage::Production),
    ] {
        let ctx = curator
            .render_context(NAMESPACE, STATE, None, 120, min_stage)
            .await?;
        println!(
            "\n{step}. context for the state, {label}, budget 120 tokens: {} bullets, {} tokens\n{}",
            ctx.bullet_ids.len(),
            ctx.tokens,
            ctx.text.trim_end()
        );
    }

    let h = curator.health(NAMESPACE).await?;
    println!(
        "\nG. playbook health: {} bullets (shadow {}, staging {}, production {}, quarantined {}); \
         {} insights applied, merge rate {:.0}%",
        h.total,
        h.shadow,
        h.staging,
        h.production,
        h.quarantined,
        h.insights_applied,
        h.merge_rate * 100.0
    );
    println!("   run again: every insight and vote is recognised as already applied.");
    Ok(())
}
