//! Layered configuration for every agent-learning process: built-in defaults < TOML file <
//! `AGENT_LEARNING__SECTION__KEY` environment variables, parsed into typed structs and validated
//! at start-up with errors that name the offending key.

use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

/// Environment prefix; nested keys are separated by a double underscore.
pub const ENV_PREFIX: &str = "AGENT_LEARNING";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where the embedded backends keep their files (SQLite, vector index).
    pub data_dir: PathBuf,
    /// Where downloaded models are cached; shared by every data dir.
    pub models_dir: PathBuf,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub vector: VectorSettings,
    pub embedding: EmbeddingSettings,
    pub curator: CuratorSettings,
    pub llm: LlmSettings,
    pub telemetry: TelemetrySettings,
    pub queue: QueueSettings,
    pub services: ServiceEndpoints,
    pub pipeline: PipelineSettings,
    pub policy: PolicySettings,
    pub environments: EnvironmentSettings,
    pub auth: AuthSettings,
    #[serde(default)]
    pub tls: TlsSettings,
}

/// TLS of the gRPC servers and of the connections this process opens (PEM files). A server
/// speaks TLS when `cert` and `key` are set; a peer is reached over TLS when its URL is
/// `https://` (or `rediss://` for Redis; PostgreSQL takes `sslmode` and `sslrootcert` in its
/// URL).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// This process's server certificate chain.
    pub cert: Option<PathBuf>,
    /// Its private key.
    pub key: Option<PathBuf>,
    /// Clients must present a certificate signed by one of these CAs (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// CAs trusted for `https://` peers and `rediss://` Redis; empty: the system's roots.
    pub ca: Option<PathBuf>,
    /// The certificate this process presents to TLS peers (mutual TLS), with `client_key`.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// The name checked in peers' certificates, when it is not the host of their URL.
    pub server_name: Option<String>,
}

/// API keys (see `agent_learning_server::auth` for the keys file's format and the roles).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// `auto`: keys are required when the server listens on a non-loopback address or any
    /// key is configured; `required`; or `disabled` (no keys, whatever the address).
    pub mode: AuthMode,
    /// The keys file (`ID SHA256 GRANTS` per line), read again when it changes.
    pub keys_file: Option<PathBuf>,
    /// Keys in the keys file's format, from the environment.
    pub keys: Option<SecretString>,
    /// The key the services present to each other: every role on every namespace.
    pub internal_key: Option<SecretString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Auto,
    Required,
    Disabled,
}

/// Environments reached over the network (`grpc://HOST:PORT`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentSettings {
    /// The `grpc://` environments the explorer and coordinator accept, as `HOST:PORT`,
    /// `HOST:*` (any port) or `*` (anywhere). Hosts compare as written, without DNS.
    pub allowed_remotes: Vec<String>,
}

/// The work queues: Redis Streams when `redis_url` is set, else the embedded queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    pub redis_url: Option<String>,
    /// An entry unacknowledged this long is claimed by another consumer.
    pub visibility_timeout_secs: u64,
    /// Deliveries before an entry goes to the dead-letter stream.
    pub max_deliveries: u32,
    /// How long a consumer's read waits for new entries.
    pub block_ms: u64,
}

/// gRPC endpoints of the other services (`http://host:port`); empty: this process's server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEndpoints {
    pub world_model: String,
    pub explorer: String,
    pub reflector: String,
    pub policy: String,
    pub curator: String,
    /// How long a service that calls others waits at start for each of them to answer before
    /// it gives up, naming the key of the one that did not.
    pub startup_wait_secs: u64,
}

/// Defaults of a training run; `StartTraining`'s `config_json` overrides them per run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSettings {
    /// Alternative actions per branch point.
    pub alternatives: u32,
    /// Branch points per demo, spread over the episode; 0: every expert step.
    pub branch_points: u32,
    /// Neighbour transitions the world model shows the model.
    pub world_model_k: u32,
    /// Expert transitions held out of the world model's fit to evaluate it.
    pub holdout: u32,
    /// A run whose reflection or curation makes no progress this long fails.
    pub stall_timeout_secs: u64,
    /// Reflector consumers run inside an all-in-one server (0: none, reflectors run as their
    /// own processes) or a standalone reflector (at least 1).
    pub reflectors: u32,
    /// Longest accepted section of a reflection, in characters.
    pub reflection_max_chars: usize,
    /// How long a coordinator's lease on the run it drives lasts without renewal; another
    /// coordinator takes the run over once it expires.
    pub run_lease_secs: u64,
    /// How long a stage keeps trying again through an outage (a database, Redis or a peer
    /// not answering) before the run fails; 0: fail at once.
    pub outage_tolerance_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySettings {
    pub instructions_template: String,
    pub exemplars_k: u32,
    /// Lowest playbook stage a compiled policy uses: shadow, staging or production.
    pub min_stage: agent_learning_domain::Stage,
    /// Token budget of the playbook part of a Decide prompt.
    pub token_budget: u32,
    /// Decide follows the nearest demonstrations over the model when a similarity-weighted
    /// majority of its exemplars chose one valid action and the nearest of them is at least
    /// this similar to the state (cosine); above 1: never.
    pub exemplar_vote_min_similarity: f32,
}

/// Where language model calls go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmProvider {
    /// SmolLM2 in process.
    Local,
    /// Any OpenAI-compatible endpoint.
    Openai,
}

/// The weights the local model computes a prompt's tokens with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrefillWeights {
    /// Only the quantized file's weights (Q8_0): the least memory, the slowest prompts.
    Quantized,
    /// Each layer's projections also as 16-bit floats (about 210 MB more for SmolLM2-135M).
    F16,
    /// Each layer's projections also as 32-bit floats (about 425 MB more).
    F32,
}

/// How logs are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object a line, for collectors.
    #[default]
    Json,
    /// For people at a terminal.
    Pretty,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSettings {
    /// `local` (SmolLM2 in process, the default) or `openai` (any OpenAI-compatible endpoint).
    pub provider: LlmProvider,
    pub base_url: String,
    /// Model name for `openai`; ignored by `local`.
    pub model: String,
    /// For `openai`; `OPENAI_API_KEY` also sets it. Never logged.
    pub api_key: Option<SecretString>,
    /// A file holding the API key (a mounted secret), read at start.
    pub api_key_file: Option<PathBuf>,
    pub timeout_secs: u64,
    pub max_retries: u32,
    pub max_concurrency: usize,
    /// Whether the endpoint honours `response_format: json_schema`.
    pub json_schema: bool,
    /// Compute threads of the local model; 0 picks from the machine.
    pub threads: usize,
    /// Whether the local model runs decisions (`choose`, Decide's call) on an instance and
    /// threads of their own, so a reflection never makes a Decide wait. Costs the model's
    /// cache and `decide_threads` more threads; the weights are shared.
    pub decide_lane: bool,
    /// Compute threads of the decisions' lane; 0 takes every core.
    pub decide_threads: usize,
    /// Whether the local model keeps each lane's KV cache between calls and computes only
    /// what a prompt does not share with the previous one's start.
    pub prefix_cache: bool,
    /// What the local model computes prompts with (several new tokens at once): `f32` or
    /// `f16` copies of the projections, multiplied as whole matrices, or `quantized`, the
    /// file's own 8-bit weights row by row. One generated token at a time always reads the
    /// 8-bit weights (a quarter of the bytes).
    pub prefill_weights: PrefillWeights,
    /// Tokens a run may spend; 0 is unlimited.
    pub token_budget: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub addr: String,
    /// Largest encoded or decoded gRPC message, in bytes.
    pub max_message_bytes: usize,
    pub concurrency_limit_per_connection: usize,
    /// Requests in flight at once per server; more are RESOURCE_EXHAUSTED at once. 0: no limit.
    pub max_in_flight: usize,
    pub request_timeout_secs: u64,
    /// How long in-flight requests may take to finish after a shutdown signal.
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `postgres://...` or `sqlite://...`; empty means SQLite at `<data_dir>/agent-learning.db`.
    pub url: Option<SecretString>,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorSettings {
    /// A Qdrant server (`http://host:6334`); empty means the in-process engine under the data dir.
    pub qdrant_url: Option<String>,
    pub qdrant_api_key: Option<SecretString>,
    /// Prefix of every collection name, so several deployments can share one server.
    pub collection_prefix: String,
    /// Writes after which the in-process engine rebuilds its search index (0: never).
    pub optimize_after_writes: usize,
    /// In-process engine: a filtered search matching less than this many KB of vectors scans
    /// them, above it walks the HNSW graph.
    pub full_scan_threshold_kb: usize,
    /// In-process engine: segments above this many KB of vectors get an HNSW graph.
    pub indexing_threshold_kb: usize,
    /// In-process engine: indexed segments also keep 8-bit copies of their vectors, which a
    /// graph search compares before scoring its best candidates on the floats.
    pub quantize: bool,
    /// Beam width of a graph search (both engines); 0 keeps the engine's, its `ef_construct`
    /// of 100. Curation asks for one nearest bullet: curator-bench measures the recall of
    /// each width against an exact search.
    pub hnsw_ef: usize,
}

impl VectorSettings {
    /// `hnsw_ef`, `None` when the engine's own is kept.
    pub fn search_ef(&self) -> Option<usize> {
        (self.hnsw_ef > 0).then_some(self.hnsw_ef)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingSettings {
    /// Sentences per forward pass.
    pub batch_size: usize,
    /// Compute threads for the embedding model; 0 picks from the machine's cores.
    pub threads: usize,
    /// Distinct texts whose vectors are kept in memory (about 2 KiB each plus the text), so a
    /// state seen again is not embedded again; 0 keeps none.
    pub cache_entries: usize,
    /// Whether vectors are kept in the record by content hash (table `embedding_cache`), so
    /// a text any process embedded, before a restart too, is read instead of embedded again.
    pub record_cache: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CuratorSettings {
    /// Cosine similarity at or above which an insight merges into its nearest bullet.
    pub merge_threshold: f64,
    pub sections: Vec<String>,
    pub max_content_bytes: usize,
    pub max_insights_per_request: usize,
    /// The longest a live run's insight waits for its `curate_every` batch to fill before the
    /// batch is curated as it is.
    pub batch_max_wait_secs: u64,
    pub promotion: PromotionSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromotionSettings {
    pub staging_min_helpful: u32,
    pub staging_min_ratio: f64,
    pub production_min_helpful: u32,
    pub production_min_ratio: f64,
    pub quarantine_min_harmful: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `json` (the default) or `pretty`.
    pub log_format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG` overrides it.
    pub log_filter: String,
    /// OTLP/gRPC collector; `OTEL_EXPORTER_OTLP_ENDPOINT` also sets it.
    pub otlp_endpoint: Option<String>,
    /// Where the Prometheus scrape endpoint (`GET /metrics`) listens, such as `0.0.0.0:9464`;
    /// empty: no endpoint.
    pub metrics_addr: Option<String>,
}

const DEFAULTS: &str = r#"
data_dir = "data"
models_dir = ""

[server]
addr = "127.0.0.1:50051"
max_message_bytes = 4194304
concurrency_limit_per_connection = 256
max_in_flight = 1024
request_timeout_secs = 60
shutdown_grace_secs = 10

[database]
max_connections = 8

[vector]
collection_prefix = "agent_learning"
optimize_after_writes = 5000
full_scan_threshold_kb = 1000
indexing_threshold_kb = 1000
quantize = true
hnsw_ef = 0

[embedding]
batch_size = 32
threads = 0
cache_entries = 8192
record_cache = true

[curator]
merge_threshold = 0.80
sections = ["strategy", "mistakes", "facts"]
max_content_bytes = 4096
max_insights_per_request = 1000
batch_max_wait_secs = 300

[curator.promotion]
staging_min_helpful = 3
staging_min_ratio = 3.0
production_min_helpful = 5
production_min_ratio = 5.0
quarantine_min_harmful = 3

[llm]
provider = "local"
base_url = "https://api.openai.com/v1"
model = ""
timeout_secs = 60
max_retries = 3
max_concurrency = 4
json_schema = false
threads = 0
decide_lane = true
decide_threads = 0
prefix_cache = true
prefill_weights = "f32"
token_budget = 0

[telemetry]
log_format = "json"
log_filter = "info"

[queue]
redis_url = ""
visibility_timeout_secs = 300
max_deliveries = 5
block_ms = 1000

[services]
world_model = ""
explorer = ""
reflector = ""
policy = ""
curator = ""
startup_wait_secs = 60

[auth]
mode = "auto"

[environments]
allowed_remotes = ["127.0.0.1:*", "localhost:*", "[::1]:*"]

[pipeline]
alternatives = 2
branch_points = 1
world_model_k = 5
holdout = 8
stall_timeout_secs = 1800
reflectors = 1
reflection_max_chars = 800
run_lease_secs = 15
outage_tolerance_secs = 120

[policy]
instructions_template = "You act in the {env} environment. Choose the next action for the current state. Use the playbook's advice and the expert examples."
exemplars_k = 3
min_stage = "shadow"
token_budget = 600
exemplar_vote_min_similarity = 0.8
"#;

/// Where configuration comes from, besides the environment.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// A TOML file; `AGENT_LEARNING_CONFIG` names one when this is empty.
    pub file: Option<PathBuf>,
    /// Highest-precedence overrides from the command line, as `("server.addr", "...")`.
    pub overrides: Vec<(String, String)>,
}

impl Settings {
    /// Loads and validates the settings from defaults, the file, the environment and overrides.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        let file = sources
            .file
            .clone()
            .or_else(|| std::env::var_os("AGENT_LEARNING_CONFIG").map(PathBuf::from));
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .list_separator(",")
                .with_list_parse_key("curator.sections")
                .with_list_parse_key("environments.allowed_remotes")
                .try_parsing(true),
        );
        // Conventional variables of the ecosystem, below our own prefix in precedence.
        if let Ok(url) = std::env::var("QDRANT_URL")
            && std::env::var("AGENT_LEARNING__VECTOR__QDRANT_URL").is_err()
        {
            builder = builder.set_override("vector.qdrant_url", url)?;
        }
        if let Ok(key) = std::env::var("OPENAI_API_KEY")
            && std::env::var("AGENT_LEARNING__LLM__API_KEY").is_err()
        {
            builder = builder.set_override("llm.api_key", key)?;
        }
        if let Ok(url) = std::env::var("REDIS_URL")
            && std::env::var("AGENT_LEARNING__QUEUE__REDIS_URL").is_err()
        {
            builder = builder.set_override("queue.redis_url", url)?;
        }
        if let Ok(ep) = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
            && std::env::var("AGENT_LEARNING__TELEMETRY__OTLP_ENDPOINT").is_err()
        {
            builder = builder.set_override("telemetry.otlp_endpoint", ep)?;
        }
        for (key, value) in &sources.overrides {
            builder = builder.set_override(key.as_str(), value.as_str())?;
        }
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings.normalize();
        settings.validate()?;
        Ok(settings)
    }

    fn normalize(&mut self) {
        if self.models_dir.as_os_str().is_empty() {
            self.models_dir = default_models_dir();
        }
        let empty = |v: &Option<String>| v.as_deref().is_some_and(|s| s.trim().is_empty());
        if empty(&self.vector.qdrant_url) {
            self.vector.qdrant_url = None;
        }
        if empty(&self.telemetry.otlp_endpoint) {
            self.telemetry.otlp_endpoint = None;
        }
        if empty(&self.telemetry.metrics_addr) {
            self.telemetry.metrics_addr = None;
        }
        if empty(&self.queue.redis_url) {
            self.queue.redis_url = None;
        }
        // A secret set to "" (an unset variable in a compose file or a manifest) is no secret.
        let blank = |v: &Option<SecretString>| {
            use secrecy::ExposeSecret as _;
            v.as_ref()
                .is_some_and(|s| s.expose_secret().trim().is_empty())
        };
        if blank(&self.llm.api_key) {
            self.llm.api_key = None;
        }
        if blank(&self.vector.qdrant_api_key) {
            self.vector.qdrant_api_key = None;
        }
        if blank(&self.database.url) {
            self.database.url = None;
        }
        if blank(&self.auth.keys) {
            self.auth.keys = None;
        }
        if blank(&self.auth.internal_key) {
            self.auth.internal_key = None;
        }
        let unset = |p: &mut Option<PathBuf>| {
            if p.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                *p = None;
            }
        };
        unset(&mut self.auth.keys_file);
        unset(&mut self.tls.cert);
        unset(&mut self.tls.key);
        unset(&mut self.tls.client_ca);
        unset(&mut self.tls.ca);
        unset(&mut self.tls.client_cert);
        unset(&mut self.tls.client_key);
        if empty(&self.tls.server_name) {
            self.tls.server_name = None;
        }
    }

    /// Checks every value that parsing alone cannot, naming the key that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "server.addr",
                format!(
                    "{:?} is not a socket address such as 127.0.0.1:50051",
                    self.server.addr
                ),
            ));
        }
        if self.server.max_message_bytes < 1024 || self.server.max_message_bytes > 256 << 20 {
            return Err(invalid(
                "server.max_message_bytes",
                "must be in 1 KiB ..= 256 MiB",
            ));
        }
        if self.server.concurrency_limit_per_connection == 0 {
            return Err(invalid(
                "server.concurrency_limit_per_connection",
                "must be at least 1",
            ));
        }
        if self.server.request_timeout_secs == 0 {
            return Err(invalid("server.request_timeout_secs", "must be at least 1"));
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        if self.embedding.batch_size == 0 || self.embedding.batch_size > 1024 {
            return Err(invalid("embedding.batch_size", "must be in 1..=1024"));
        }
        if self.vector.full_scan_threshold_kb == 0 {
            return Err(invalid(
                "vector.full_scan_threshold_kb",
                "must be at least 1",
            ));
        }
        if self.vector.indexing_threshold_kb == 0 {
            return Err(invalid(
                "vector.indexing_threshold_kb",
                "must be at least 1",
            ));
        }
        let t = self.curator.merge_threshold;
        if !t.is_finite() || !(-1.0..=1.0).contains(&t) {
            return Err(invalid(
                "curator.merge_threshold",
                format!("must be a finite cosine similarity in [-1, 1], got {t}"),
            ));
        }
        if self.queue.max_deliveries == 0 {
            return Err(invalid("queue.max_deliveries", "must be at least 1"));
        }
        if self.queue.visibility_timeout_secs == 0 {
            return Err(invalid(
                "queue.visibility_timeout_secs",
                "must be at least 1",
            ));
        }
        if let Some(url) = &self.queue.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(invalid(
                "queue.redis_url",
                format!("{:?} is not a redis:// or rediss:// URL", redact_url(url)),
            ));
        }
        for (key, url) in [
            ("services.world_model", &self.services.world_model),
            ("services.explorer", &self.services.explorer),
            ("services.reflector", &self.services.reflector),
            ("services.policy", &self.services.policy),
            ("services.curator", &self.services.curator),
        ] {
            if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    key,
                    format!(
                        "{:?} is not an http:// or https:// endpoint",
                        redact_url(url)
                    ),
                ));
            }
        }
        for (i, pattern) in self.environments.allowed_remotes.iter().enumerate() {
            let ok = pattern == "*"
                || pattern.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && (port == "*" || port.parse::<u16>().is_ok())
                });
            if !ok {
                return Err(invalid(
                    "environments.allowed_remotes",
                    format!("entry {i}, {pattern:?}, is not HOST:PORT, HOST:* or *"),
                ));
            }
        }
        let t = &self.tls;
        for (key, a, b) in [
            ("tls.cert", &t.cert, &t.key),
            ("tls.key", &t.key, &t.cert),
            ("tls.client_cert", &t.client_cert, &t.client_key),
            ("tls.client_key", &t.client_key, &t.client_cert),
        ] {
            if a.is_none() && b.is_some() {
                return Err(invalid(key, "must be set together with its pair"));
            }
        }
        if t.client_ca.is_some() && t.cert.is_none() {
            return Err(invalid(
                "tls.client_ca",
                "mutual TLS needs the server's own tls.cert and tls.key",
            ));
        }
        for (key, path) in [
            ("tls.cert", &t.cert),
            ("tls.key", &t.key),
            ("tls.client_ca", &t.client_ca),
            ("tls.ca", &t.ca),
            ("tls.client_cert", &t.client_cert),
            ("tls.client_key", &t.client_key),
        ] {
            if let Some(p) = path
                && !p.is_file()
            {
                return Err(invalid(key, format!("{} is not a file", p.display())));
            }
        }
        if self.services.startup_wait_secs == 0 {
            return Err(invalid("services.startup_wait_secs", "must be at least 1"));
        }
        if let Some(addr) = &self.telemetry.metrics_addr
            && addr.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(invalid(
                "telemetry.metrics_addr",
                format!("{addr:?} is not a socket address such as 0.0.0.0:9464"),
            ));
        }
        if self.pipeline.alternatives == 0 || self.pipeline.alternatives > 16 {
            return Err(invalid("pipeline.alternatives", "must be in 1..=16"));
        }
        if self.pipeline.world_model_k == 0 || self.pipeline.world_model_k > 50 {
            return Err(invalid("pipeline.world_model_k", "must be in 1..=50"));
        }
        if self.pipeline.run_lease_secs < 3 {
            return Err(invalid("pipeline.run_lease_secs", "must be at least 3"));
        }
        if self.pipeline.reflection_max_chars < 40 {
            return Err(invalid(
                "pipeline.reflection_max_chars",
                "must be at least 40",
            ));
        }
        if self.policy.min_stage == agent_learning_domain::Stage::Quarantined {
            return Err(invalid(
                "policy.min_stage",
                "\"quarantined\" is not one of shadow, staging, production",
            ));
        }
        if self.policy.token_budget == 0 {
            return Err(invalid("policy.token_budget", "must be at least 1"));
        }
        if self.curator.sections.is_empty() {
            return Err(invalid(
                "curator.sections",
                "must name at least one section",
            ));
        }
        for (i, s) in self.curator.sections.iter().enumerate() {
            let ok = !s.is_empty()
                && s.len() <= 32
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                return Err(invalid(
                    "curator.sections",
                    format!("section {s:?} must be 1-32 characters of a-z, 0-9, '_'"),
                ));
            }
            if self.curator.sections[..i].contains(s) {
                return Err(invalid(
                    "curator.sections",
                    format!("section {s:?} is listed twice"),
                ));
            }
        }
        if self.curator.max_content_bytes == 0 || self.curator.max_content_bytes > 1 << 20 {
            return Err(invalid(
                "curator.max_content_bytes",
                "must be in 1 ..= 1 MiB",
            ));
        }
        if self.curator.max_insights_per_request == 0 {
            return Err(invalid(
                "curator.max_insights_per_request",
                "must be at least 1",
            ));
        }
        if self.curator.batch_max_wait_secs == 0 {
            return Err(invalid("curator.batch_max_wait_secs", "must be at least 1"));
        }
        let p = &self.curator.promotion;
        for (key, ratio) in [
            ("curator.promotion.staging_min_ratio", p.staging_min_ratio),
            (
                "curator.promotion.production_min_ratio",
                p.production_min_ratio,
            ),
        ] {
            if !ratio.is_finite() || ratio < 1.0 {
                return Err(invalid(
                    key,
                    format!("must be a finite ratio >= 1, got {ratio}"),
                ));
            }
        }
        if p.quarantine_min_harmful == 0 {
            return Err(invalid(
                "curator.promotion.quarantine_min_harmful",
                "must be at least 1",
            ));
        }
        if p.production_min_helpful < p.staging_min_helpful {
            return Err(invalid(
                "curator.promotion.production_min_helpful",
                "must be at least curator.promotion.staging_min_helpful",
            ));
        }
        if self.llm.provider == LlmProvider::Openai {
            if self.llm.model.trim().is_empty() {
                return Err(invalid(
                    "llm.model",
                    "must name a model when llm.provider is openai",
                ));
            }
            if !(self.llm.base_url.starts_with("http://")
                || self.llm.base_url.starts_with("https://"))
            {
                return Err(invalid(
                    "llm.base_url",
                    format!("{:?} is not an http(s) URL", self.llm.base_url),
                ));
            }
        }
        if self.llm.timeout_secs == 0 {
            return Err(invalid("llm.timeout_secs", "must be at least 1"));
        }
        if self.llm.max_concurrency == 0 {
            return Err(invalid("llm.max_concurrency", "must be at least 1"));
        }
        if let Some(file) = &self.llm.api_key_file
            && !file.is_file()
        {
            return Err(invalid(
                "llm.api_key_file",
                format!("{} is not a readable file", file.display()),
            ));
        }
        Ok(())
    }

    /// The SQLite file used when no database URL is configured.
    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("agent-learning.db")
    }

    /// The directory of the in-process vector engine.
    pub fn vector_dir(&self) -> PathBuf {
        self.data_dir.join("vectors")
    }
}

/// `url` with any password replaced by `***`, for messages and logs: `postgres://u:***@db/x`,
/// `redis://***@host:6379`. Text that is not a URL but has an `@` loses everything before it.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return match url.rfind('@') {
            Some(at) => format!("***{}", &url[at..]),
            None => url.to_owned(),
        };
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = match rest[..at].split_once(':') {
        Some(("", _)) => "***".to_owned(),
        Some((user, _)) => format!("{user}:***"),
        None => rest[..at].to_owned(), // a user name alone: no password to hide
    };
    format!("{}://{userinfo}{}", &url[..scheme_end], &rest[at..])
}

/// `$XDG_CACHE_HOME/agent-learning/models`, else `$HOME/.cache/agent-learning/models`.
pub fn default_models_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("agent-learning").join("models")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with(overrides: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::load(&Sources {
            file: None,
            overrides: overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }

    #[test]
    fn defaults_are_valid() {
        let s = load_with(&[]).unwrap();
        assert_eq!(s.curator.merge_threshold, 0.80);
        assert_eq!(s.curator.sections, ["strategy", "mistakes", "facts"]);
        assert_eq!(s.curator.max_content_bytes, 4096);
    }

    #[test]
    fn passwords_in_urls_are_not_printed() {
        assert_eq!(
            redact_url("postgres://agent:s3cret@db:5432/al"),
            "postgres://agent:***@db:5432/al"
        );
        assert_eq!(
            redact_url("redis://:s3cret@redis:6379/0"),
            "redis://***@redis:6379/0"
        );
        assert_eq!(redact_url("http://qdrant:6334"), "http://qdrant:6334");
        assert_eq!(
            redact_url("postgres://agent@db/al"),
            "postgres://agent@db/al"
        );
        // An @ in the path is not a password; a malformed URL still loses its secret.
        assert_eq!(redact_url("http://h/a@b"), "http://h/a@b");
        assert_eq!(redact_url("redis//:s3cret@x"), "***@x");
        let err = load_with(&[("queue.redis_url", "redis//:s3cret@x:6379")]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("queue.redis_url"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn blank_values_mean_unset() {
        // How a compose file or a manifest passes a variable the user left empty.
        let s = load_with(&[
            ("llm.api_key", " "),
            ("vector.qdrant_api_key", ""),
            ("database.url", ""),
            ("queue.redis_url", ""),
            ("telemetry.otlp_endpoint", ""),
        ])
        .unwrap();
        assert!(s.llm.api_key.is_none());
        assert!(s.vector.qdrant_api_key.is_none());
        assert!(s.database.url.is_none());
        assert!(s.queue.redis_url.is_none());
        assert!(s.telemetry.otlp_endpoint.is_none());
        let s = load_with(&[("llm.api_key", "sk-1")]).unwrap();
        assert!(s.llm.api_key.is_some());
    }

    #[test]
    fn tls_files_come_in_pairs_and_must_exist() {
        let dir = std::env::temp_dir().join(format!("al-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem = dir.join("x.pem");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let pem = pem.to_str().unwrap();
        let key = |r: Result<Settings, ConfigError>| match r.unwrap_err() {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("{other}"),
        };
        assert_eq!(key(load_with(&[("tls.cert", pem)])), "tls.key");
        assert_eq!(
            key(load_with(&[("tls.client_key", pem)])),
            "tls.client_cert"
        );
        assert_eq!(key(load_with(&[("tls.client_ca", pem)])), "tls.client_ca");
        assert_eq!(
            key(load_with(&[
                ("tls.cert", pem),
                ("tls.key", "/nonexistent.pem")
            ])),
            "tls.key"
        );
        let s = load_with(&[("tls.cert", pem), ("tls.key", pem), ("tls.ca", "")]).unwrap();
        assert!(s.tls.cert.is_some() && s.tls.ca.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn non_finite_threshold_names_the_key() {
        for bad in ["NaN", "inf", "1.5"] {
            let err = load_with(&[("curator.merge_threshold", bad)]).unwrap_err();
            assert!(
                err.to_string().contains("curator.merge_threshold"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn engine_thresholds_of_zero_name_their_key() {
        for key in [
            "vector.full_scan_threshold_kb",
            "vector.indexing_threshold_kb",
        ] {
            let err = load_with(&[(key, "0")]).unwrap_err();
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
        let s = load_with(&[("vector.full_scan_threshold_kb", "250")]).unwrap();
        assert_eq!(s.vector.full_scan_threshold_kb, 250);
        assert_eq!(s.vector.indexing_threshold_kb, 1000);
    }

    #[test]
    fn file_layer_applies_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[curator]\nmerge_threshold = 0.9\n").unwrap();
        let s = Settings::load(&Sources {
            file: Some(file.clone()),
            overrides: vec![],
        })
        .unwrap();
        assert_eq!(s.curator.merge_threshold, 0.9);

        std::fs::write(&file, "[curator]\nmerge_treshold = 0.9\n").unwrap();
        let err = Settings::load(&Sources {
            file: Some(file),
            overrides: vec![],
        })
        .unwrap_err();
        assert!(err.to_string().contains("merge_treshold"), "{err}");
    }

    #[test]
    fn llm_settings_are_checked() {
        let err = load_with(&[("llm.provider", "gpt")]).unwrap_err();
        assert!(err.to_string().contains("llm.provider"), "{err}");
        let err = load_with(&[("llm.provider", "openai")]).unwrap_err();
        assert!(err.to_string().contains("llm.model"), "{err}");
        let s = load_with(&[("llm.provider", "openai"), ("llm.model", "gpt-4o-mini")]).unwrap();
        assert_eq!(s.llm.base_url, "https://api.openai.com/v1");
    }

    #[test]
    fn bad_address_and_log_format_are_named() {
        let err = load_with(&[("server.addr", "nowhere")]).unwrap_err();
        assert!(err.to_string().contains("server.addr"), "{err}");
        let err = load_with(&[("telemetry.log_format", "xml")]).unwrap_err();
        assert!(err.to_string().contains("telemetry.log_format"), "{err}");
    }
}
