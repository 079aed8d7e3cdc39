//! A model for tests and benchmarks (feature `testsuite`, off by default): it answers every
//! request at once, in the format the request asks for, so what is measured or tested is the
//! framework around the model. [`ScriptedEndpoint`] serves the same answers as an
//! OpenAI-compatible HTTP endpoint, for tests of real processes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::{ChatModel, ChatParams, Completion, LlmError, Message, Usage};

/// Answers at once: four sections that name the expert's action for a reflection, the first
/// option for a choice, a fixed state for anything else.
pub struct InstantModel;

#[async_trait]
impl ChatModel for InstantModel {
    fn name(&self) -> &str {
        "zero-latency"
    }

    async fn chat(&self, messages: &[Message], _: &ChatParams) -> Result<Completion, LlmError> {
        Ok(Completion {
            text: instant_answer(messages),
            usage: Usage {
                prompt_tokens: 1,
                completion_tokens: 1,
            },
        })
    }
}

/// What [`InstantModel`] answers to `messages`.
fn instant_answer(messages: &[Message]) -> String {
    let last = messages.last().map(|m| m.content.as_str()).unwrap_or("");
    if last.contains("Answer in exactly these sections") {
        let all: String = messages.iter().map(|m| m.content.as_str()).collect();
        // The action at stake: the expert's at a branch point, else an episode's first.
        let action = all
            .split("The expert chose ")
            .nth(1)
            .and_then(|r| r.split(", which").next())
            .or_else(|| {
                all.split("\nAction: ")
                    .nth(1)
                    .and_then(|r| r.lines().next())
                    .map(|a| a.split(" (").next().unwrap_or(a))
            })
            .unwrap_or("keep");
        format!(
            "Situation: A state of the task.\nEvaluation: {action} fits it.\nAlternatives: The others were worse.\nConclusion: Prefer {action} in states like this one."
        )
    } else if last.contains("Answer as JSON") {
        let choice = last
            .split("Options:\n- ")
            .nth(1)
            .and_then(|r| r.lines().next())
            .unwrap_or("");
        format!("{{\"reasoning\": \"instant\", \"choice\": \"{choice}\"}}")
    } else {
        "speed=10 lane=1".into()
    }
}

/// An OpenAI-compatible chat endpoint on loopback answering as [`InstantModel`] does, after
/// `delay` (a slow model keeps work in flight long enough to kill a process during it).
/// Point a process at it with `llm.provider = "openai"` and `llm.base_url = uri()`.
pub struct ScriptedEndpoint {
    server: wiremock::MockServer,
    calls: Arc<AtomicUsize>,
}

impl ScriptedEndpoint {
    pub async fn start(delay: Duration) -> Self {
        let server = wiremock::MockServer::start().await;
        let calls = Arc::new(AtomicUsize::new(0));
        wiremock::Mock::given(wiremock::matchers::method("POST"))
            .respond_with(Answer {
                delay,
                calls: calls.clone(),
            })
            .mount(&server)
            .await;
        Self { server, calls }
    }

    /// The base URL, `http://127.0.0.1:PORT/v1`.
    pub fn uri(&self) -> String {
        format!("{}/v1", self.server.uri())
    }

    /// Chat completions answered so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The messages of every request received so far, each request's joined by newlines:
    /// what the model was shown.
    pub async fn prompts(&self) -> Vec<String> {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .map(|r| {
                let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                body["messages"]
                    .as_array()
                    .map(|m| {
                        m.iter()
                            .filter_map(|m| m["content"].as_str())
                            .collect::<Vec<_>>()
                            .join("\n")
                    })
                    .unwrap_or_default()
            })
            .collect()
    }
}

struct Answer {
    delay: Duration,
    calls: Arc<AtomicUsize>,
}

impl wiremock::Respond for Answer {
    fn respond(&self, req: &wiremock::Request) -> wiremock::ResponseTemplate {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
        let messages: Vec<Message> = body["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|m| Message::user(m["content"].as_str().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        wiremock::ResponseTemplate::new(200)
            .set_body_json(serde_json::json!({
                "id": "instant", "object": "chat.completion", "created": 0, "model": "instant",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": instant_answer(&messages)}}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140}
            }))
            .set_delay(self.delay)
    }
}
