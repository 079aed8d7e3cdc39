//! The OpenAI-compatible client against a local mock HTTP server.

use std::time::{Duration, Instant};

use agent_learning_llm::{
    ChatModel, ChatParams, LlmError, Message, OpenAiChat, OpenAiOptions, TokenBudget,
};
use serde_json::json;
use wiremock::matchers::{body_partial_json, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

fn reply(text: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "x", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
    }))
}

fn client(server: &MockServer, budget: TokenBudget, json_schema: bool) -> OpenAiChat {
    OpenAiChat::new(OpenAiOptions {
        base_url: format!("{}/v1", server.uri()),
        model: "test-model".into(),
        api_key: Some("sk-test".to_string().into()),
        timeout: Duration::from_millis(800),
        max_retries: 2,
        max_concurrency: 4,
        json_schema,
        budget,
    })
    .unwrap()
}

fn hello() -> Vec<Message> {
    vec![Message::system("You drive."), Message::user("Hello")]
}

/// Answers with each template in turn, then the last one forever.
struct Sequence(std::sync::Mutex<Vec<ResponseTemplate>>);

impl Respond for Sequence {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let mut v = self.0.lock().unwrap();
        if v.len() > 1 {
            v.remove(0)
        } else {
            v[0].clone()
        }
    }
}

#[tokio::test]
async fn success_sends_the_request_and_counts_tokens() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .and(body_partial_json(
            json!({"model": "test-model", "temperature": 0.0}),
        ))
        .respond_with(reply("hi there"))
        .expect(1)
        .mount(&server)
        .await;
    let budget = TokenBudget::unlimited();
    let c = client(&server, budget.clone(), false);
    let out = c.chat(&hello(), &ChatParams::default()).await.unwrap();
    assert_eq!(out.text, "hi there");
    assert_eq!(
        (out.usage.prompt_tokens, out.usage.completion_tokens),
        (11, 5)
    );
    assert_eq!(budget.used(), 16);
    let req = &server.received_requests().await.unwrap()[0];
    assert_eq!(req.headers["authorization"], "Bearer sk-test");
}

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out_then_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(Sequence(std::sync::Mutex::new(vec![
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_json(json!({"error": {"message": "slow down", "type": "rate_limit"}})),
            reply("after the wait"),
        ])))
        .mount(&server)
        .await;
    let c = client(&server, TokenBudget::unlimited(), false);
    let started = Instant::now();
    let out = c.chat(&hello(), &ChatParams::default()).await.unwrap();
    assert_eq!(out.text, "after the wait");
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After honoured"
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_500_is_retried_and_persistent_failure_is_an_error() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(Sequence(std::sync::Mutex::new(vec![
            ResponseTemplate::new(500).set_body_string("boom"),
            reply("recovered"),
        ])))
        .mount(&server)
        .await;
    let c = client(&server, TokenBudget::unlimited(), false);
    assert_eq!(
        c.chat(&hello(), &ChatParams::default()).await.unwrap().text,
        "recovered"
    );

    let down = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503).set_body_string("down"))
        .mount(&down)
        .await;
    let c = client(&down, TokenBudget::unlimited(), false);
    let err = c.chat(&hello(), &ChatParams::default()).await.unwrap_err();
    assert!(matches!(err, LlmError::Endpoint(_)), "{err}");
    assert_eq!(
        down.received_requests().await.unwrap().len(),
        3,
        "1 try + 2 retries"
    );
}

#[tokio::test]
async fn a_timeout_is_retried_then_reported() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(reply("too late").set_delay(Duration::from_secs(3)))
        .mount(&server)
        .await;
    let c = client(&server, TokenBudget::unlimited(), false);
    let err = c.chat(&hello(), &ChatParams::default()).await.unwrap_err();
    assert!(matches!(err, LlmError::Timeout(_)), "{err}");
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
}

#[tokio::test]
async fn a_malformed_body_is_a_typed_error() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{not json"))
        .mount(&server)
        .await;
    let c = client(&server, TokenBudget::unlimited(), false);
    let err = c.chat(&hello(), &ChatParams::default()).await.unwrap_err();
    assert!(matches!(err, LlmError::Malformed(_)), "{err}");

    let empty = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"choices": []})))
        .mount(&empty)
        .await;
    let c = client(&empty, TokenBudget::unlimited(), false);
    assert!(matches!(
        c.chat(&hello(), &ChatParams::default()).await,
        Err(LlmError::Malformed(_))
    ));
}

#[tokio::test]
async fn an_exhausted_budget_refuses_the_call_before_sending() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(reply("ok"))
        .mount(&server)
        .await;
    let c = client(&server, TokenBudget::limited(20), false);
    c.chat(&hello(), &ChatParams::default()).await.unwrap();
    c.chat(&hello(), &ChatParams::default()).await.unwrap();
    let err = c.chat(&hello(), &ChatParams::default()).await.unwrap_err();
    assert!(
        matches!(
            err,
            LlmError::BudgetExhausted {
                used: 32,
                limit: 20
            }
        ),
        "{err}"
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn empty_messages_and_options_are_refused() {
    let server = MockServer::start().await;
    let c = client(&server, TokenBudget::unlimited(), false);
    assert!(matches!(
        c.chat(&[], &ChatParams::default()).await,
        Err(LlmError::InvalidRequest(_))
    ));
    assert!(matches!(
        c.choose(&hello(), &[]).await,
        Err(LlmError::InvalidRequest(_))
    ));
    assert!(server.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn choose_repairs_once_then_fails_with_a_typed_error() {
    let options: Vec<String> = ["brake", "accelerate"].map(String::from).to_vec();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(Sequence(std::sync::Mutex::new(vec![
            reply("I would fly over the traffic."),
            reply("{\"reasoning\": \"gap closing\", \"choice\": \"brake\"}"),
        ])))
        .mount(&server)
        .await;
    let c = client(&server, TokenBudget::unlimited(), false);
    let choice = c.choose(&hello(), &options).await.unwrap();
    assert_eq!((choice.index, choice.option.as_str()), (0, "brake"));
    assert_eq!(choice.usage.total(), 32, "both calls counted");
    let second = &server.received_requests().await.unwrap()[1];
    let body: serde_json::Value = second.body_json().unwrap();
    let last = body["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(last.contains("could not be used"), "{last}");

    let stubborn = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(reply("maybe fly"))
        .mount(&stubborn)
        .await;
    let c = client(&stubborn, TokenBudget::unlimited(), false);
    assert!(matches!(
        c.choose(&hello(), &options).await,
        Err(LlmError::InvalidOutput(_))
    ));
    assert_eq!(stubborn.received_requests().await.unwrap().len(), 2);
}

#[tokio::test]
async fn json_schema_mode_sends_the_schema_and_reads_sections() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(body_partial_json(
            json!({"response_format": {"type": "json_schema"}}),
        ))
        .respond_with(reply(
            r#"{"Situation": "slow car ahead", "Evaluation": "braking kept the gap",
                "Alternatives": "overtaking was unsafe", "Conclusion": "brake early"}"#,
        ))
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server, TokenBudget::unlimited(), true);
    let names = ["Situation", "Evaluation", "Alternatives", "Conclusion"];
    let s = c.sections(&hello(), &names, 200).await.unwrap();
    assert_eq!(s.get("Conclusion"), Some("brake early"));
    assert_eq!(s.sections.len(), 4);
}
