//! One `init` for every agent-learning process: an env filter, JSON (default) or pretty logs on
//! stderr, OTLP/gRPC trace export through tracing-opentelemetry when an endpoint is set, and a
//! Prometheus scrape endpoint for the process's `metrics` when an address is set.

pub use agent_learning_config::LogFormat;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

#[derive(Debug, Clone)]
pub struct TelemetryOptions {
    pub service_name: String,
    pub log_format: LogFormat,
    /// An `EnvFilter` directive used when `RUST_LOG` is unset.
    pub log_filter: String,
    pub otlp_endpoint: Option<String>,
    /// Where `GET /metrics` answers (Prometheus text format); `None`: metrics are not exported.
    pub metrics_addr: Option<String>,
}

/// Histogram buckets of every `*_seconds` metric: from a fast RPC to a slow model call.
const SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Starts the Prometheus exporter on `addr` and installs it as the process's recorder; every
/// series carries a `service` label.
fn install_metrics(addr: &str, service: &str) -> Result<(), TelemetryError> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let socket: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| TelemetryError::Metrics(format!("{addr:?}: {e}")))?;
    PrometheusBuilder::new()
        .with_http_listener(socket)
        .add_global_label("service", service)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .and_then(|b| b.install())
        .map_err(|e| TelemetryError::Metrics(format!("{addr}: {e}")))
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry.log_filter: {0}")]
    Filter(#[from] tracing_subscriber::filter::ParseError),
    #[error("telemetry.otlp_endpoint: {0}")]
    Otlp(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("telemetry.metrics_addr: {0}")]
    Metrics(String),
    #[error("telemetry: a global subscriber is already installed: {0}")]
    AlreadyInstalled(#[from] tracing_subscriber::util::TryInitError),
}

/// Flushes and shuts the trace exporter down when dropped.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("telemetry: trace exporter shutdown failed: {e}");
        }
    }
}

/// Installs the global subscriber. Call once, from `main`, inside a Tokio runtime.
pub fn init(opts: &TelemetryOptions) -> Result<TelemetryGuard, TelemetryError> {
    let mut directive = match std::env::var("RUST_LOG") {
        Ok(d) if !d.is_empty() => d,
        _ => opts.log_filter.clone(),
    };
    // The embedded vector engine warns about process-wide flags it expects its own server to
    // set; they change nothing here. Its errors still show, and an explicit directive wins.
    if !directive.contains("qdrant_edge") {
        directive.push_str(",qdrant_edge=error");
    }
    let filter = EnvFilter::try_new(directive)?;
    let fmt = if opts.log_format == LogFormat::Pretty {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed()
    };
    let (otel, provider) = match &opts.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(opts.service_name.clone())
                .build();
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build();
            let tracer = provider.tracer("agent-learning");
            (
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
                Some(provider),
            )
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()?;
    if let Some(addr) = &opts.metrics_addr {
        install_metrics(addr, &opts.service_name)?;
    }
    Ok(TelemetryGuard { provider })
}
