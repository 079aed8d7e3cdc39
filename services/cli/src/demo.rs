//! The main job on the embedded default: start every service in-process on a free port, then
//! drive it through its gRPC clients as any backend would. First the learning loop: expert
//! driving demos -> world-model fit -> exploration -> reflections by the local model ->
//! curated playbook -> compiled policy, then Decide on states of an episode the demos never
//! saw. Then the playbook's own life: paraphrased insights merge, new knowledge adds, votes
//! move bullets through their stages, and the context a policy receives fits its budget.

use agent_learning_api::{
    CuratorApi as _, DecideRequest, FeedbackItem, PolicyApi as _, PolicyClient,
};
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

/// Demos trained on: enough to show every stage, few enough for a few minutes on two cores.
const DEMOS: usize = 8;
/// A seed none of the demos used.
const UNSEEN_SEED: u64 = 1_000_003;

pub async fn run(settings: &Settings) -> anyhow::Result<()> {
    crate::fetch_models(settings, &agent_learning_embed::ALL_MODELS)?;
    let server = agent_learning_cli::train::Server::start(settings, None).await?;
    println!(
        "serving the embedded services on {} (data dir {})",
        server.url,
        settings.data_dir.display()
    );
    let url = server.url.clone();
    let shown = async {
        learn(settings, &url).await?;
        curate(&url).await
    }
    .await;
    server.stop(shown).await?;
    Ok(())
}

/// The learning loop on driving, then decisions on an episode the demos never saw.
async fn learn(settings: &Settings, url: &str) -> anyhow::Result<()> {
    println!("\nA. learn driving from {DEMOS} expert demonstrations, with no reward");
    let demos = agent_learning_envs::generate_demos("driving", DEMOS, 42)?;
    let mut jsonl = Vec::new();
    agent_learning_envs::write_demos(&mut jsonl, &demos)?;
    let jsonl = String::from_utf8(jsonl)?;
    let path = settings.data_dir.join("demo-driving.jsonl");
    std::fs::write(&path, &jsonl).with_context(|| path.display().to_string())?;
    let args = crate::train::TrainArgs {
        demos: path,
        env: "driving".into(),
        namespace: Some("driving".into()),
        server: Some(url.to_owned()),
        summary: Some(settings.data_dir.join("demo-summary.json")),
        config_json: r#"{"holdout": 2}"#.into(),
    };
    crate::train::drive(url, "driving", "driving", &jsonl, DEMOS, &args).await?;

    println!("\nB. Decide on an episode none of the demos saw (seed {UNSEEN_SEED})");
    let (mut env, mut expert) = agent_learning_envs::built_in("driving")?;
    let policy = PolicyClient::new(agent_learning_api::endpoint(url)?.connect().await?);
    let mut state = env.reset(UNSEEN_SEED)?;
    let mut agree = 0;
    let mut asked = 0;
    for step in 0..60 {
        let expert_action = expert.act(env.as_ref());
        if step % 15 == 5 {
            let d = policy
                .decide(DecideRequest {
                    history: Vec::new(),
                    namespace: "driving".into(),
                    state: state.clone(),
                    valid_actions: env.actions().unwrap_or_default(),
                    policy_version: None,
                })
                .await?;
            asked += 1;
            agree += usize::from(d.action == expert_action);
            let reasoning: String = d.reasoning.chars().take(120).collect();
            println!(
                "   step {step:>2}: policy v{} chose {:<17} expert {:<17} ({} bullets, {} exemplars){}\n            {}",
                d.policy_version,
                d.action,
                expert_action,
                d.bullet_ids.len(),
                d.exemplar_ids.len(),
                if d.fallback { " fallback" } else { "" },
                reasoning.trim()
            );
        }
        let s = env.step(&expert_action)?;
        state = s.state;
        if s.done {
            break;
        }
    }
    println!("   the policy agreed with the expert on {agree} of {asked} states");
    Ok(())
}

/// The playbook's own life, on a namespace of its own.
async fn curate(url: &str) -> anyhow::Result<()> {
    let curator = crate::playbook::connect(url).await?;

    println!("\nC. curate {} insights", INSIGHTS.len());
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
        "\nD. feedback: the following-distance bullet helped 5 times, the hard-braking one misled twice"
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
        ("E1", "any stage", Stage::Shadow),
        ("E2", "production only", Stage::Production),
    ] {
        let ctx = curator
            .render_context(NAMESPACE, STATE, 120, min_stage)
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
        "\nF. playbook health: {} bullets (shadow {}, staging {}, production {}, quarantined {}); \
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
