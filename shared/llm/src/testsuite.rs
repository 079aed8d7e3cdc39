//! A model for tests and benchmarks (feature `testsuite`, off by default): it answers every
//! request at once, in the format the request asks for, so what is measured or tested is the
//! framework around the model.

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
        let last = messages.last().map(|m| m.content.as_str()).unwrap_or("");
        let text = if last.contains("Answer in exactly these sections") {
            let all: String = messages.iter().map(|m| m.content.as_str()).collect();
            let action = all
                .split("Expert action: ")
                .nth(1)
                .and_then(|r| r.lines().next())
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
        };
        Ok(Completion {
            text,
            usage: Usage {
                prompt_tokens: 1,
                completion_tokens: 1,
            },
        })
    }
}
