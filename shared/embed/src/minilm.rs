use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use tokenizers::{Tokenizer, TruncationParams};

use crate::bert::{Bert, Config, Tokens};
use crate::{EmbedError, Embedder};

/// sentence-transformers' all-MiniLM-L6-v2 reads at most 256 word pieces.
const MAX_TOKENS: usize = 256;
const FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// all-MiniLM-L6-v2: BERT encoder, mask-aware mean pooling, L2 normalisation.
pub struct MiniLm {
    inner: Arc<Inner>,
    batch_size: usize,
}

struct Inner {
    model: Bert,
    tokenizer: Tokenizer,
}

impl MiniLm {
    pub const MODEL_ID: &'static str = "all-minilm-l6-v2/mean/l2";
    pub const DIM: usize = 384;

    /// Loads the model from `dir` (see [`crate::MINILM`] for where `models fetch` puts it).
    pub fn load(dir: &Path, batch_size: usize) -> Result<Self, EmbedError> {
        let missing: Vec<&str> = FILES
            .iter()
            .copied()
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            return Err(EmbedError::Missing {
                dir: dir.display().to_string(),
                missing: missing.join(", "),
            });
        }
        let path = |f: &str| -> PathBuf { dir.join(f) };
        let config: Config = serde_json::from_slice(
            &std::fs::read(path("config.json")).map_err(|e| EmbedError::Model(e.to_string()))?,
        )
        .map_err(|e| EmbedError::Model(format!("config.json: {e}")))?;
        let mut tokenizer = Tokenizer::from_file(path("tokenizer.json"))
            .map_err(|e| EmbedError::Model(format!("tokenizer.json: {e}")))?;
        // The packaged tokenizer pads every input to a fixed 128 tokens; the encoder packs a
        // batch's texts without padding instead. Truncate at the model's 256.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| EmbedError::Model(format!("tokenizer truncation: {e}")))?;
        let weights = std::fs::read(path("model.safetensors"))
            .map_err(|e| EmbedError::Model(format!("model.safetensors: {e}")))?;
        let model = Bert::load(&config, &weights).map_err(EmbedError::Model)?;
        Ok(Self {
            inner: Arc::new(Inner { model, tokenizer }),
            batch_size: batch_size.max(1),
        })
    }
}

impl Inner {
    fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Model(format!("tokenize: {e}")))?;
        let tokens: Vec<Tokens<'_>> = encodings
            .iter()
            .map(|e| Tokens {
                ids: e.get_ids(),
                types: e.get_type_ids(),
            })
            .collect();
        self.model.embed(&tokens).map_err(EmbedError::Model)
    }
}

#[async_trait]
impl Embedder for MiniLm {
    fn dim(&self) -> usize {
        Self::DIM
    }

    fn model_id(&self) -> &str {
        Self::MODEL_ID
    }

    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let inner = self.inner.clone();
        let batch = self.batch_size;
        tokio::task::spawn_blocking(move || {
            // The encoder packs a batch without padding, so texts of any lengths share one
            // batch at no cost: batches in order.
            let mut out = Vec::with_capacity(texts.len());
            for chunk in texts.chunks(batch) {
                out.extend(inner.embed_batch(chunk)?);
            }
            Ok(out)
        })
        .await
        .map_err(|e| EmbedError::Worker(e.to_string()))?
    }
}
