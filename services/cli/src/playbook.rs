//! `agent-learning playbook ...`: a client of a running Curator, through its API trait.

use agent_learning_api::{CuratorApi, CuratorClient, FeedbackItem, PlaybookQuery};
use agent_learning_config::Settings;
use agent_learning_domain::{Bullet, DeltaKind, Insight, Stage};
use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};

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
    fn stage(self) -> Stage {
        match self {
            StageArg::Shadow => Stage::Shadow,
            StageArg::Staging => Stage::Staging,
            StageArg::Production => Stage::Production,
            StageArg::Quarantined => Stage::Quarantined,
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
    /// Record one vote on a bullet: --helpful or --harmful. One vote per feedback id: the
    /// same id again changes nothing.
    Feedback {
        bullet_id: String,
        #[arg(long, conflicts_with = "harmful", required_unless_present = "harmful")]
        helpful: bool,
        #[arg(long)]
        harmful: bool,
        /// What the vote is about (a decision, a review); a new id when absent.
        #[arg(long)]
        feedback_id: Option<String>,
    },
    /// A bullet's history.
    History { bullet_id: String },
    /// The whole live playbook.
    Export {
        #[arg(long, value_enum, default_value = "markdown")]
        format: Format,
    },
}

pub async fn connect(url: &str) -> anyhow::Result<CuratorClient> {
    let channel = agent_learning_api::endpoint(url)
        .with_context(|| format!("server url {url:?}"))?
        .connect()
        .await
        .with_context(|| format!("cannot reach {url}; is `agent-learning serve` running?"))?;
    Ok(CuratorClient::new(channel))
}

fn stage_name(s: Option<Stage>) -> &'static str {
    s.map_or("unspecified", Stage::as_str)
}

/// How the contract spells a delta kind (`DELTA_KIND_ADD`).
pub fn kind_name(k: DeltaKind) -> String {
    format!("DELTA_KIND_{}", k.as_str().to_uppercase())
}

fn bullet_json(b: &Bullet) -> serde_json::Value {
    serde_json::json!({
        "id": b.id.to_string(), "section": b.section, "content": b.content,
        "stage": b.stage.as_str(), "helpful": b.helpful, "harmful": b.harmful,
        "evidence": b.evidence, "sources": b.sources, "deleted": b.deleted,
    })
}

fn print_bullet(b: &Bullet) {
    println!(
        "{}  {:<11} {:<9} +{} -{} x{}  {}",
        b.id,
        b.stage.as_str(),
        b.section,
        b.helpful,
        b.harmful,
        b.evidence,
        b.content
    );
}

/// Every bullet of a namespace, following page tokens.
pub async fn all_bullets(
    curator: &dyn CuratorApi,
    namespace: &str,
    stage: Option<Stage>,
    section: Option<String>,
) -> anyhow::Result<Vec<Bullet>> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = curator
            .get_playbook(
                namespace,
                PlaybookQuery {
                    stage,
                    section: section.clone(),
                    page_size: 1000,
                    page_token: token,
                    include_deleted: false,
                },
            )
            .await?;
        out.extend(page.bullets);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

pub fn markdown(namespace: &str, bullets: &[Bullet]) -> String {
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
                b.stage.as_str(),
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
    let client = connect(&url).await?;
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
            let ops = client
                .curate(
                    &ns,
                    vec![Insight {
                        id,
                        section: section.clone(),
                        content: content.clone(),
                        source: source.clone(),
                    }],
                )
                .await?;
            for op in ops {
                println!(
                    "{} bullet {} (similarity {:.3}{})",
                    kind_name(op.kind),
                    op.bullet_id,
                    op.similarity,
                    if op.replayed { ", replayed" } else { "" }
                );
            }
        }
        PlaybookCommand::Show { stage, section } => {
            let bullets =
                all_bullets(&client, &ns, stage.map(StageArg::stage), section.clone()).await?;
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
            let min_stage = min_stage.map_or(Stage::Shadow, StageArg::stage);
            for (b, score) in client.search(&ns, query, *k, min_stage, None).await? {
                print!("{score:.3}  ");
                print_bullet(&b);
            }
        }
        PlaybookCommand::Health => {
            let h = client.health(&ns).await?;
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
            for (section, count) in h.sections {
                println!("  {section:<10} {count}");
            }
        }
        PlaybookCommand::Feedback {
            bullet_id,
            helpful,
            harmful,
            feedback_id,
        } => {
            let feedback_id = feedback_id
                .clone()
                .unwrap_or_else(|| format!("cli:{}", uuid::Uuid::new_v4()));
            let res = client
                .record_feedback(
                    &ns,
                    &feedback_id,
                    vec![FeedbackItem {
                        bullet_id: bullet_id.clone(),
                        helpful: u32::from(*helpful),
                        harmful: u32::from(*harmful),
                    }],
                )
                .await?;
            for b in &res.bullets {
                print_bullet(b);
            }
        }
        PlaybookCommand::History { bullet_id } => {
            for e in client.history(&ns, bullet_id).await? {
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
            let bullets = all_bullets(&client, &ns, None, None).await?;
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
