//! Expert demonstrations as JSONL: one episode per line (see `demo.schema.json` beside this
//! crate's manifest). Reading checks every line and reports every error with its line number;
//! a file with any error yields no demos at all.

use std::collections::HashSet;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use crate::{EnvError, Outcome, Rng, built_in, run_expert};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoStep {
    pub state: String,
    pub action: String,
    pub next_state: String,
    pub done: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Demo {
    pub id: String,
    pub env: String,
    pub seed: u64,
    pub steps: Vec<DemoStep>,
    pub outcome: Outcome,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{path}: {}", .errors.iter().map(|(l, m)| format!("line {l}: {m}")).collect::<Vec<_>>().join("; "))]
    Invalid {
        path: String,
        errors: Vec<(usize, String)>,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error("the expert succeeded on only {got} of {tried} episodes of {env}")]
    ExpertFailing {
        env: String,
        got: usize,
        tried: usize,
    },
}

fn check(demo: &Demo) -> Result<(), String> {
    if demo.id.trim().is_empty() {
        return Err("id: must not be empty".into());
    }
    if demo.env.trim().is_empty() {
        return Err("env: must not be empty".into());
    }
    if demo.steps.is_empty() {
        return Err("steps: an episode has at least one step".into());
    }
    let last = demo.steps.len() - 1;
    // PostgreSQL cannot store a NUL character; a demo holding one is refused here, with its
    // line, rather than by the database later.
    let nul = |t: &str| t.contains('\0');
    if nul(&demo.id) || nul(&demo.env) {
        return Err("id/env: holds a NUL character (\\u0000)".into());
    }
    for (i, s) in demo.steps.iter().enumerate() {
        if nul(&s.state) || nul(&s.action) || nul(&s.next_state) {
            return Err(format!(
                "steps[{i}]: holds a NUL character (\\u0000), which no text field accepts"
            ));
        }
        if s.state.trim().is_empty() {
            return Err(format!("steps[{i}].state: must not be empty"));
        }
        if s.action.trim().is_empty() {
            return Err(format!("steps[{i}].action: must not be empty"));
        }
        if s.done && i != last {
            return Err(format!(
                "steps[{i}].done: only the last step may end the episode"
            ));
        }
        if i < last && demo.steps[i + 1].state != s.next_state {
            return Err(format!(
                "steps[{}].state: differs from steps[{i}].next_state; steps must chain",
                i + 1
            ));
        }
    }
    Ok(())
}

/// Parses and checks demos; every bad line is reported, and nothing is returned unless every
/// line is good.
pub fn parse_demos(reader: impl BufRead, path: &str) -> Result<Vec<Demo>, DemoError> {
    let mut demos = Vec::new();
    let mut errors = Vec::new();
    let mut ids = HashSet::new();
    for (i, line) in reader.lines().enumerate() {
        let n = i + 1;
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Demo>(&line) {
            Err(e) => errors.push((n, format!("not a demo: {e}"))),
            Ok(d) => match check(&d) {
                Err(m) => errors.push((n, m)),
                Ok(()) if !ids.insert(d.id.clone()) => {
                    errors.push((n, format!("id: {:?} appears twice", d.id)));
                }
                Ok(()) => demos.push(d),
            },
        }
    }
    if demos.is_empty() && errors.is_empty() {
        errors.push((0, "the file holds no demos".into()));
    }
    if errors.is_empty() {
        Ok(demos)
    } else {
        Err(DemoError::Invalid {
            path: path.to_owned(),
            errors,
        })
    }
}

pub fn read_demos(path: &std::path::Path) -> Result<Vec<Demo>, DemoError> {
    let file = std::fs::File::open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    parse_demos(std::io::BufReader::new(file), &path.display().to_string())
}

pub fn write_demos(mut out: impl Write, demos: &[Demo]) -> Result<(), DemoError> {
    for d in demos {
        serde_json::to_writer(&mut out, d).map_err(std::io::Error::other)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// `n` successful expert episodes of a built-in environment. Episode seeds come from `seed`,
/// so the same arguments always give the same demos; an episode the expert fails is skipped.
pub fn generate_demos(env_name: &str, n: usize, seed: u64) -> Result<Vec<Demo>, DemoError> {
    let (mut env, mut expert) = built_in(env_name)?;
    let mut rng = Rng::new(seed);
    let mut demos = Vec::with_capacity(n);
    let mut tried = 0;
    while demos.len() < n {
        tried += 1;
        if tried > n * 2 + 10 {
            return Err(DemoError::ExpertFailing {
                env: env_name.to_owned(),
                got: demos.len(),
                tried,
            });
        }
        let episode_seed = rng.next_u64() >> 1;
        let (steps, outcome) = run_expert(env.as_mut(), expert.as_mut(), episode_seed, 1000)?;
        if outcome.success {
            demos.push(Demo {
                id: format!("{env_name}-{seed}-{}", demos.len()),
                env: env_name.to_owned(),
                seed: episode_seed,
                steps,
                outcome,
            });
        }
    }
    Ok(demos)
}
