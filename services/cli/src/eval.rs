//! `agent-learning eval`: episodes on seeds no demo used, through the Environment protocol only
//! (a built-in environment or `grpc://HOST:PORT`), for the policy and its baselines:
//!
//! - `expert`: the built-in expert (built-in environments only);
//! - `random`: a uniformly random valid action;
//! - `nearest-demo`: the action of the most similar expert state (MiniLM cosine over the demos'
//!   states, no LLM): behaviour cloning by lookup;
//! - `llm-bare`: Decide on a policy with neither exemplars nor playbook;
//! - `llm-exemplars`: Decide on a policy with the demos as exemplars and no playbook;
//! - `full`: Decide on the trained namespace's policy.
//!
//! Success rate with a Wilson 95% interval, mean steps, invalid actions, tokens and Decide
//! latency per configuration, as a Markdown table and JSON.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use agent_learning_api::{CompileRequest, DecideRequest, PastStep, PolicyApi as _, PolicyClient};
use agent_learning_api::{WorldModelApi as _, WorldModelClient};
use agent_learning_config::Settings;
use agent_learning_domain::Transition;
use agent_learning_envs::{Demo, EnvError, Environment};
use anyhow::{Context as _, bail};
use serde_json::json;

use crate::train::Server;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Config {
    Expert,
    Random,
    NearestDemo,
    LlmBare,
    LlmExemplars,
    Full,
}

impl Config {
    const ALL: [Config; 6] = [
        Config::Expert,
        Config::Random,
        Config::NearestDemo,
        Config::LlmBare,
        Config::LlmExemplars,
        Config::Full,
    ];

    fn name(self) -> &'static str {
        match self {
            Config::Expert => "expert",
            Config::Random => "random",
            Config::NearestDemo => "nearest-demo",
            Config::LlmBare => "llm-bare",
            Config::LlmExemplars => "llm-exemplars",
            Config::Full => "full",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Config::Expert => "the built-in expert",
            Config::Random => "a random valid action",
            Config::NearestDemo => "the nearest demo state's action (no LLM)",
            Config::LlmBare => "LLM, no exemplars, no playbook",
            Config::LlmExemplars => "LLM with exemplars, no playbook",
            Config::Full => "the trained policy",
        }
    }
}

/// How each evaluated configuration plays: shared by `eval` and `sweep`.
#[derive(Debug, Clone, clap::Args)]
pub struct Episodes {
    /// Episodes per configuration.
    #[arg(long, default_value_t = 20)]
    pub episodes: usize,
    /// First seed (`S` or `S..`): episodes use S, S+1, ..., skipping every seed of the demos.
    #[arg(long, default_value = "100000..")]
    pub seeds: String,
    /// Steps after which an episode counts as failed.
    #[arg(long, default_value_t = 200)]
    pub max_steps: usize,
    /// Steps of the episode so far shown to Decide (as the live loop does).
    #[arg(long, default_value_t = 4)]
    pub history: usize,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// driving, support, devops, code-review, or grpc://HOST:PORT.
    #[arg(long)]
    pub env: String,
    /// The trained namespace; else the environment's name (a grpc:// one's from ResetResponse.env).
    #[arg(long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub play: Episodes,
    /// The expert demos the namespace was trained on: the nearest-demo baseline, the
    /// exemplars-only policy, the action list of environments that do not list actions, and
    /// the seeds to avoid.
    #[arg(long)]
    pub demos: Option<PathBuf>,
    /// A running server (HOST:PORT or http(s)://HOST:PORT); else an all-in-one server runs in
    /// this process on the data dir.
    #[arg(long)]
    pub server: Option<String>,
    /// Configurations to run (comma-separated); all that apply when absent.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub configs: Vec<Config>,
    /// Where eval.json and eval.md go (else <data dir>/eval-<namespace>).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Seeds to skip besides the demos' (a sweep skips those of all its demos).
    #[arg(skip)]
    pub avoid_seeds: BTreeSet<u64>,
}

use agent_learning_domain::wilson;

/// Times one step's Decide is tried before the evaluation fails.
const DECIDE_ATTEMPTS: u64 = 3;

#[derive(Default)]
struct Tally {
    successes: usize,
    episodes: usize,
    steps: usize,
    invalid: usize,
    decisions: usize,
    tokens: u64,
    fallbacks: usize,
    latencies: Vec<Duration>,
}

impl Tally {
    fn report(&self, c: Config) -> serde_json::Value {
        let (lo, hi) = wilson(self.successes, self.episodes);
        let mut lat = self.latencies.clone();
        lat.sort();
        let pct = |p: f64| {
            (!lat.is_empty()).then(|| {
                lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1].as_secs_f64()
                    * 1e3
            })
        };
        json!({
            "config": c.name(),
            "what": c.describe(),
            "episodes": self.episodes,
            "successes": self.successes,
            "success_rate": self.successes as f64 / self.episodes.max(1) as f64,
            "wilson95": [lo, hi],
            "mean_steps": self.steps as f64 / self.episodes.max(1) as f64,
            "invalid_actions": self.invalid,
            "decisions": self.decisions,
            "tokens_per_decision": if self.decisions == 0 { 0.0 } else { self.tokens as f64 / self.decisions as f64 },
            "fallbacks": self.fallbacks,
            "decide_ms_p50": pct(0.5),
            "decide_ms_p99": pct(0.99),
        })
    }
}

/// A small deterministic generator for the random baseline.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn parse_first_seed(s: &str) -> anyhow::Result<u64> {
    s.trim()
        .trim_end_matches("..")
        .parse()
        .with_context(|| format!("--seeds {s:?}: expected S or S.."))
}

/// The demos' states, embedded once, with their actions.
struct NearestDemo {
    embedder: std::sync::Arc<dyn agent_learning_embed::Embedder>,
    states: Vec<(Vec<f32>, String)>,
}

impl NearestDemo {
    async fn new(settings: &Settings, demos: &[Demo]) -> anyhow::Result<Self> {
        let embedder = agent_learning_embed::open(settings)
            .await
            .context("embedding model")?;
        let steps: Vec<(String, String)> = demos
            .iter()
            .flat_map(|d| d.steps.iter().map(|s| (s.state.clone(), s.action.clone())))
            .collect();
        let vectors = embedder
            .embed(steps.iter().map(|(s, _)| s.clone()).collect())
            .await?;
        Ok(Self {
            embedder,
            states: vectors
                .into_iter()
                .zip(steps.into_iter().map(|(_, a)| a))
                .collect(),
        })
    }

    async fn act(&self, state: &str, valid: &[String]) -> anyhow::Result<String> {
        let v = self.embedder.embed(vec![state.to_owned()]).await?;
        let best = self
            .states
            .iter()
            .filter(|(_, a)| valid.contains(a))
            .map(|(e, a)| (agent_learning_embed::cosine(&v[0], e), a))
            .max_by(|x, y| x.0.total_cmp(&y.0));
        Ok(best.map_or_else(|| valid[0].clone(), |(_, a)| a.clone()))
    }
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Runs the evaluation, prints and writes its table; returns the report (as eval.json holds it).
pub async fn run(settings: &Settings, args: &EvalArgs) -> anyhow::Result<serde_json::Value> {
    if args.play.episodes == 0 {
        bail!("--episodes must be at least 1");
    }
    if args.play.history > 16 {
        bail!("--history must be at most 16");
    }
    let demos = match &args.demos {
        Some(path) => agent_learning_envs::read_demos(path)?,
        None => Vec::new(),
    };
    let namespace =
        agent_learning_cli::train::namespace_for(&args.env, args.namespace.as_deref(), &demos)
            .await?;
    let built_in = !args.env.starts_with("grpc://");
    let wanted: BTreeSet<Config> = if args.configs.is_empty() {
        Config::ALL.into_iter().collect()
    } else {
        args.configs.iter().copied().collect()
    };
    let mut skipped = Vec::new();
    let mut configs = Vec::new();
    for c in wanted {
        let why = match c {
            Config::Expert if !built_in => Some("no expert for a grpc:// environment"),
            Config::NearestDemo | Config::LlmExemplars if demos.is_empty() => Some("needs --demos"),
            _ => None,
        };
        match why {
            Some(why) => skipped.push((c, why)),
            None => configs.push(c),
        }
    }
    let mut demo_seeds: BTreeSet<u64> = demos.iter().map(|d| d.seed).collect();
    demo_seeds.extend(&args.avoid_seeds);
    let seeds: Vec<u64> = (parse_first_seed(&args.play.seeds)?..)
        .filter(|s| !demo_seeds.contains(s))
        .take(args.play.episodes)
        .collect();
    let demo_actions: Vec<String> = demos
        .iter()
        .flat_map(|d| d.steps.iter().map(|s| s.action.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    let server = Server::start(settings, args.server.as_deref()).await?;
    let result = evaluate(
        settings,
        args,
        &server.url,
        &namespace,
        &configs,
        &seeds,
        &demos,
        &demo_actions,
    )
    .await;
    let tallies = server.stop(result).await?;

    let rows: Vec<serde_json::Value> = tallies.iter().map(|(c, t)| t.report(*c)).collect();
    let report = json!({
        "env": args.env,
        "namespace": namespace,
        "seeds": seeds,
        "max_steps": args.play.max_steps,
        "demos": demos.len(),
        "configs": rows,
        "skipped": skipped.iter().map(|(c, why)| json!({"config": c.name(), "why": why})).collect::<Vec<_>>(),
    });
    let mut md = format!(
        "Evaluation of `{namespace}` on `{}`: {} episodes per configuration, seeds {}..{} (none from the demos)\n\n\
         | configuration | success | Wilson 95% | mean steps | invalid actions | tokens/decision | Decide p50 ms | Decide p99 ms |\n\
         |---|---|---|---|---|---|---|---|\n",
        args.env,
        seeds.len(),
        seeds.first().copied().unwrap_or_default(),
        seeds.last().copied().unwrap_or_default(),
    );
    for r in &rows {
        let ms = |k: &str| r[k].as_f64().map_or("-".to_owned(), |v| format!("{v:.0}"));
        md.push_str(&format!(
            "| {} ({}) | {}/{} | {:.2}-{:.2} | {:.1} | {} | {:.0} | {} | {} |\n",
            r["config"].as_str().unwrap_or_default(),
            r["what"].as_str().unwrap_or_default(),
            r["successes"],
            r["episodes"],
            r["wilson95"][0].as_f64().unwrap_or_default(),
            r["wilson95"][1].as_f64().unwrap_or_default(),
            r["mean_steps"].as_f64().unwrap_or_default(),
            r["invalid_actions"],
            r["tokens_per_decision"].as_f64().unwrap_or_default(),
            ms("decide_ms_p50"),
            ms("decide_ms_p99"),
        ));
    }
    for (c, why) in &skipped {
        md.push_str(&format!("\n{} skipped: {why}", c.name()));
    }
    println!("{md}");
    let dir = args
        .output
        .clone()
        .unwrap_or_else(|| settings.data_dir.join(format!("eval-{namespace}")));
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    std::fs::write(
        dir.join("eval.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(dir.join("eval.md"), &md)?;
    let bars: Vec<agent_learning_cli::plot::Bar> = rows
        .iter()
        .map(|r| {
            agent_learning_cli::plot::Bar::from_row(r["config"].as_str().unwrap_or_default(), r)
        })
        .collect();
    agent_learning_cli::plot::success_chart(
        &dir.join("success.png"),
        &format!("{namespace} on {}: success on unseen seeds", args.env),
        &bars,
    )?;
    eprintln!(
        "wrote eval.json, eval.md and success.png to {}",
        dir.display()
    );
    let mut report = report;
    report["markdown"] = json!(md);
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn evaluate(
    settings: &Settings,
    args: &EvalArgs,
    url: &str,
    namespace: &str,
    configs: &[Config],
    seeds: &[u64],
    demos: &[Demo],
    demo_actions: &[String],
) -> anyhow::Result<Vec<(Config, Tally)>> {
    let channel = agent_learning_api::endpoint(url)?
        .connect()
        .await
        .with_context(|| format!("server at {url}"))?;
    let policy = PolicyClient::new(channel.clone());
    // The baselines' policies live in namespaces of their own beside the trained one.
    let bare = format!("{namespace}-eval-bare");
    let exemplars = format!("{namespace}-eval-exemplars");
    if configs.contains(&Config::LlmBare) {
        policy
            .compile(CompileRequest {
                namespace: bare.clone(),
                ..Default::default()
            })
            .await
            .context("compile the bare baseline's policy")?;
    }
    if configs.contains(&Config::LlmExemplars) {
        let transitions: Vec<Transition> = demos
            .iter()
            .flat_map(|d| {
                d.steps.iter().map(|s| Transition {
                    state: s.state.clone(),
                    action: s.action.clone(),
                    next_state: s.next_state.clone(),
                    done: s.done,
                })
            })
            .collect();
        let world_model = WorldModelClient::new(channel.clone());
        for chunk in transitions.chunks(500) {
            world_model
                .fit(&exemplars, chunk.to_vec(), "expert")
                .await
                .context("fit the exemplars-only baseline")?;
        }
        policy
            .compile(CompileRequest {
                namespace: exemplars.clone(),
                ..Default::default()
            })
            .await
            .context("compile the exemplars-only baseline's policy")?;
    }
    // A namespace that was never trained is refused before any episode runs, not after the
    // configurations ahead of `full` have played theirs.
    if configs.contains(&Config::Full) {
        match policy.get_policy(namespace, None).await {
            Ok(_) => {}
            Err(
                agent_learning_api::ApiError::NotFound(why)
                | agent_learning_api::ApiError::FailedPrecondition(why),
            ) => bail!(
                "{why}: nothing to evaluate as `full` (agent-learning train --env {} \
                 --namespace {namespace} --demos FILE first, or leave `full` out of --configs)",
                args.env
            ),
            Err(e) => return Err(e).context(format!("the policy of namespace {namespace}")),
        }
    }
    let nearest = if configs.contains(&Config::NearestDemo) {
        Some(NearestDemo::new(settings, demos).await?)
    } else {
        None
    };

    let mut out = Vec::new();
    for &config in configs {
        let mut tally = Tally::default();
        let started = Instant::now();
        for &seed in seeds {
            let mut env: Box<dyn Environment> =
                blocking(|| agent_learning_api::open_env(&args.env))?;
            let mut expert = if config == Config::Expert {
                Some(agent_learning_envs::built_in(&args.env)?.1)
            } else {
                None
            };
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut state = blocking(|| env.reset(seed))?;
            let mut steps = 0;
            let mut past: Vec<PastStep> = Vec::new();
            while steps < args.play.max_steps {
                let valid = blocking(|| env.actions())
                    .filter(|a| !a.is_empty())
                    .unwrap_or_else(|| demo_actions.to_vec());
                if valid.is_empty() {
                    bail!(
                        "{} lists no actions and no --demos were given to take them from",
                        args.env
                    );
                }
                let action = match config {
                    Config::Expert => expert
                        .as_mut()
                        .map(|e| e.act(env.as_ref()))
                        .unwrap_or_default(),
                    Config::Random => valid[rng.below(valid.len())].clone(),
                    Config::NearestDemo => match &nearest {
                        Some(n) => n.act(&state, &valid).await?,
                        None => valid[0].clone(),
                    },
                    Config::LlmBare | Config::LlmExemplars | Config::Full => {
                        let ns = match config {
                            Config::LlmBare => &bare,
                            Config::LlmExemplars => &exemplars,
                            _ => namespace,
                        };
                        let t = Instant::now();
                        let request = DecideRequest {
                            history: past[past.len().saturating_sub(args.play.history)..].to_vec(),
                            namespace: ns.to_owned(),
                            state: state.clone(),
                            valid_actions: valid.clone(),
                            policy_version: None,
                        };
                        // A busy server (a deadline, load shedding) is asked again, a few
                        // times, rather than ending the evaluation; the latency counted is
                        // what the caller waited in all.
                        let mut attempt = 1;
                        let d = loop {
                            match policy.decide(request.clone()).await {
                                Err(e) if e.is_transient() && attempt < DECIDE_ATTEMPTS => {
                                    eprintln!(
                                        "Decide on {ns} failed ({e}); asking again ({attempt} of {})",
                                        DECIDE_ATTEMPTS - 1
                                    );
                                    tokio::time::sleep(Duration::from_secs(attempt)).await;
                                    attempt += 1;
                                }
                                r => break r.with_context(|| format!("Decide on {ns}"))?,
                            }
                        };
                        tally.latencies.push(t.elapsed());
                        tally.decisions += 1;
                        tally.tokens += d.usage.prompt_tokens + d.usage.completion_tokens;
                        tally.fallbacks += usize::from(d.fallback);
                        d.action
                    }
                };
                steps += 1;
                match blocking(|| env.step(&action)) {
                    Ok(s) => {
                        let before = std::mem::replace(&mut state, s.state);
                        past.push(PastStep {
                            state: before,
                            action,
                            next_state: state.clone(),
                        });
                        if s.done {
                            break;
                        }
                    }
                    Err(EnvError::InvalidAction { .. }) => tally.invalid += 1,
                    Err(EnvError::Done) => break,
                    Err(e) => return Err(e.into()),
                }
            }
            let success = blocking(|| env.outcome()).is_some_and(|o| o.success);
            tally.episodes += 1;
            tally.successes += usize::from(success);
            tally.steps += steps;
        }
        eprintln!(
            "{}: {}/{} in {:.0?}",
            config.name(),
            tally.successes,
            tally.episodes,
            started.elapsed()
        );
        out.push((config, tally));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::wilson;

    #[test]
    fn wilson_matches_the_textbook() {
        // 8 of 10: 0.490 .. 0.943 (Wilson 95%).
        let (lo, hi) = wilson(8, 10);
        assert!(
            (lo - 0.490).abs() < 0.001 && (hi - 0.943).abs() < 0.001,
            "{lo} {hi}"
        );
        let (lo, hi) = wilson(0, 20);
        assert!(lo == 0.0 && (hi - 0.161).abs() < 0.001, "{lo} {hi}");
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }
}
