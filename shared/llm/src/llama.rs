//! The llama architecture over quantized weights from a GGUF file, with a KV cache that can be
//! cut back to any length. Derived from candle-transformers' `quantized_llama` (MIT or
//! Apache-2.0, the HuggingFace candle authors), dense models only. What differs: the cache
//! is kept between calls and [`Llama::truncate`] cuts it back to a shared prefix, and several
//! tokens can be fed at any position (the causal mask is offset by what the cache holds), so
//! a prompt that starts like the previous one computes only its new tokens.

use candle_core::quantized::{QMatMul, QTensor, gguf_file};
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::Embedding;

/// Positions the rotary tables cover: the longest context a session may reach.
pub const MAX_SEQ_LEN: usize = 4096;

#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    fn new(weight: QTensor, eps: f32) -> Result<Self> {
        let weight = weight.dequantize(&Device::Cpu)?;
        Ok(Self { weight, eps })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}

#[derive(Debug, Clone)]
struct Layer {
    wq: QMatMul,
    wk: QMatMul,
    wv: QMatMul,
    wo: QMatMul,
    attn_norm: RmsNorm,
    gate: QMatMul,
    down: QMatMul,
    up: QMatMul,
    ffn_norm: RmsNorm,
    /// Keys and values of every position so far, `(1, kv_heads, len, head_dim)` each.
    cache: Option<(Tensor, Tensor)>,
}

/// The model's weights (shared between clones: reference-counted) and its own KV cache.
#[derive(Debug, Clone)]
pub struct Llama {
    embeddings: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: QMatMul,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    cos: Tensor,
    sin: Tensor,
    /// The tokens the cache holds, in order.
    tokens: Vec<u32>,
}

fn repeat_kv(x: Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x);
    }
    let (b, heads, len, dim) = x.dims4()?;
    Tensor::cat(&vec![&x; n], 2)?.reshape((b, heads * n, len, dim))
}

impl Llama {
    pub fn from_gguf<R: std::io::Seek + std::io::Read>(
        ct: gguf_file::Content,
        reader: &mut R,
    ) -> Result<Self> {
        let device = &Device::Cpu;
        let get = |key: &str| match ct.metadata.get(key) {
            Some(v) => Ok(v),
            None => candle_core::bail!("the model file has no {key}"),
        };
        if get("llama.expert_count")
            .and_then(|v| v.to_u32())
            .unwrap_or(0)
            > 1
        {
            candle_core::bail!("mixture-of-experts models are not supported");
        }
        let heads = get("llama.attention.head_count")?.to_u32()? as usize;
        let kv_heads = get("llama.attention.head_count_kv")?.to_u32()? as usize;
        let blocks = get("llama.block_count")?.to_u32()? as usize;
        let hidden = get("llama.embedding_length")?.to_u32()? as usize;
        let rope_dim = get("llama.rope.dimension_count")?.to_u32()? as usize;
        let eps = get("llama.attention.layer_norm_rms_epsilon")?.to_f32()?;
        let rope_base = get("llama.rope.freq_base")
            .and_then(|m| m.to_f32())
            .unwrap_or(10000f32);
        if heads == 0
            || kv_heads == 0
            || !heads.is_multiple_of(kv_heads)
            || !hidden.is_multiple_of(heads)
        {
            candle_core::bail!(
                "bad head counts: {heads} heads, {kv_heads} KV heads, {hidden} wide"
            );
        }

        let theta: Vec<f32> = (0..rope_dim)
            .step_by(2)
            .map(|i| 1f32 / rope_base.powf(i as f32 / rope_dim as f32))
            .collect();
        let theta = Tensor::new(theta.as_slice(), device)?;
        let angles = Tensor::arange(0, MAX_SEQ_LEN as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((MAX_SEQ_LEN, 1))?
            .matmul(&theta.reshape((1, theta.elem_count()))?)?;

        let embeddings_q = ct.tensor(reader, "token_embd.weight", device)?;
        let embeddings = embeddings_q.dequantize(device)?;
        let norm = RmsNorm::new(ct.tensor(reader, "output_norm.weight", device)?, eps)?;
        let output = match ct.tensor(reader, "output.weight", device) {
            Ok(t) => t,
            Err(_) => embeddings_q,
        };
        let mut layers = Vec::with_capacity(blocks);
        for i in 0..blocks {
            let mut t = |name: &str| ct.tensor(reader, &format!("blk.{i}.{name}.weight"), device);
            let q = |t: QTensor| QMatMul::from_qtensor(t);
            layers.push(Layer {
                wq: q(t("attn_q")?)?,
                wk: q(t("attn_k")?)?,
                wv: q(t("attn_v")?)?,
                wo: q(t("attn_output")?)?,
                attn_norm: RmsNorm::new(t("attn_norm")?, eps)?,
                gate: q(t("ffn_gate")?)?,
                down: q(t("ffn_down")?)?,
                up: q(t("ffn_up")?)?,
                ffn_norm: RmsNorm::new(t("ffn_norm")?, eps)?,
                cache: None,
            });
        }
        Ok(Self {
            embeddings: Embedding::new(embeddings, hidden),
            layers,
            norm,
            output: QMatMul::from_qtensor(output)?,
            heads,
            kv_heads,
            head_dim: hidden / heads,
            cos: angles.cos()?,
            sin: angles.sin()?,
            tokens: Vec::new(),
        })
    }

    /// The tokens the cache holds, in order.
    pub fn cached(&self) -> &[u32] {
        &self.tokens
    }

    /// Cuts the cache back to its first `len` positions (no-op when it holds fewer).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.tokens.len() {
            return Ok(());
        }
        for layer in &mut self.layers {
            layer.cache = match (len, layer.cache.take()) {
                (0, _) | (_, None) => None,
                (_, Some((k, v))) => Some((
                    k.narrow(2, 0, len)?.contiguous()?,
                    v.narrow(2, 0, len)?.contiguous()?,
                )),
            };
        }
        self.tokens.truncate(len);
        Ok(())
    }

    /// Empties the cache.
    pub fn clear(&mut self) {
        for layer in &mut self.layers {
            layer.cache = None;
        }
        self.tokens.clear();
    }

    /// Feeds `ids` after what the cache holds and returns the logits of the last one.
    /// Positions past [`MAX_SEQ_LEN`] fail (the rotary tables end there). On an error the
    /// cache is emptied (some layers may have taken the new positions already).
    pub fn forward(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.is_empty() {
            candle_core::bail!("no tokens to feed");
        }
        match self.feed(ids) {
            Ok(logits) => {
                self.tokens.extend_from_slice(ids);
                Ok(logits)
            }
            Err(e) => {
                self.clear();
                Err(e)
            }
        }
    }

    fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let (pos, n) = (self.tokens.len(), ids.len());
        let device = &Device::Cpu;
        // Query i (at position pos + i) sees keys 0..=pos + i.
        let mask = if n == 1 {
            None
        } else {
            let m: Vec<u8> = (0..n)
                .flat_map(|i| (0..pos + n).map(move |j| u8::from(j > pos + i)))
                .collect();
            Some(Tensor::from_slice(&m, (n, pos + n), device)?)
        };
        let neg_inf = Tensor::new(f32::NEG_INFINITY, device)?;
        let cos = self.cos.narrow(0, pos, n)?;
        let sin = self.sin.narrow(0, pos, n)?;
        let (heads, kv_heads, head_dim) = (self.heads, self.kv_heads, self.head_dim);
        let scale = 1.0 / (head_dim as f64).sqrt();
        let input = Tensor::new(ids, device)?.unsqueeze(0)?;
        let mut x = self.embeddings.forward(&input)?;
        for layer in &mut self.layers {
            let residual = &x;
            let h = layer.attn_norm.forward(&x)?;
            let (b, _, hidden) = h.dims3()?;
            // (1, n, hidden) -> (1, heads, n, head_dim)
            let project = |w: &QMatMul, heads: usize| {
                w.forward(&h)?
                    .reshape((b, n, heads, head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = project(&layer.wq, heads)?;
            let k = project(&layer.wk, kv_heads)?;
            let v = project(&layer.wv, kv_heads)?;
            let q = candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?;
            let (k, v) = match &layer.cache {
                Some((kc, vc)) => (Tensor::cat(&[kc, &k], 2)?, Tensor::cat(&[vc, &v], 2)?),
                None => (k, v),
            };
            layer.cache = Some((k.clone(), v.clone()));
            let k = repeat_kv(k, heads / kv_heads)?;
            let v = repeat_kv(v, heads / kv_heads)?;
            let att = (q.matmul(&k.t()?)? * scale)?;
            let att = match &mask {
                None => att,
                Some(mask) => {
                    let mask = mask.broadcast_as(att.shape())?;
                    mask.where_cond(&neg_inf.broadcast_as(att.shape())?, &att)?
                }
            };
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, n, hidden))?;
            let x1 = (layer.wo.forward(&y)? + residual)?;
            let h = layer.ffn_norm.forward(&x1)?;
            let gated =
                (candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?;
            x = (layer.down.forward(&gated)? + &x1)?;
        }
        let x = self.norm.forward(&x)?;
        self.output
            .forward(&x.i((.., n - 1, ..))?)?
            .squeeze(0)?
            .to_dtype(DType::F32)?
            .to_vec1()
    }
}
