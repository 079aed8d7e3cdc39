//! all-MiniLM-L6-v2's BERT encoder, written for the CPU and for batches of texts of any lengths.
//!
//! The texts of a batch are packed one after the other (no padding rows), so a short sentence
//! beside a long one costs only its own tokens. The dense products (query/key/value, attention
//! output, the two feed-forward layers) go through candle's matmul; everything between them is
//! fused into passes that run over every core: bias + GELU in one, bias + residual + layer norm
//! in another, and attention per text and head with the head size a constant of its loops.

use std::collections::HashMap;

use candle_core::{CpuStorage, DType, Device, InplaceOp1, InplaceOp2, Layout, Storage, Tensor};
use rayon::prelude::*;
use serde::Deserialize;

/// The parts of a BERT `config.json` the encoder reads.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    #[serde(default = "gelu")]
    pub hidden_act: String,
}

fn gelu() -> String {
    "gelu".into()
}

/// One tokenised text: word-piece ids and segment ids, of equal length.
pub(crate) struct Tokens<'a> {
    pub ids: &'a [u32],
    pub types: &'a [u32],
}

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

struct Layer {
    /// Query, key and value weights side by side, `hidden x 3*hidden` (input-major).
    qkv: Tensor,
    qkv_bias: Vec<f32>,
    out: Tensor,
    out_bias: Vec<f32>,
    attn_norm: Norm,
    up: Tensor,
    up_bias: Vec<f32>,
    down: Tensor,
    down_bias: Vec<f32>,
    ffn_norm: Norm,
}

type AttendFn = fn(&HeadInput<'_>, &mut Scratch) -> Vec<f32>;

pub(crate) struct Bert {
    hidden: usize,
    heads: usize,
    eps: f32,
    vocab: usize,
    max_positions: usize,
    type_vocab: usize,
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embed_norm: Norm,
    layers: Vec<Layer>,
    attend: AttendFn,
}

type Weights = HashMap<String, Tensor>;

fn take(w: &mut Weights, name: &str) -> Result<Tensor, String> {
    w.remove(name)
        .or_else(|| w.remove(&format!("bert.{name}")))
        .ok_or_else(|| format!("model.safetensors: no tensor {name}"))
        .and_then(|t| t.to_dtype(DType::F32).map_err(|e| format!("{name}: {e}")))
}

fn vector(w: &mut Weights, name: &str, len: usize) -> Result<Vec<f32>, String> {
    let t = take(w, name)?;
    if t.dims() != [len] {
        return Err(format!("{name}: shape {:?}, expected [{len}]", t.dims()));
    }
    t.to_vec1().map_err(|e| format!("{name}: {e}"))
}

fn matrix(w: &mut Weights, name: &str, rows: usize, cols: usize) -> Result<Tensor, String> {
    let t = take(w, name)?;
    if t.dims() != [rows, cols] {
        return Err(format!(
            "{name}: shape {:?}, expected [{rows}, {cols}]",
            t.dims()
        ));
    }
    Ok(t)
}

fn flat(t: &Tensor, name: &str) -> Result<Vec<f32>, String> {
    t.flatten_all()
        .and_then(|t| t.to_vec1())
        .map_err(|e| format!("{name}: {e}"))
}

/// A linear layer's `out x in` weight as the `in x out` right-hand side of `x.matmul(w)`.
fn input_major(t: &Tensor, name: &str) -> Result<Tensor, String> {
    t.t()
        .and_then(|t| t.contiguous())
        .map_err(|e| format!("{name}: {e}"))
}

fn norm(w: &mut Weights, prefix: &str, hidden: usize) -> Result<Norm, String> {
    // Older checkpoints name the layer norm's parameters weight/bias or gamma/beta.
    let pick = |w: &mut Weights, a: &str, b: &str| {
        vector(w, &format!("{prefix}.{a}"), hidden)
            .or_else(|_| vector(w, &format!("{prefix}.{b}"), hidden))
    };
    Ok(Norm {
        gamma: pick(w, "weight", "gamma")?,
        beta: pick(w, "bias", "beta")?,
    })
}

impl Bert {
    /// Builds the encoder from a safetensors file's bytes and the model's configuration.
    pub fn load(config: &Config, safetensors: &[u8]) -> Result<Self, String> {
        if config.hidden_act != "gelu" {
            return Err(format!(
                "config.json: hidden_act {:?}: only \"gelu\" is supported",
                config.hidden_act
            ));
        }
        let (h, heads, inter) = (
            config.hidden_size,
            config.num_attention_heads,
            config.intermediate_size,
        );
        if heads == 0 || h % heads != 0 {
            return Err(format!(
                "config.json: hidden_size {h} is not a multiple of num_attention_heads {heads}"
            ));
        }
        let attend: AttendFn = match h / heads {
            16 => attend::<16>,
            32 => attend::<32>,
            64 => attend::<64>,
            128 => attend::<128>,
            d => {
                return Err(format!(
                    "config.json: attention head size {d} is not supported (16, 32, 64 or 128)"
                ));
            }
        };
        let mut w = candle_core::safetensors::load_buffer(safetensors, &Device::Cpu)
            .map_err(|e| format!("model.safetensors: {e}"))?;
        let w = &mut w;
        let word = matrix(w, "embeddings.word_embeddings.weight", config.vocab_size, h)?;
        let position = matrix(
            w,
            "embeddings.position_embeddings.weight",
            config.max_position_embeddings,
            h,
        )?;
        let token_type = matrix(
            w,
            "embeddings.token_type_embeddings.weight",
            config.type_vocab_size,
            h,
        )?;
        let embed_norm = norm(w, "embeddings.LayerNorm", h)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let name = |s: &str| format!("{p}.{s}");
            let q = matrix(w, &name("attention.self.query.weight"), h, h)?;
            let k = matrix(w, &name("attention.self.key.weight"), h, h)?;
            let v = matrix(w, &name("attention.self.value.weight"), h, h)?;
            let qkv = Tensor::cat(&[&q, &k, &v], 0).map_err(|e| format!("{p} qkv: {e}"))?;
            let mut qkv_bias = vector(w, &name("attention.self.query.bias"), h)?;
            qkv_bias.extend(vector(w, &name("attention.self.key.bias"), h)?);
            qkv_bias.extend(vector(w, &name("attention.self.value.bias"), h)?);
            let out = matrix(w, &name("attention.output.dense.weight"), h, h)?;
            let up = matrix(w, &name("intermediate.dense.weight"), inter, h)?;
            let down = matrix(w, &name("output.dense.weight"), h, inter)?;
            layers.push(Layer {
                qkv: input_major(&qkv, &p)?,
                qkv_bias,
                out: input_major(&out, &p)?,
                out_bias: vector(w, &name("attention.output.dense.bias"), h)?,
                attn_norm: norm(w, &name("attention.output.LayerNorm"), h)?,
                up: input_major(&up, &p)?,
                up_bias: vector(w, &name("intermediate.dense.bias"), inter)?,
                down: input_major(&down, &p)?,
                down_bias: vector(w, &name("output.dense.bias"), h)?,
                ffn_norm: norm(w, &name("output.LayerNorm"), h)?,
            });
        }
        Ok(Self {
            hidden: h,
            heads,
            eps: config.layer_norm_eps as f32,
            vocab: config.vocab_size,
            max_positions: config.max_position_embeddings,
            type_vocab: config.type_vocab_size,
            word: flat(&word, "word_embeddings")?,
            position: flat(&position, "position_embeddings")?,
            token_type: flat(&token_type, "token_type_embeddings")?,
            embed_norm,
            layers,
            attend,
        })
    }

    /// Mean-pooled, L2-normalised sentence vectors, one per text.
    pub fn embed(&self, texts: &[Tokens<'_>]) -> Result<Vec<Vec<f32>>, String> {
        let h = self.hidden;
        let mut rows = Vec::new();
        let mut spans = Vec::with_capacity(texts.len());
        for (n, t) in texts.iter().enumerate() {
            if t.ids.len() > self.max_positions {
                return Err(format!(
                    "text {n}: {} tokens, the model reads at most {}",
                    t.ids.len(),
                    self.max_positions
                ));
            }
            spans.push((rows.len(), t.ids.len()));
            for (p, (&id, &ty)) in t.ids.iter().zip(t.types).enumerate() {
                let (id, ty) = (id as usize, ty as usize);
                if id >= self.vocab || ty >= self.type_vocab {
                    return Err(format!("text {n}: token {id} / type {ty} out of range"));
                }
                rows.push((id, p, ty));
            }
        }
        if rows.is_empty() {
            return Ok(vec![vec![0.0; h]; texts.len()]);
        }
        let mut x = vec![0f32; rows.len() * h];
        x.par_chunks_mut(h)
            .zip(rows.par_iter())
            .for_each(|(row, &(id, p, ty))| {
                let w = &self.word[id * h..][..h];
                let pe = &self.position[p * h..][..h];
                let te = &self.token_type[ty * h..][..h];
                for (((o, a), b), c) in row.iter_mut().zip(w).zip(pe).zip(te) {
                    *o = a + b + c;
                }
                layer_norm(row, &self.embed_norm, self.eps);
            });
        let err = |e: candle_core::Error| e.to_string();
        let mut x = Tensor::from_vec(x, (rows.len(), h), &Device::Cpu).map_err(err)?;
        for layer in &self.layers {
            x = self.layer(layer, &x, &spans).map_err(err)?;
        }
        let x: Vec<f32> = x.flatten_all().and_then(|t| t.to_vec1()).map_err(err)?;
        Ok(spans
            .iter()
            .map(|&(start, len)| {
                let mut v = vec![0f32; h];
                for row in x[start * h..(start + len) * h].chunks_exact(h) {
                    for (a, b) in v.iter_mut().zip(row) {
                        *a += b;
                    }
                }
                // Mean over the text's tokens, then unit length.
                let count = len.max(1) as f32;
                v.iter_mut().for_each(|a| *a /= count);
                let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|a| *a /= norm);
                v
            })
            .collect())
    }

    fn layer(
        &self,
        l: &Layer,
        x: &Tensor,
        spans: &[(usize, usize)],
    ) -> candle_core::Result<Tensor> {
        let h = self.hidden;
        // The query/key/value product is read in place: no copy of it per layer.
        let qkv = x.matmul(&l.qkv)?;
        let (storage, layout) = qkv.storage_and_layout();
        let Storage::Cpu(storage) = &*storage else {
            candle_core::bail!("attention: expects a CPU tensor")
        };
        let qkv = contiguous(storage, layout, "attention")?;
        let d = h / self.heads;
        let scale = 1.0 / (d as f32).sqrt();
        let heads: Vec<Vec<f32>> = (0..spans.len() * self.heads)
            .into_par_iter()
            .map_init(Scratch::default, |scratch, task| {
                let (start, len) = spans[task / self.heads];
                let head = task % self.heads;
                let input = HeadInput {
                    qkv: &qkv[start * 3 * h..(start + len) * 3 * h],
                    bias: &l.qkv_bias,
                    hidden: h,
                    head,
                    len,
                    scale,
                };
                (self.attend)(&input, scratch)
            })
            .collect();
        let total = spans.last().map_or(0, |&(s, n)| s + n);
        let mut ctx = vec![0f32; total * h];
        for (task, out) in heads.iter().enumerate() {
            let (start, _) = spans[task / self.heads];
            let head = task % self.heads;
            for (i, src) in out.chunks_exact(d).enumerate() {
                ctx[(start + i) * h + head * d..][..d].copy_from_slice(src);
            }
        }
        let ctx = Tensor::from_vec(ctx, (total, h), &Device::Cpu)?;
        let attn = ctx.matmul(&l.out)?;
        attn.inplace_op2(
            x,
            &AddNorm {
                bias: &l.out_bias,
                norm: &l.attn_norm,
                eps: self.eps,
            },
        )?;
        let up = attn.matmul(&l.up)?;
        up.inplace_op1(&BiasGelu { bias: &l.up_bias })?;
        let down = up.matmul(&l.down)?;
        down.inplace_op2(
            &attn,
            &AddNorm {
                bias: &l.down_bias,
                norm: &l.ffn_norm,
                eps: self.eps,
            },
        )?;
        Ok(down)
    }
}

fn contiguous<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("{op}: expects a contiguous f32 tensor"),
    }
}

fn contiguous_mut<'a>(
    s: &'a mut CpuStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("{op}: expects a contiguous f32 tensor"),
    }
}

/// Rows handed to one rayon task at a time in the fused passes.
const ROWS_PER_TASK: usize = 8;

/// `x <- gelu(x + bias)`, row by row.
struct BiasGelu<'a> {
    bias: &'a [f32],
}

impl InplaceOp1 for BiasGelu<'_> {
    fn name(&self) -> &'static str {
        "bias-gelu"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let x = contiguous_mut(s, l, self.name())?;
        let n = self.bias.len();
        x.par_chunks_mut(n * ROWS_PER_TASK).for_each(|rows| {
            for row in rows.chunks_exact_mut(n) {
                for (v, b) in row.iter_mut().zip(self.bias) {
                    let t = *v + b;
                    *v = 0.5 * t * (1.0 + erf(t * std::f32::consts::FRAC_1_SQRT_2));
                }
            }
        });
        Ok(())
    }
}

/// `x <- layer_norm(x + bias + residual)`, row by row.
struct AddNorm<'a> {
    bias: &'a [f32],
    norm: &'a Norm,
    eps: f32,
}

impl InplaceOp2 for AddNorm<'_> {
    fn name(&self) -> &'static str {
        "bias-residual-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s: &mut CpuStorage,
        l: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> candle_core::Result<()> {
        let x = contiguous_mut(s, l, self.name())?;
        let r = contiguous(rs, rl, self.name())?;
        let n = self.bias.len();
        if x.len() != r.len() {
            candle_core::bail!("{}: {} vs {} values", self.name(), x.len(), r.len());
        }
        x.par_chunks_mut(n * ROWS_PER_TASK)
            .zip(r.par_chunks(n * ROWS_PER_TASK))
            .for_each(|(xs, rs)| {
                for (row, res) in xs.chunks_exact_mut(n).zip(rs.chunks_exact(n)) {
                    for ((v, b), r) in row.iter_mut().zip(self.bias).zip(res) {
                        *v += b + r;
                    }
                    layer_norm(row, self.norm, self.eps);
                }
            });
        Ok(())
    }
}

/// Sum of `f` over a row in eight lanes (vectorisable, and closer to the exact sum than one
/// chain).
fn lane_sum(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = xs.chunks_exact(8);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().map(|&v| f(v)).sum::<f32>()
}

fn layer_norm(row: &mut [f32], norm: &Norm, eps: f32) {
    let n = row.len() as f32;
    let mean = lane_sum(row, |v| v) / n;
    row.iter_mut().for_each(|v| *v -= mean);
    let var = lane_sum(row, |v| v * v) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in row.iter_mut().zip(&norm.gamma).zip(&norm.beta) {
        *v = *v * inv * g + b;
    }
}

/// erf for f32, branch-free (so that loops over it vectorise): the rational approximation
/// Eigen uses for floats, absolute error below 3e-7.
#[allow(clippy::excessive_precision)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2.mul_add(-2.726_142_258_013_06e-10, 2.770_681_424_959_02e-8);
    p = x2.mul_add(p, -2.101_024_020_825_08e-6);
    p = x2.mul_add(p, -5.692_506_394_623_46e-5);
    p = x2.mul_add(p, -7.349_906_303_268_55e-4);
    p = x2.mul_add(p, -2.954_599_808_540_25e-3);
    p = x2.mul_add(p, -1.609_603_332_624_15e-2);
    let mut q = x2.mul_add(-1.456_607_184_649_96e-5, -2.133_740_552_789_05e-4);
    q = x2.mul_add(q, -1.682_826_974_382_03e-3);
    q = x2.mul_add(q, -7.373_329_167_204_68e-3);
    q = x2.mul_add(q, -1.426_473_905_141_89e-2);
    x * p / q
}

/// e^x for f32, branch-free: Cephes' polynomial after reduction by ln 2 (relative error
/// below 2e-7). Inputs below -87 give e^-87 (softmax only feeds it values <= 0).
#[allow(clippy::excessive_precision)]
fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer.
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = n.mul_add(-0.693_359_375, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = r.mul_add(1.987_569_15e-4, 1.398_199_95e-3);
    p = r.mul_add(p, 8.333_451_9e-3);
    p = r.mul_add(p, 4.166_579_59e-2);
    p = r.mul_add(p, 1.666_666_55e-1);
    p = r.mul_add(p, 5.000_000_12e-1);
    let y = p.mul_add(r * r, r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// In place: `xs <- exp(xs - max) / sum`.
fn softmax(xs: &mut [f32]) {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    xs.iter_mut().for_each(|v| *v = exp(*v - max));
    let inv = 1.0 / lane_sum(xs, |v| v);
    xs.iter_mut().for_each(|v| *v *= inv);
}

/// One text's rows of the query/key/value product, and which head to attend with.
struct HeadInput<'a> {
    /// `len x 3*hidden`: queries, keys, values, before their bias.
    qkv: &'a [f32],
    bias: &'a [f32],
    hidden: usize,
    head: usize,
    len: usize,
    scale: f32,
}

/// Buffers reused by the tasks of one rayon thread.
#[derive(Default)]
struct Scratch {
    q: Vec<f32>,
    keys: Vec<[f32; KEYS]>,
    values: Vec<f32>,
    scores: Vec<f32>,
}

/// Keys in blocks of this many (keys transposed within a block): one block's scores for one
/// query are one vector register of accumulators.
const KEYS: usize = 8;
/// Queries scored together against each key block (each key block is loaded once for them).
const QUERIES: usize = 4;

/// Softmax(q k^T * scale) v for one text and head, `len x D`, queries in order.
fn attend<const D: usize>(input: &HeadInput<'_>, s: &mut Scratch) -> Vec<f32> {
    let (len, h) = (input.len, input.hidden);
    let stride = 3 * h;
    let at = input.head * D;
    let blocks = len.div_ceil(KEYS);
    let groups = len.div_ceil(QUERIES);
    // Queries (scaled, padded with zero rows to a whole group), keys transposed per block of
    // KEYS (block b holds D rows of KEYS keys), values row by row.
    s.q.clear();
    s.q.resize(groups * QUERIES * D, 0.0);
    s.keys.clear();
    s.keys.resize(blocks * D, [0.0; KEYS]);
    s.values.clear();
    s.values.reserve(len * D);
    let (bq, bk, bv) = (
        &input.bias[at..at + D],
        &input.bias[h + at..h + at + D],
        &input.bias[2 * h + at..2 * h + at + D],
    );
    for (j, row) in input.qkv.chunks_exact(stride).enumerate() {
        let (q, k, v) = (
            &row[at..at + D],
            &row[h + at..h + at + D],
            &row[2 * h + at..2 * h + at + D],
        );
        for ((o, a), b) in s.q[j * D..(j + 1) * D].iter_mut().zip(q).zip(bq) {
            *o = (a + b) * input.scale;
        }
        let block = &mut s.keys[(j / KEYS) * D..][..D];
        for (row, (a, b)) in block.iter_mut().zip(k.iter().zip(bk)) {
            row[j % KEYS] = a + b;
        }
        s.values.extend(v.iter().zip(bv).map(|(a, b)| a + b));
    }
    let width = blocks * KEYS;
    s.scores.clear();
    s.scores.resize(QUERIES * width, 0.0);
    let mut out = vec![0f32; len * D];
    let (queries, _) = s.q.as_chunks::<D>();
    let (key_blocks, _) = s.keys.as_chunks::<D>();
    for g in 0..groups {
        let q = &queries[g * QUERIES..][..QUERIES];
        for (b, kb) in key_blocks.iter().enumerate() {
            let mut acc = [[0f32; KEYS]; QUERIES];
            for (c, k) in kb.iter().enumerate() {
                for (a, q) in acc.iter_mut().zip(q) {
                    let qc = q[c];
                    for (x, y) in a.iter_mut().zip(k) {
                        *x = qc.mul_add(*y, *x);
                    }
                }
            }
            for (qi, a) in acc.iter().enumerate() {
                s.scores[qi * width + b * KEYS..][..KEYS].copy_from_slice(a);
            }
        }
        for qi in 0..QUERIES.min(len - g * QUERIES) {
            let p = &mut s.scores[qi * width..qi * width + len];
            softmax(p);
            let mut o = [0f32; D];
            for (w, v) in p.iter().zip(s.values.chunks_exact(D)) {
                for (x, y) in o.iter_mut().zip(v) {
                    *x = w.mul_add(*y, *x);
                }
            }
            out[(g * QUERIES + qi) * D..][..D].copy_from_slice(&o);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erf in f64 by its Taylor series (exact to ~1e-9 on [-5, 5]).
    fn erf64(x: f64) -> f64 {
        let (mut term, mut sum) = (x, x);
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_is_within_3e_7() {
        let mut worst = 0f64;
        for i in -5000..=5000 {
            let x = i as f32 / 1000.0;
            let want = erf64(x as f64).clamp(-1.0, 1.0);
            worst = worst.max((erf(x) as f64 - want).abs());
        }
        assert!(worst < 3e-7, "worst erf error {worst}");
    }

    #[test]
    fn exp_is_within_2e_7_relative() {
        let mut worst = 0f64;
        for i in -87_000..=20_000 {
            let x = i as f32 / 1000.0;
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64) - want).abs() / want);
        }
        assert!(worst < 2e-7, "worst relative exp error {worst}");
        assert!(exp(-1e9) >= 0.0 && exp(-1e9) < 1e-37);
    }

    /// A small deterministic generator for test data.
    fn numbers(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn softmax_and_layer_norm_follow_their_definitions() {
        let xs = numbers(37, 1);
        let mut got: Vec<f32> = xs.iter().map(|x| x * 30.0).collect();
        softmax(&mut got);
        let max = xs.iter().map(|x| x * 30.0).fold(f32::MIN, f32::max) as f64;
        let total: f64 = xs.iter().map(|&x| (x as f64 * 30.0 - max).exp()).sum();
        for (g, &x) in got.iter().zip(&xs) {
            let want = (x as f64 * 30.0 - max).exp() / total;
            assert!((*g as f64 - want).abs() < 1e-6, "{g} vs {want}");
        }

        let n = 21;
        let norm = Norm {
            gamma: numbers(n, 2),
            beta: numbers(n, 3),
        };
        let mut row = numbers(n, 4);
        let orig = row.clone();
        layer_norm(&mut row, &norm, 1e-12);
        let mean = orig.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = orig.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        for i in 0..n {
            let want =
                (orig[i] as f64 - mean) / var.sqrt() * norm.gamma[i] as f64 + norm.beta[i] as f64;
            assert!((row[i] as f64 - want).abs() < 1e-5, "{} vs {want}", row[i]);
        }
    }

    /// Attention the plain way, in f64, for one head.
    fn naive(input: &HeadInput<'_>, d: usize) -> Vec<f64> {
        let h = input.hidden;
        let at = input.head * d;
        let get = |j: usize, part: usize, c: usize| {
            (input.qkv[j * 3 * h + part * h + at + c] + input.bias[part * h + at + c]) as f64
        };
        let mut out = vec![0f64; input.len * d];
        for i in 0..input.len {
            let scores: Vec<f64> = (0..input.len)
                .map(|j| {
                    (0..d).map(|c| get(i, 0, c) * get(j, 1, c)).sum::<f64>() * input.scale as f64
                })
                .collect();
            let max = scores.iter().copied().fold(f64::MIN, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = e.iter().sum();
            for c in 0..d {
                out[i * d + c] = (0..input.len).map(|j| e[j] * get(j, 2, c)).sum::<f64>() / total;
            }
        }
        out
    }

    #[test]
    fn attention_matches_the_plain_computation() {
        let (heads, d) = (3, 16);
        let h = heads * d;
        // Lengths that fill no whole group of queries or block of keys, and one that does.
        for len in [1, 5, 13, 32] {
            let qkv: Vec<f32> = numbers(len * 3 * h, len as u64)
                .iter()
                .map(|x| x * 3.0)
                .collect();
            let bias = numbers(3 * h, 99);
            let mut scratch = Scratch::default();
            for head in 0..heads {
                let input = HeadInput {
                    qkv: &qkv,
                    bias: &bias,
                    hidden: h,
                    head,
                    len,
                    scale: 0.25,
                };
                let got = attend::<16>(&input, &mut scratch);
                let want = naive(&input, d);
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (*g as f64 - w).abs() < 1e-5,
                        "len {len} head {head}: {g} vs {w}"
                    );
                }
            }
        }
    }
}
