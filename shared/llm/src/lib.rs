//! Language models for agent-learning. Every learning stage talks to a model through
//! [`ChatModel`]: plain chat, plus the two structured outputs the system needs — text in named
//! sections (reflections) and exactly one of a list of options (actions). [`OpenAiChat`] speaks
//! to any OpenAI-compatible endpoint; its structured outputs are validated and repaired once.

mod budget;
mod llama;
mod local;
mod openai;
pub mod prompts;
mod structured;
#[cfg(feature = "testsuite")]
pub mod testsuite;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use agent_learning_config::PrefillWeights;
pub use budget::TokenBudget;
pub use local::{LocalModel, LocalOptions, chatml};
pub use openai::{OpenAiChat, OpenAiOptions};
pub use structured::{parse_choice, parse_sections};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatParams {
    pub max_tokens: u32,
    /// 0 is greedy.
    pub temperature: f32,
    pub seed: Option<u64>,
}

impl Default for ChatParams {
    fn default() -> Self {
        Self {
            max_tokens: 512,
            temperature: 0.0,
            seed: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
    pub fn add(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub usage: Usage,
}

/// Sections in order, each with its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Sections {
    pub sections: Vec<(String, String)>,
    pub usage: Usage,
}

impl Sections {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.sections
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, t)| t.as_str())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub index: usize,
    pub option: String,
    pub reasoning: String,
    pub usage: Usage,
}

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("token budget exhausted: {used} of {limit} tokens used")]
    BudgetExhausted { used: u64, limit: u64 },
    #[error("model endpoint: {0}")]
    Endpoint(String),
    #[error("model endpoint timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("model answered something unusable: {0}")]
    Malformed(String),
    #[error("model output still invalid after one repair: {0}")]
    InvalidOutput(String),
    #[error("model: {0}")]
    Model(String),
    /// The caller went away (a cancelled request, a passed deadline) and the work stopped.
    #[error("model work cancelled: the request was cancelled or its deadline passed")]
    Cancelled,
}

/// A chat model. `sections` and `choose` have prompt-and-validate defaults; a model that
/// controls its own decoding overrides them to be valid by construction.
#[async_trait]
pub trait ChatModel: Send + Sync {
    fn name(&self) -> &str;

    async fn chat(&self, messages: &[Message], params: &ChatParams)
    -> Result<Completion, LlmError>;

    /// Text in the named sections, in order, each non-empty and at most `max_chars` long.
    async fn sections(
        &self,
        messages: &[Message],
        names: &[&str],
        max_chars: usize,
    ) -> Result<Sections, LlmError> {
        structured::sections_by_prompt(self, messages, names, max_chars).await
    }

    /// Exactly one of `options`, with the model's reasoning.
    async fn choose(&self, messages: &[Message], options: &[String]) -> Result<Choice, LlmError> {
        structured::choose_by_prompt(self, messages, options).await
    }
}

/// The model the configuration names: the local SmolLM2 or an OpenAI-compatible endpoint.
pub fn open_chat_model(
    settings: &agent_learning_config::Settings,
) -> Result<std::sync::Arc<dyn ChatModel>, LlmError> {
    let llm = &settings.llm;
    let budget = if llm.token_budget == 0 {
        TokenBudget::unlimited()
    } else {
        TokenBudget::limited(llm.token_budget)
    };
    match llm.provider {
        agent_learning_config::LlmProvider::Openai => {
            let api_key = match (&llm.api_key, &llm.api_key_file) {
                (_, Some(file)) => Some(
                    std::fs::read_to_string(file)
                        .map_err(|e| LlmError::InvalidRequest(format!("llm.api_key_file: {e}")))?
                        .trim()
                        .to_owned()
                        .into(),
                ),
                (Some(key), None) => Some(key.clone()),
                (None, None) => None,
            };
            Ok(std::sync::Arc::new(Metered::new(OpenAiChat::new(
                OpenAiOptions {
                    base_url: llm.base_url.clone(),
                    model: llm.model.clone(),
                    api_key,
                    timeout: std::time::Duration::from_secs(llm.timeout_secs),
                    max_retries: llm.max_retries,
                    max_concurrency: llm.max_concurrency,
                    json_schema: llm.json_schema,
                    budget,
                },
            )?)))
        }
        agent_learning_config::LlmProvider::Local => Ok(std::sync::Arc::new(Metered::new(
            LocalModel::load(&LocalOptions {
                dir: agent_learning_embed::SMOLLM2.path(&settings.models_dir),
                threads: llm.threads,
                decide_lane: llm.decide_lane,
                decide_threads: llm.decide_threads,
                prefix_cache: llm.prefix_cache,
                prefill_weights: llm.prefill_weights,
            })?,
        ))),
    }
}

/// A model whose calls are measured for the Prometheus endpoint: tokens by kind
/// (`agent_learning_llm_tokens_total`), time per call (`agent_learning_llm_call_duration_seconds`)
/// and failures (`agent_learning_llm_errors_total`), each by call (`chat`, `sections`, `choose`).
pub struct Metered<M> {
    inner: M,
}

impl<M: ChatModel> Metered<M> {
    pub fn new(inner: M) -> Self {
        Self { inner }
    }

    fn record<T>(
        call: &'static str,
        started: std::time::Instant,
        result: &Result<T, LlmError>,
        usage: impl Fn(&T) -> Usage,
    ) {
        metrics::histogram!("agent_learning_llm_call_duration_seconds", "call" => call)
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(v) => {
                let u = usage(v);
                metrics::counter!("agent_learning_llm_tokens_total", "kind" => "prompt")
                    .increment(u.prompt_tokens);
                metrics::counter!("agent_learning_llm_tokens_total", "kind" => "completion")
                    .increment(u.completion_tokens);
            }
            Err(_) => {
                metrics::counter!("agent_learning_llm_errors_total", "call" => call).increment(1)
            }
        }
    }
}

#[async_trait]
impl<M: ChatModel> ChatModel for Metered<M> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn chat(
        &self,
        messages: &[Message],
        params: &ChatParams,
    ) -> Result<Completion, LlmError> {
        let started = std::time::Instant::now();
        let out = self.inner.chat(messages, params).await;
        Self::record("chat", started, &out, |c| c.usage);
        out
    }

    async fn sections(
        &self,
        messages: &[Message],
        names: &[&str],
        max_chars: usize,
    ) -> Result<Sections, LlmError> {
        let started = std::time::Instant::now();
        let out = self.inner.sections(messages, names, max_chars).await;
        Self::record("sections", started, &out, |s| s.usage);
        out
    }

    async fn choose(&self, messages: &[Message], options: &[String]) -> Result<Choice, LlmError> {
        let started = std::time::Instant::now();
        let out = self.inner.choose(messages, options).await;
        Self::record("choose", started, &out, |c| c.usage);
        out
    }
}

pub(crate) fn check_messages(messages: &[Message]) -> Result<(), LlmError> {
    if messages.is_empty() {
        return Err(LlmError::InvalidRequest(
            "messages: must not be empty".into(),
        ));
    }
    if messages.iter().all(|m| m.content.trim().is_empty()) {
        return Err(LlmError::InvalidRequest(
            "messages: every message is empty".into(),
        ));
    }
    Ok(())
}
