//! The main job on the embedded default: start every implemented service in-process on a free
//! port, then drive it through its gRPC client as any backend would: curate a driving
//! playbook from insights (paraphrases merge, new knowledge adds), vote on bullets so they
//! earn their stages, and render the context a policy would receive for a state.

use std::time::Duration;

use agent_learning_config::Settings;
use agent_learning_proto::v1 as pb;
use anyhow::Context as _;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

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

pub async fn run(settings: &Settings) -> anyhow::Result<()> {
    // The demo curates with the embedder only; the chat model is not needed yet.
    crate::fetch_models(settings, &[agent_learning_embed::MINILM])?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serve_settings = settings.clone();
    let server = tokio::spawn(async move {
        agent_learning_curator::serve_curator(&serve_settings, listener, async {
            let _ = stopped.await;
        })
        .await
    });
    let url = format!("http://{addr}");
    println!(
        "serving the embedded services on {addr} (data dir {})",
        settings.data_dir.display()
    );
    wait_serving(&url).await?;
    let mut curator = crate::playbook::connect(&url).await?;

    println!("\n1. curate {} insights", INSIGHTS.len());
    let insights: Vec<pb::Insight> = INSIGHTS
        .iter()
        .enumerate()
        .map(|(i, (section, content))| pb::Insight {
            id: format!("demo-insight-{i}"),
            section: (*section).to_owned(),
            content: (*content).to_owned(),
            source: "demo".to_owned(),
        })
        .collect();
    let ops = curator
        .curate(pb::CurateRequest {
            namespace: NAMESPACE.into(),
            insights: insights.clone(),
        })
        .await?
        .into_inner()
        .ops;
    for (op, insight) in ops.iter().zip(&insights) {
        let kind = pb::DeltaKind::try_from(op.kind).map_or("?", |k| k.as_str_name());
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
        "\n2. feedback: the following-distance bullet helped 5 times, the hard-braking one misled twice"
    );
    let bullets = crate::playbook::all_bullets(&mut curator, NAMESPACE, None, None).await?;
    let helpful = bullets
        .iter()
        .find(|b| b.content.contains("following distance"));
    let harmful = bullets
        .iter()
        .find(|b| b.content.starts_with("Braking hard"));
    let mut feedback = Vec::new();
    if let Some(b) = helpful {
        feedback.push(pb::BulletFeedback {
            bullet_id: b.id.clone(),
            helpful: 5,
            harmful: 0,
        });
    }
    if let Some(b) = harmful {
        feedback.push(pb::BulletFeedback {
            bullet_id: b.id.clone(),
            helpful: 1,
            harmful: 2,
        });
    }
    let updated = curator
        .record_feedback(pb::RecordFeedbackRequest {
            namespace: NAMESPACE.into(),
            feedback,
            feedback_id: "demo-feedback-1".into(),
        })
        .await?
        .into_inner();
    for b in &updated.bullets {
        let stage = pb::Stage::try_from(b.stage).map_or("?", |s| s.as_str_name());
        println!(
            "   {:<17} +{} -{}  {}",
            stage.trim_start_matches("STAGE_"),
            b.helpful,
            b.harmful,
            b.content
        );
    }

    for (step, label, min_stage) in [
        ("3a", "any stage", pb::Stage::Shadow),
        ("3b", "production only", pb::Stage::Production),
    ] {
        let ctx = curator
            .render_context(pb::RenderContextRequest {
                namespace: NAMESPACE.into(),
                state: STATE.into(),
                token_budget: 120,
                min_stage: min_stage as i32,
            })
            .await?
            .into_inner();
        println!(
            "\n{step}. context for the state, {label}, budget 120 tokens: {} bullets, {} tokens\n{}",
            ctx.bullet_ids.len(),
            ctx.tokens,
            ctx.text.trim_end()
        );
    }

    let h = curator
        .get_playbook_health(pb::GetPlaybookHealthRequest {
            namespace: NAMESPACE.into(),
        })
        .await?
        .into_inner();
    println!(
        "\n4. playbook health: {} bullets (shadow {}, staging {}, production {}, quarantined {}); \
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

    let _ = stop.send(());
    server.await.context("server task")??;
    Ok(())
}

async fn wait_serving(url: &str) -> anyhow::Result<()> {
    let channel = tonic::transport::Channel::from_shared(url.to_owned())?
        .connect()
        .await?;
    let mut health = HealthClient::new(channel);
    for _ in 0..600 {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: agent_learning_proto::service_names::CURATOR.into(),
            })
            .await
            .map(|r| r.into_inner().status)
            .ok();
        if status == Some(ServingStatus::Serving as i32) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the curator did not report SERVING within 60 s")
}
