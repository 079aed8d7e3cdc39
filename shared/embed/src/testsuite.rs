//! An embedder for tests and benchmarks (feature `testsuite`, off by default): deterministic
//! pseudo-random unit vectors keyed by text, so the same text always gets the same vector and
//! different texts are nearly orthogonal. It measures nothing about meaning.

use std::sync::Mutex;

use async_trait::async_trait;

use crate::{EmbedError, Embedder};

/// Records every text it is asked to embed; a text's vector is its length, `dim` times.
/// For tests of what is embedded again and what is not.
pub struct Counting {
    pub dim: usize,
    pub asked: Mutex<Vec<String>>,
}

impl Counting {
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            asked: Mutex::new(Vec::new()),
        }
    }

    /// Every text asked for so far, in order.
    pub fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn clear(&self) {
        self.asked.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[async_trait]
impl Embedder for Counting {
    fn dim(&self) -> usize {
        self.dim
    }

    fn model_id(&self) -> &str {
        "counting"
    }

    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.asked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(texts.iter().cloned());
        Ok(texts
            .iter()
            .map(|t| vec![t.len() as f32; self.dim])
            .collect())
    }
}

/// The dimension of MiniLM, so indexes built with either look alike.
pub const HASH_DIM: usize = 384;

pub struct HashEmbedder;

#[async_trait]
impl Embedder for HashEmbedder {
    fn dim(&self) -> usize {
        HASH_DIM
    }

    fn model_id(&self) -> &str {
        "test-hash"
    }

    async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(texts.iter().map(|t| hash_vector(t)).collect())
    }
}

/// The unit vector of `text`.
pub fn hash_vector(text: &str) -> Vec<f32> {
    let mut state: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        state = (state ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut v: Vec<f32> = (0..HASH_DIM)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f32 / (1u64 << 53) as f32 - 0.5
        })
        .collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}
