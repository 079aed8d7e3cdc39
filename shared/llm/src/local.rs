//! SmolLM2-135M-Instruct on the CPU (`llama.rs`, over candle's quantized kernels), from the
//! GGUF that `agent-learning models fetch` installs. Each lane keeps its KV cache between
//! calls, and a prompt that starts like the previous one computes only the rest. We own the
//! sampler, so structured outputs are constrained while decoding: section headers are forced
//! in order and each section is bounded; `choose` masks the logits to the token sequences of
//! the allowed options. Local structured outputs are valid by construction.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use agent_learning_config::PrefillWeights;
use async_trait::async_trait;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device};
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use crate::llama::{Llama, MAX_SEQ_LEN};
use crate::{ChatModel, ChatParams, Choice, Completion, LlmError, Message, Role, Sections, Usage};

const Q4_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const Q8_FILE: &str = "SmolLM2-135M-Instruct.Q8_0.v2.gguf";
/// Tokens the free text of one reasoning line may take.
const REASONING_TOKENS: usize = 48;

#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The directory `models fetch` extracted the package to.
    pub dir: PathBuf,
    /// Compute threads; 0 picks one on machines with two cores or fewer, else half the cores.
    pub threads: usize,
    /// Whether decisions (`choose`) run on a model instance and threads of their own, so a
    /// reflection or a long answer never holds up a Decide. The weights are shared; each lane
    /// has its own cache and compute threads.
    pub decide_lane: bool,
    /// Compute threads of the decisions' lane; 0 takes every core. A decision waits on its
    /// answer, so it gets the whole machine while nothing else runs; beside a reflection on
    /// the main lane the two share the cores.
    pub decide_threads: usize,
    /// Whether a lane keeps its KV cache between calls and computes only what follows the
    /// longest start a new prompt shares with what the cache holds (instructions, a playbook
    /// that did not change). Off: every prompt is computed whole.
    pub prefix_cache: bool,
    /// What prompts (several new tokens at once) are computed with.
    pub prefill_weights: PrefillWeights,
}

/// One instance of the model (weights shared with the other lanes; its own cache) and the
/// threads it computes on. One generation runs on a lane at a time.
struct Lane {
    model: Mutex<Llama>,
    pool: rayon::ThreadPool,
}

/// What a call is for: decisions get their own lane when there is one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Work {
    Decide,
    Other,
}

struct Inner {
    /// The lane of everything, then (when configured) the lane of decisions.
    lanes: Vec<Lane>,
    /// Tokens generated since the model was loaded, by every call.
    generated: std::sync::atomic::AtomicU64,
    /// Prompt tokens taken from a lane's cache instead of computed, since the model was loaded.
    reused: std::sync::atomic::AtomicU64,
    tokenizer: Tokenizer,
    im_end: u32,
    /// Tokens whose text holds a line break: they end a section or a reasoning line.
    newline: HashSet<u32>,
    prefix_cache: bool,
    /// Bytes of the dense copies of the projections prompts are computed with (0: none).
    prompt_weight_bytes: usize,
}

/// The local model. Cheap to clone; one generation runs at a time on each lane.
#[derive(Clone)]
pub struct LocalModel {
    inner: Arc<Inner>,
}

fn model_err(e: impl std::fmt::Display) -> LlmError {
    LlmError::Model(e.to_string())
}

/// Re-quantizes the model's matrices to Q8_0 (candle has no fast Q4_1 kernel; Q8_0 gives the
/// same greedy text about four times faster), writing next to the source and renaming into
/// place. The file name carries a version so a changed rule never reuses an old cache.
fn requantize(src: &Path, dst: &Path) -> Result<(), LlmError> {
    let mut f = std::fs::File::open(src).map_err(model_err)?;
    let content = gguf_file::Content::read(&mut f).map_err(model_err)?;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    for name in names {
        let t = content
            .tensor(&mut f, name, &Device::Cpu)
            .map_err(model_err)?;
        // Every matrix whose rows split into Q8_0 blocks: the Q4_1 layers and the F16/F32
        // embedding (tied to the output projection, the largest matmul of a decode step).
        let dims = t.shape().dims();
        let quantizable = dims.len() == 2
            && dims[1] % 32 == 0
            && matches!(t.dtype(), GgmlDType::Q4_1 | GgmlDType::F16 | GgmlDType::F32);
        let t = if quantizable {
            let dense = t.dequantize(&Device::Cpu).map_err(model_err)?;
            QTensor::quantize(&dense, GgmlDType::Q8_0).map_err(model_err)?
        } else {
            t
        };
        tensors.push((name.clone(), t));
    }
    let mut keys: Vec<&String> = content.metadata.keys().collect();
    keys.sort();
    let metadata: Vec<(&str, &Value)> = keys
        .iter()
        .map(|k| (k.as_str(), &content.metadata[*k]))
        .collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    // A temporary name of its own: two processes (or two loads in one) preparing the same
    // directory at once each write a whole file, and the rename makes one of them visible.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = dst.with_extension(format!(
        "gguf.partial.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(model_err)?);
        gguf_file::write(&mut out, &metadata, &refs).map_err(model_err)?;
        let file = out.into_inner().map_err(|e| model_err(e.into_error()))?;
        file.sync_all().map_err(model_err)?;
        std::fs::rename(&tmp, dst).map_err(model_err)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn strings(content: &gguf_file::Content, key: &str) -> Result<Vec<String>, LlmError> {
    let v = content
        .metadata
        .get(key)
        .ok_or_else(|| LlmError::Model(format!("gguf: no {key}")))?;
    v.to_vec()
        .map_err(model_err)?
        .iter()
        .map(|x| x.to_string().cloned().map_err(model_err))
        .collect()
}

/// The tokenizer from the GGUF metadata, with SmolLM2's pre-tokenizer (`pre = "smollm"`):
/// single digits, then byte-level without a prefix space, and no post-processor.
fn tokenizer(content: &gguf_file::Content) -> Result<(Tokenizer, u32), LlmError> {
    let tokens = strings(content, "tokenizer.ggml.tokens")?;
    let merges = strings(content, "tokenizer.ggml.merges")?;
    let types: Vec<i64> = match content.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(model_err)?
            .iter()
            .map(|x| x.to_i32().map(i64::from).map_err(model_err))
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(model_err)?;
    let mut tk = Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(Sequence::new(vec![
        Digits::new(true).into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    tk.with_decoder(Some(ByteLevel::default()));
    // Control tokens (type 3) such as <|im_start|> are matched whole in text.
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(types.iter().chain(std::iter::repeat(&1)))
        .filter(|(_, t)| **t == 3)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    tk.add_special_tokens(&specials);
    let im_end = tk
        .token_to_id("<|im_end|>")
        .ok_or_else(|| LlmError::Model("tokenizer has no <|im_end|>".into()))?;
    Ok((tk, im_end))
}

/// ChatML, ending with an open assistant turn: the text the local model is given.
pub fn chatml(messages: &[Message]) -> String {
    let mut s = String::new();
    for m in messages {
        let role = match m.role {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        s.push_str(&format!("<|im_start|>{role}\n{}<|im_end|>\n", m.content));
    }
    s.push_str("<|im_start|>assistant\n");
    s
}

/// Seeded choice among allowed tokens: greedy at temperature 0.
struct Sampler {
    temperature: f32,
    state: u64,
}

impl Sampler {
    fn new(params: &ChatParams) -> Self {
        Self {
            temperature: params.temperature,
            state: params.seed.unwrap_or(0x2545_f491_4f6c_dd1d) | 1,
        }
    }

    fn unit(&mut self) -> f64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `allowed(id)` filters the vocabulary.
    fn pick(&mut self, logits: &[f32], allowed: impl Fn(u32) -> bool) -> Option<u32> {
        let candidates = logits
            .iter()
            .enumerate()
            .filter(|(i, l)| l.is_finite() && allowed(*i as u32));
        if self.temperature <= 0.0 {
            return candidates
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i as u32);
        }
        let c: Vec<(usize, f32)> = candidates.map(|(i, l)| (i, *l)).collect();
        let max = c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
        let weights: Vec<f64> = c
            .iter()
            .map(|(_, l)| f64::from((l - max) / self.temperature).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut r = self.unit() * total;
        for ((i, _), w) in c.iter().zip(&weights) {
            r -= w;
            if r <= 0.0 {
                return Some(*i as u32);
            }
        }
        c.last().map(|(i, _)| *i as u32)
    }
}

/// One decoding pass over the KV cache.
struct Session<'a> {
    model: &'a mut Llama,
    logits: Vec<f32>,
    prompt_tokens: usize,
    generated: usize,
    /// Set when the caller went away (its future was dropped: a cancelled or timed-out
    /// request): the session stops at the next token instead of finishing unseen work.
    cancelled: &'a AtomicBool,
    counter: &'a std::sync::atomic::AtomicU64,
}

impl Session<'_> {
    fn check_cancelled(&self) -> Result<(), LlmError> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(LlmError::Cancelled);
        }
        Ok(())
    }

    fn feed(&mut self, ids: &[u32]) -> Result<(), LlmError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.check_cancelled()?;
        if self.model.cached().len() + ids.len() >= MAX_SEQ_LEN {
            return Err(LlmError::InvalidRequest(format!(
                "the conversation needs more than the model's {MAX_SEQ_LEN}-token context"
            )));
        }
        self.logits = self.model.forward(ids).map_err(model_err)?;
        Ok(())
    }

    fn step(
        &mut self,
        sampler: &mut Sampler,
        allowed: impl Fn(u32) -> bool,
    ) -> Result<u32, LlmError> {
        self.check_cancelled()?;
        let id = sampler
            .pick(&self.logits, allowed)
            .ok_or_else(|| LlmError::Model("no token allowed".into()))?;
        self.generated += 1;
        self.counter.fetch_add(1, Ordering::Relaxed);
        self.feed(&[id])?;
        Ok(id)
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens as u64,
            completion_tokens: self.generated as u64,
        }
    }
}

/// Sets its flag when dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl LocalModel {
    /// Tokens generated since the model was loaded, by every call (cancelled ones included).
    pub fn tokens_generated(&self) -> u64 {
        self.inner.generated.load(Ordering::Relaxed)
    }

    /// Prompt tokens taken from a lane's KV cache instead of computed, since the model was
    /// loaded (`prefix_cache`).
    pub fn prompt_tokens_reused(&self) -> u64 {
        self.inner.reused.load(Ordering::Relaxed)
    }

    /// Bytes of the dense copies of the projections that prompts are computed with
    /// (`prefill_weights`; 0 when quantized), shared by the lanes.
    pub fn prompt_weight_bytes(&self) -> usize {
        self.inner.prompt_weight_bytes
    }

    /// Writes the Q8_0 file next to the Q4_1 one unless it is there already, and returns its
    /// path. `models fetch` calls it, so an image or a read-only models dir holds a model that
    /// loads without writing.
    pub fn prepare(dir: &Path) -> Result<PathBuf, LlmError> {
        let q4 = dir.join(Q4_FILE);
        let q8 = dir.join(Q8_FILE);
        if !q8.is_file() {
            if !q4.is_file() {
                return Err(LlmError::Model(format!(
                    "local model not found in {}: missing {Q4_FILE}; run `agent-learning models fetch`",
                    dir.display()
                )));
            }
            requantize(&q4, &q8)?;
        }
        Ok(q8)
    }

    /// Loads the model; the first load writes the Q8_0 file next to the Q4_1 one.
    pub fn load(opts: &LocalOptions) -> Result<Self, LlmError> {
        let q8 = Self::prepare(&opts.dir)?;
        let mut f = std::fs::File::open(&q8).map_err(model_err)?;
        let content = gguf_file::Content::read(&mut f).map_err(model_err)?;
        let (tokenizer, im_end) = tokenizer(&content)?;
        let dense = match opts.prefill_weights {
            PrefillWeights::Quantized => None,
            PrefillWeights::F16 => Some(DType::F16),
            PrefillWeights::F32 => Some(DType::F32),
        };
        let model = Llama::from_gguf(content, &mut f, dense).map_err(model_err)?;
        let prompt_weight_bytes = model.dense_bytes();
        tracing::info!(
            prefill_weights = ?opts.prefill_weights,
            dense_mb = prompt_weight_bytes / (1 << 20),
            "local model loaded"
        );
        let vocab = tokenizer.get_vocab_size(true) as u32;
        let newline: HashSet<u32> = (0..vocab)
            .filter(|id| {
                tokenizer
                    .decode(&[*id], false)
                    .is_ok_and(|t| t.contains('\n'))
            })
            .collect();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = match opts.threads {
            0 if cores <= 2 => 1,
            0 => cores / 2,
            n => n,
        };
        let decide_threads = match opts.decide_threads {
            0 => cores,
            n => n,
        };
        let lane = |name: &'static str, threads: usize, model: Llama| -> Result<Lane, LlmError> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(move |i| format!("smollm2-{name}-{i}"))
                .build()
                .map_err(model_err)?;
            Ok(Lane {
                model: Mutex::new(model),
                pool,
            })
        };
        let mut lanes = Vec::with_capacity(2);
        if opts.decide_lane {
            // A clone shares the quantized weights (reference-counted) and has its own cache.
            let decide = model.clone();
            lanes.push(lane("main", threads, model)?);
            lanes.push(lane("decide", decide_threads, decide)?);
        } else {
            lanes.push(lane("main", threads, model)?);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                lanes,
                generated: Default::default(),
                reused: Default::default(),
                tokenizer,
                im_end,
                newline,
                prefix_cache: opts.prefix_cache,
                prompt_weight_bytes,
            }),
        })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LlmError> {
        self.inner
            .tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(model_err)
    }

    fn decode(&self, ids: &[u32]) -> Result<String, LlmError> {
        self.inner.tokenizer.decode(ids, true).map_err(model_err)
    }

    /// Runs `f` on a fresh session primed with `prompt`, on the model's thread pool.
    async fn with_session<T: Send + 'static>(
        &self,
        work: Work,
        prompt: String,
        f: impl FnOnce(&LocalModel, &mut Session<'_>) -> Result<T, LlmError> + Send + 'static,
    ) -> Result<T, LlmError> {
        let this = self.clone();
        // Dropped with this future (the caller cancelled, or its deadline passed): the
        // blocking work sees the flag and stops, and a request still waiting for the model
        // gives its turn away.
        let cancelled = Arc::new(AtomicBool::new(false));
        let _on_drop = CancelOnDrop(cancelled.clone());
        tokio::task::spawn_blocking(move || {
            let ids = this.encode(&prompt)?;
            let inner = this.inner.clone();
            let lane = match work {
                Work::Decide => inner.lanes.last(),
                Work::Other => inner.lanes.first(),
            }
            .ok_or_else(|| LlmError::Model("the model has no lane".into()))?;
            // The lane's lock is taken here, on the blocking thread, before entering its pool.
            // Taken inside the pool, a waiting request's job could be picked up by a pool
            // thread that is itself waiting on the served request's matrix products (rayon
            // runs queued jobs while it waits), and block on the lock that thread's own
            // work holds: the lane would never answer again. A waiting request also no
            // longer parks one of the pool's threads that the served request needs.
            let mut guard = lane
                .model
                .lock()
                .map_err(|_| LlmError::Model("model poisoned by a panic".into()))?;
            if cancelled.load(Ordering::Relaxed) {
                return Err(LlmError::Cancelled);
            }
            let model = &mut *guard;
            // What the cache holds of this prompt's start is kept; the rest is computed. At
            // least the last token is fed again: its logits are the first choice.
            let keep = if inner.prefix_cache {
                let cached = model.cached().iter().zip(&ids);
                cached
                    .take_while(|(a, b)| a == b)
                    .count()
                    .min(ids.len().saturating_sub(1))
            } else {
                0
            };
            model.truncate(keep).map_err(model_err)?;
            inner.reused.fetch_add(keep as u64, Ordering::Relaxed);
            lane.pool.install(|| {
                let mut session = Session {
                    model,
                    logits: Vec::new(),
                    prompt_tokens: ids.len(),
                    generated: 0,
                    cancelled: &cancelled,
                    counter: &inner.generated,
                };
                session.feed(&ids[keep..])?;
                f(&this, &mut session)
            })
        })
        .await
        .map_err(|e| LlmError::Model(e.to_string()))?
    }

    /// Free text until a line break (or the end of the turn), at most `max` tokens, never
    /// empty: stop tokens are masked until a token with visible text was produced.
    fn line(
        &self,
        s: &mut Session<'_>,
        sampler: &mut Sampler,
        max: usize,
    ) -> Result<String, LlmError> {
        let mut ids: Vec<u32> = Vec::new();
        let mut has_text = false;
        while ids.len() < max {
            let im_end = self.inner.im_end;
            let newline = &self.inner.newline;
            let id = s.step(sampler, |t| {
                has_text || (t != im_end && !newline.contains(&t))
            })?;
            if has_text && (id == im_end || newline.contains(&id)) {
                break;
            }
            ids.push(id);
            has_text = has_text || !self.decode(&ids)?.trim().is_empty();
        }
        Ok(self.decode(&ids)?.trim().to_owned())
    }
}

#[async_trait]
impl ChatModel for LocalModel {
    fn name(&self) -> &str {
        "smollm2-135m-instruct"
    }

    async fn chat(
        &self,
        messages: &[Message],
        params: &ChatParams,
    ) -> Result<Completion, LlmError> {
        crate::check_messages(messages)?;
        let prompt = chatml(messages);
        let params = params.clone();
        self.with_session(Work::Other, prompt, move |m, s| {
            let mut sampler = Sampler::new(&params);
            let mut ids = Vec::new();
            while ids.len() < params.max_tokens as usize {
                let id = s.step(&mut sampler, |_| true)?;
                if id == m.inner.im_end {
                    break;
                }
                ids.push(id);
            }
            Ok(Completion {
                text: m.decode(&ids)?,
                usage: s.usage(),
            })
        })
        .await
    }

    async fn sections(
        &self,
        messages: &[Message],
        names: &[&str],
        max_chars: usize,
    ) -> Result<Sections, LlmError> {
        crate::structured::check_sections_request(messages, names)?;
        let msgs = crate::structured::with_instruction(
            messages,
            format!("Answer with one line for each of: {}.", names.join(", ")),
        );
        let prompt = chatml(&msgs);
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        // Roughly four characters a token; at least a few tokens a section.
        let budget = (max_chars / 4).clamp(8, 256);
        self.with_session(Work::Other, prompt, move |m, s| {
            let mut sampler = Sampler::new(&ChatParams::default());
            let mut out = Vec::with_capacity(names.len());
            for (i, name) in names.iter().enumerate() {
                let header = if i == 0 {
                    format!("{name}:")
                } else {
                    format!("\n{name}:")
                };
                s.feed(&m.encode(&header)?)?;
                let text = m.line(s, &mut sampler, budget)?;
                let text: String = text.chars().take(max_chars).collect();
                out.push((name.clone(), text));
            }
            Ok(Sections {
                sections: out,
                usage: s.usage(),
            })
        })
        .await
    }

    async fn choose(&self, messages: &[Message], options: &[String]) -> Result<Choice, LlmError> {
        crate::check_messages(messages)?;
        crate::structured::check_options(options)?;
        let msgs = crate::structured::with_instruction(
            messages,
            format!(
                "Choose exactly one of: {}. Give a one-sentence reason, then the choice.",
                options.join(", ")
            ),
        );
        let prompt = chatml(&msgs);
        let options = options.to_vec();
        self.with_session(Work::Decide, prompt, move |m, s| {
            let mut sampler = Sampler::new(&ChatParams::default());
            s.feed(&m.encode("Reason:")?)?;
            let reasoning = m.line(s, &mut sampler, REASONING_TOKENS)?;
            s.feed(&m.encode("\nChoice:")?)?;
            // Each option as the tokens that follow "Choice:", ended by <|im_end|>, so no
            // option is a prefix of another and the walk ends on exactly one of them.
            let seqs: Vec<Vec<u32>> = options
                .iter()
                .map(|o| {
                    let mut ids = m.encode(&format!(" {}", o.trim()))?;
                    ids.push(m.inner.im_end);
                    Ok(ids)
                })
                .collect::<Result<_, LlmError>>()?;
            let mut live: Vec<usize> = (0..seqs.len()).collect();
            let mut depth = 0;
            loop {
                let allowed: HashSet<u32> = live
                    .iter()
                    .filter_map(|&i| seqs[i].get(depth).copied())
                    .collect();
                let id = s.step(&mut sampler, |t| allowed.contains(&t))?;
                live.retain(|&i| seqs[i].get(depth) == Some(&id));
                depth += 1;
                if let Some(&done) = live.iter().find(|&&i| seqs[i].len() == depth) {
                    return Ok(Choice {
                        index: done,
                        option: options[done].clone(),
                        reasoning,
                        usage: s.usage(),
                    });
                }
                if live.is_empty() {
                    return Err(LlmError::Model(
                        "constrained decoding lost every option".into(),
                    ));
                }
            }
        })
        .await
    }
}
