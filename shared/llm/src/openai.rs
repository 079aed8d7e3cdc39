//! Any OpenAI-compatible chat endpoint (OpenAI, OpenRouter, vLLM, Ollama, llama.cpp server)
//! through `async-openai`, with our own retry policy, a concurrency limit and a token budget.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::{HttpRequestFactory, ReqwestService};
use async_trait::async_trait;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::structured::{ask_validated, check_options, parse_choice};
use crate::{
    ChatModel, ChatParams, Choice, Completion, LlmError, Message, Sections, TokenBudget, Usage,
};

#[derive(Debug, Clone)]
pub struct OpenAiOptions {
    /// e.g. `https://openrouter.ai/api/v1` or `http://127.0.0.1:8080/v1`.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<SecretString>,
    /// Per attempt.
    pub timeout: Duration,
    pub max_retries: u32,
    pub max_concurrency: usize,
    /// Whether the provider honours `response_format: json_schema`; else structured outputs
    /// are asked for in the prompt and parsed.
    pub json_schema: bool,
    pub budget: TokenBudget,
}

/// Retries 429, 5xx, timeouts and connection failures with exponential backoff and full
/// jitter, waiting at least what `Retry-After` asks for.
#[derive(Clone, Debug)]
struct RetryPolicy {
    max_retries: u32,
    attempt: u32,
}

fn jitter_fraction(attempt: u32) -> f64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut x = u64::from(nanos) ^ (u64::from(attempt) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let v = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?;
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(120.0)))
}

impl tower::retry::Policy<HttpRequestFactory, reqwest::Response, OpenAIError> for RetryPolicy {
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>;

    fn retry(
        &mut self,
        _req: &mut HttpRequestFactory,
        result: &mut Result<reqwest::Response, OpenAIError>,
    ) -> Option<Self::Future> {
        if self.attempt >= self.max_retries {
            return None;
        }
        let asked = match result {
            Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => retry_after(r),
            Err(OpenAIError::Reqwest(e)) if e.is_timeout() || e.is_connect() => None,
            _ => return None,
        };
        let base = Duration::from_millis(200).saturating_mul(1 << self.attempt.min(10));
        let backoff = base
            .min(Duration::from_secs(10))
            .mul_f64(0.5 + 0.5 * jitter_fraction(self.attempt));
        let delay = asked.map_or(backoff, |a| a.max(backoff));
        self.attempt += 1;
        tracing::warn!(
            attempt = self.attempt,
            delay_ms = delay.as_millis() as u64,
            "retrying model call"
        );
        Some(Box::pin(tokio::time::sleep(delay)))
    }

    fn clone_request(&mut self, req: &HttpRequestFactory) -> Option<HttpRequestFactory> {
        Some(req.clone())
    }
}

pub struct OpenAiChat {
    client: Client<OpenAIConfig>,
    model: String,
    limit: Arc<Semaphore>,
    budget: TokenBudget,
    json_schema: bool,
    timeout: Duration,
}

fn endpoint_error(e: OpenAIError, timeout: Duration) -> LlmError {
    match e {
        OpenAIError::Reqwest(e) if e.is_timeout() => LlmError::Timeout(timeout),
        OpenAIError::JSONDeserialize(e, _) => LlmError::Malformed(format!("response body: {e}")),
        other => LlmError::Endpoint(other.to_string()),
    }
}

impl OpenAiChat {
    pub fn new(opts: OpenAiOptions) -> Result<Self, LlmError> {
        if opts.model.trim().is_empty() {
            return Err(LlmError::InvalidRequest(
                "llm.model: must name a model".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(opts.timeout)
            .build()
            .map_err(|e| LlmError::Endpoint(e.to_string()))?;
        let service = tower::ServiceBuilder::new()
            .retry(RetryPolicy {
                max_retries: opts.max_retries,
                attempt: 0,
            })
            .service(ReqwestService::new(http));
        let mut config = OpenAIConfig::new().with_api_base(opts.base_url.trim_end_matches('/'));
        config = config.with_api_key(
            opts.api_key
                .as_ref()
                .map(|k| k.expose_secret().to_owned())
                .unwrap_or_default(),
        );
        Ok(Self {
            client: Client::with_config(config).with_http_service(service),
            model: opts.model,
            limit: Arc::new(Semaphore::new(opts.max_concurrency.max(1))),
            budget: opts.budget,
            json_schema: opts.json_schema,
            timeout: opts.timeout,
        })
    }

    pub fn budget(&self) -> &TokenBudget {
        &self.budget
    }

    async fn complete(
        &self,
        messages: &[Message],
        params: &ChatParams,
        response_format: Option<&Value>,
    ) -> Result<Completion, LlmError> {
        crate::check_messages(messages)?;
        self.budget.check()?;
        let _permit = self
            .limit
            .acquire()
            .await
            .map_err(|_| LlmError::Endpoint("client closed".into()))?;
        let mut request = json!({
            "model": self.model,
            "messages": messages,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "stream": false,
        });
        if let Some(seed) = params.seed {
            request["seed"] = json!(seed);
        }
        if let Some(format) = response_format {
            request["response_format"] = format.clone();
        }
        let response: Value = self
            .client
            .chat()
            .create_byot(request)
            .await
            .map_err(|e| endpoint_error(e, self.timeout))?;
        let text = response["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| LlmError::Malformed("no choices[0].message.content".into()))?
            .to_owned();
        let usage = Usage {
            prompt_tokens: response["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            completion_tokens: response["usage"]["completion_tokens"].as_u64().unwrap_or(0),
        };
        self.budget.record(usage);
        Ok(Completion { text, usage })
    }
}

fn schema_format(name: &str, schema: Value) -> Value {
    json!({"type": "json_schema", "json_schema": {"name": name, "strict": true, "schema": schema}})
}

#[async_trait]
impl ChatModel for OpenAiChat {
    fn name(&self) -> &str {
        &self.model
    }

    async fn chat(
        &self,
        messages: &[Message],
        params: &ChatParams,
    ) -> Result<Completion, LlmError> {
        self.complete(messages, params, None).await
    }

    async fn sections(
        &self,
        messages: &[Message],
        names: &[&str],
        max_chars: usize,
    ) -> Result<Sections, LlmError> {
        if !self.json_schema {
            return crate::structured::sections_by_prompt(self, messages, names, max_chars).await;
        }
        crate::structured::check_sections_request(messages, names)?;
        let properties: serde_json::Map<String, Value> = names
            .iter()
            .map(|n| {
                (
                    (*n).to_owned(),
                    json!({"type": "string", "maxLength": max_chars}),
                )
            })
            .collect();
        let format = schema_format(
            "sections",
            json!({"type": "object", "properties": properties, "required": names,
                   "additionalProperties": false}),
        );
        let msgs = crate::structured::with_instruction(
            messages,
            format!(
                "Answer as a JSON object with the string fields {}, each non-empty.",
                names.join(", ")
            ),
        );
        let params = ChatParams::default();
        let call = |m: Vec<Message>| {
            let (params, format) = (&params, &format);
            async move { self.complete(&m, params, Some(format)).await }
        };
        let parse = |text: &str| -> Result<Vec<(String, String)>, String> {
            let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
            names
                .iter()
                .map(|n| match v[*n].as_str().map(str::trim) {
                    Some(t) if !t.is_empty() => {
                        Ok(((*n).to_owned(), t.chars().take(max_chars).collect()))
                    }
                    _ => Err(format!("field {n} is missing or empty")),
                })
                .collect()
        };
        let (sections, usage) = ask_validated(msgs, call, parse).await?;
        Ok(Sections { sections, usage })
    }

    async fn choose(&self, messages: &[Message], options: &[String]) -> Result<Choice, LlmError> {
        if !self.json_schema {
            return crate::structured::choose_by_prompt(self, messages, options).await;
        }
        crate::check_messages(messages)?;
        check_options(options)?;
        let format = schema_format(
            "choice",
            json!({"type": "object",
                   "properties": {"reasoning": {"type": "string"},
                                  "choice": {"type": "string", "enum": options}},
                   "required": ["reasoning", "choice"], "additionalProperties": false}),
        );
        let msgs = crate::structured::with_instruction(
            messages,
            format!(
                "Choose exactly one of: {}. Answer as JSON with \"reasoning\" and \"choice\".",
                options.join(", ")
            ),
        );
        let params = ChatParams {
            max_tokens: 256,
            ..Default::default()
        };
        let call = |m: Vec<Message>| {
            let (params, format) = (&params, &format);
            async move { self.complete(&m, params, Some(format)).await }
        };
        let ((index, reasoning), usage) =
            ask_validated(msgs, call, |t| parse_choice(t, options)).await?;
        Ok(Choice {
            index,
            option: options[index].clone(),
            reasoning,
            usage,
        })
    }
}
