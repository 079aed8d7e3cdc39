//! `agent-learning playbook ...`: a gRPC client of a running Curator.

use agent_learning_config::Settings;
use agent_learning_proto::v1 as pb;
use agent_learning_proto::v1::curator_client::CuratorClient;
use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use tonic::transport::Channel;

#[derive(Args)]
pub struct PlaybookArgs {
    /// Server to talk to (else http://<server.addr>).
    #[arg(long, global = true)]
    server: Option<String>,
    /// Namespace (tenant/domain) of the playbook.
    #[arg(long, short, global = true, default_value = "default")]
    namespace: String,
    #[command(subcommand)]
    command: PlaybookCommand,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum StageArg {
    Shadow,
    Staging,
    Production,
    Quarantined,
}

impl StageArg {
    fn pb(self) -> pb::Stage {
        match self {
            StageArg::Shadow => pb::Stage::Shadow,
            StageArg::Staging => pb::Stage::Staging,
            StageArg::Production => pb::Stage::Production,
            StageArg::Quarantined => pb::Stage::Quarantined,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Json,
    Markdown,
}

#[derive(Subcommand)]
enum PlaybookCommand {
    /// Curate one insight (ADD or MERGE).
    Add {
        #[arg(long)]
        section: String,
        #[arg(long)]
        content: String,
        /// Idempotency key; defaults to a new UUID.
        #[arg(long)]
        id: Option<String>,
        #[arg(long, default_value = "cli")]
        source: String,
    },
    /// List bullets.
    Show {
        #[arg(long)]
        stage: Option<StageArg>,
        #[arg(long)]
        section: Option<String>,
    },
    /// Semantic search.
    Search {
        query: String,
        #[arg(short, default_value_t = 10)]
        k: u32,
        #[arg(long)]
        min_stage: Option<StageArg>,
    },
    /// Counts by stage and section, merge rate, growth.
    Health,
    /// Record helpful/harmful votes on a bullet.
    Feedback {
        bullet_id: String,
        #[arg(long, default_value_t = 0)]
        helpful: u32,
        #[arg(long, default_value_t = 0)]
        harmful: u32,
    },
    /// A bullet's history.
    History { bullet_id: String },
    /// The whole live playbook.
    Export {
        #[arg(long, value_enum, default_value = "markdown")]
        format: Format,
    },
}

pub async fn connect(url: &str) -> anyhow::Result<CuratorClient<Channel>> {
    let channel = Channel::from_shared(url.to_owned())
        .with_context(|| format!("server url {url:?}"))?
        .connect()
        .await
        .with_context(|| format!("cannot reach {url}; is `agent-learning serve` running?"))?;
    Ok(CuratorClient::new(channel))
}

fn stage_name(v: i32) -> &'static str {
    match pb::Stage::try_from(v) {
        Ok(pb::Stage::Shadow) => "shadow",
        Ok(pb::Stage::Staging) => "staging",
        Ok(pb::Stage::Production) => "production",
        Ok(pb::Stage::Quarantined) => "quarantined",
        _ => "unspecified",
    }
}

fn bullet_json(b: &pb::Bullet) -> serde_json::Value {
    serde_json::json!({
        "id": b.id, "section": b.section, "content": b.content, "stage": stage_name(b.stage),
        "helpful": b.helpful, "harmful": b.harmful, "evidence": b.evidence,
        "sources": b.sources, "deleted": b.deleted,
    })
}

fn print_bullet(b: &pb::Bullet) {
    println!(
        "{}  {:<11} {:<9} +{} -{} x{}  {}",
        b.id,
        stage_name(b.stage),
        b.section,
        b.helpful,
        b.harmful,
        b.evidence,
        b.content
    );
}

/// Every bullet of a namespace, following page tokens.
pub async fn all_bullets(
    client: &mut CuratorClient<Channel>,
    namespace: &str,
    stage: Option<pb::Stage>,
    section: Option<String>,
) -> anyhow::Result<Vec<pb::Bullet>> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .get_playbook(pb::GetPlaybookRequest {
                namespace: namespace.to_owned(),
                stage: stage.unwrap_or(pb::Stage::Unspecified) as i32,
                section: section.clone().unwrap_or_default(),
                page_size: 1000,
                page_token: token,
                include_deleted: false,
            })
            .await?
            .into_inner();
        out.extend(page.bullets);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

pub fn markdown(namespace: &str, bullets: &[pb::Bullet]) -> String {
    let mut sections: Vec<&str> = bullets.iter().map(|b| b.section.as_str()).collect();
    sections.dedup();
    sections.sort_unstable();
    sections.dedup();
    let mut out = format!("# Playbook `{namespace}`\n");
    for section in sections {
        out.push_str(&format!("\n## {section}\n\n"));
        for b in bullets.iter().filter(|b| b.section == section) {
            out.push_str(&format!(
                "- {} _({}, helpful {}, harmful {}, evidence {})_\n",
                b.content,
                stage_name(b.stage),
                b.helpful,
                b.harmful,
                b.evidence
            ));
        }
    }
    out
}

pub async fn run(settings: &Settings, args: &PlaybookArgs) -> anyhow::Result<()> {
    let url = args
        .server
        .clone()
        .unwrap_or_else(|| format!("http://{}", settings.server.addr));
    let mut client = connect(&url).await?;
    let ns = args.namespace.clone();
    match &args.command {
        PlaybookCommand::Add {
            section,
            content,
            id,
            source,
        } => {
            let id = id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let res = client
                .curate(pb::CurateRequest {
                    namespace: ns,
                    insights: vec![pb::Insight {
                        id,
                        section: section.clone(),
                        content: content.clone(),
                        source: source.clone(),
                    }],
                })
                .await?
                .into_inner();
            for op in res.ops {
                let kind = pb::DeltaKind::try_from(op.kind)
                    .map(|k| k.as_str_name())
                    .unwrap_or("?");
                println!(
                    "{kind} bullet {} (similarity {:.3}{})",
                    op.bullet_id,
                    op.similarity,
                    if op.replayed { ", replayed" } else { "" }
                );
            }
        }
        PlaybookCommand::Show { stage, section } => {
            let bullets =
                all_bullets(&mut client, &ns, stage.map(StageArg::pb), section.clone()).await?;
            for b in &bullets {
                print_bullet(b);
            }
            println!("{} bullets", bullets.len());
        }
        PlaybookCommand::Search {
            query,
            k,
            min_stage,
        } => {
            let res = client
                .search_playbook(pb::SearchPlaybookRequest {
                    namespace: ns,
                    query: query.clone(),
                    k: *k,
                    min_stage: min_stage.map_or(pb::Stage::Unspecified, StageArg::pb) as i32,
                    section: String::new(),
                })
                .await?
                .into_inner();
            for r in res.results {
                if let Some(b) = r.bullet {
                    print!("{:.3}  ", r.score);
                    print_bullet(&b);
                }
            }
        }
        PlaybookCommand::Health => {
            let h = client
                .get_playbook_health(pb::GetPlaybookHealthRequest { namespace: ns })
                .await?
                .into_inner();
            println!(
                "bullets {}  shadow {}  staging {}  production {}  quarantined {}  deleted {}",
                h.total, h.shadow, h.staging, h.production, h.quarantined, h.deleted
            );
            println!(
                "insights applied {}  merges {}  merge rate {:.1}%  added in 24h {}",
                h.insights_applied,
                h.merges,
                h.merge_rate * 100.0,
                h.added_last_24h
            );
            for s in h.sections {
                println!("  {:<10} {}", s.section, s.count);
            }
        }
        PlaybookCommand::Feedback {
            bullet_id,
            helpful,
            harmful,
        } => {
            let res = client
                .record_feedback(pb::RecordFeedbackRequest {
                    namespace: ns,
                    feedback: vec![pb::BulletFeedback {
                        bullet_id: bullet_id.clone(),
                        helpful: *helpful,
                        harmful: *harmful,
                    }],
                    feedback_id: String::new(),
                })
                .await?
                .into_inner();
            for b in &res.bullets {
                print_bullet(b);
            }
        }
        PlaybookCommand::History { bullet_id } => {
            let res = client
                .get_bullet_history(pb::GetBulletHistoryRequest {
                    namespace: ns,
                    bullet_id: bullet_id.clone(),
                })
                .await?
                .into_inner();
            for e in res.events {
                println!(
                    "#{} {} {} -> {} {}",
                    e.seq,
                    e.kind,
                    stage_name(e.from_stage),
                    stage_name(e.to_stage),
                    e.detail
                );
            }
        }
        PlaybookCommand::Export { format } => {
            let bullets = all_bullets(&mut client, &ns, None, None).await?;
            match format {
                Format::Json => {
                    let v: Vec<_> = bullets.iter().map(bullet_json).collect();
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({
                            "namespace": ns, "bullets": v
                        }))?
                    );
                }
                Format::Markdown => print!("{}", markdown(&ns, &bullets)),
            }
        }
    }
    Ok(())
}
