//! The standalone Curator service.

use std::path::PathBuf;

use agent_learning_config::{Settings, Sources};
use agent_learning_telemetry::TelemetryOptions;
use clap::Parser;

#[derive(Parser)]
#[command(about = "agent-learning Curator service (ACE playbook curation over gRPC)")]
struct Args {
    /// TOML configuration file (else AGENT_LEARNING_CONFIG).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Listen address (else server.addr).
    #[arg(long)]
    addr: Option<String>,
    /// Data directory (else data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut overrides = Vec::new();
    if let Some(addr) = args.addr {
        overrides.push(("server.addr".to_owned(), addr));
    }
    if let Some(dir) = args.data_dir {
        overrides.push(("data_dir".to_owned(), dir.display().to_string()));
    }
    let settings = Settings::load(&Sources {
        file: args.config,
        overrides,
    })?;
    let _telemetry = agent_learning_telemetry::init(&TelemetryOptions {
        service_name: "agent-learning-curator".into(),
        log_format: settings.telemetry.log_format.clone(),
        log_filter: settings.telemetry.log_filter.clone(),
        otlp_endpoint: settings.telemetry.otlp_endpoint.clone(),
    })?;
    let listener = tokio::net::TcpListener::bind(&settings.server.addr).await?;
    agent_learning_curator::serve_curator(
        &settings,
        listener,
        agent_learning_server::shutdown_signal(),
    )
    .await
}
