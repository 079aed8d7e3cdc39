use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

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
    model: BertModel,
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
        // The packaged tokenizer pads every input to a fixed 128 tokens: pad to the longest in
        // the batch instead (the mask keeps padding out of the mean), and truncate at 256.
        let pad = tokenizer.get_padding().cloned().unwrap_or_default();
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..pad
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| EmbedError::Model(format!("tokenizer truncation: {e}")))?;
        let weights = std::fs::read(path("model.safetensors"))
            .map_err(|e| EmbedError::Model(format!("model.safetensors: {e}")))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
            .map_err(|e| EmbedError::Model(format!("model.safetensors: {e}")))?;
        let model =
            BertModel::load(vb, &config).map_err(|e| EmbedError::Model(format!("bert: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner { model, tokenizer }),
            batch_size: batch_size.max(1),
        })
    }
}

impl Inner {
    fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let err = |e: candle_core::Error| EmbedError::Model(e.to_string());
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Model(format!("tokenize: {e}")))?;
        let n = encodings.len();
        let len = encodings.first().map_or(0, |e| e.get_ids().len());
        let mut ids = Vec::with_capacity(n * len);
        let mut types = Vec::with_capacity(n * len);
        let mut mask = Vec::with_capacity(n * len);
        for e in &encodings {
            ids.extend_from_slice(e.get_ids());
            types.extend_from_slice(e.get_type_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        let dev = Device::Cpu;
        let ids = Tensor::from_vec(ids, (n, len), &dev).map_err(err)?;
        let types = Tensor::from_vec(types, (n, len), &dev).map_err(err)?;
        let mask = Tensor::from_vec(mask, (n, len), &dev).map_err(err)?;
        let hidden = self.model.forward(&ids, &types, Some(&mask)).map_err(err)?;
        // Mean over real tokens only: padding must not dilute short sentences.
        let maskf = mask
            .to_dtype(DType::F32)
            .map_err(err)?
            .unsqueeze(2)
            .map_err(err)?;
        let summed = hidden
            .broadcast_mul(&maskf)
            .map_err(err)?
            .sum(1)
            .map_err(err)?;
        let counts = maskf
            .sum(1)
            .map_err(err)?
            .clamp(1e-9, f64::MAX)
            .map_err(err)?;
        let mean = summed.broadcast_div(&counts).map_err(err)?;
        let norm = mean
            .sqr()
            .map_err(err)?
            .sum_keepdim(1)
            .map_err(err)?
            .sqrt()
            .map_err(err)?
            .clamp(1e-12, f64::MAX)
            .map_err(err)?;
        mean.broadcast_div(&norm)
            .map_err(err)?
            .to_vec2::<f32>()
            .map_err(err)
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
            // Similar lengths in one batch waste less work on padding.
            let mut order: Vec<usize> = (0..texts.len()).collect();
            order.sort_by_key(|&i| texts[i].len());
            let mut out = vec![Vec::new(); texts.len()];
            for chunk in order.chunks(batch) {
                let batch_texts: Vec<String> = chunk.iter().map(|&i| texts[i].clone()).collect();
                for (&i, v) in chunk.iter().zip(inner.embed_batch(&batch_texts)?) {
                    out[i] = v;
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| EmbedError::Worker(e.to_string()))?
    }
}
