//! `agent-learning sweep`: what each part of training buys. Namespaces trained on the first N
//! demos of one file for every N of `--sizes` (the sample-efficiency sweep), and, at
//! `--ablation-demos`, two training ablations: no exploration (fit and compile only: the
//! demonstrations alone) and no reflection (exploration whose rollouts nobody reflects on, so
//! the playbook learns nothing). Each is evaluated as `eval` does, on the same unseen seeds
//! (none of any demo's), against nearest-demo imitation on the same demos.
//!
//! A namespace whose training summary is already in the output dir is not trained again, so a
//! sweep stopped half-way goes on where it stopped.

use std::collections::BTreeSet;
use std::path::PathBuf;

use agent_learning_config::Settings;
use anyhow::{Context as _, bail};
use serde_json::json;

use crate::eval::{Config, EvalArgs};

#[derive(clap::Args)]
pub struct SweepArgs {
    /// driving, support, devops, code-review, or grpc://HOST:PORT.
    #[arg(long)]
    pub env: String,
    /// Expert demos, at least as many as the largest size; size N trains on the first N.
    #[arg(long)]
    pub demos: PathBuf,
    /// Demo counts to train on (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "5,10,25,50")]
    pub sizes: Vec<usize>,
    /// Demo count of the two ablation runs (no exploration, no reflection); 0 for none.
    #[arg(long, default_value_t = 10)]
    pub ablation_demos: usize,
    /// Namespace prefix: PREFIX-dN, PREFIX-dN-no-explore, PREFIX-dN-no-reflect (else
    /// `<env name>-sweep`).
    #[arg(long)]
    pub namespace: Option<String>,
    /// How each configuration plays; the seeds of every demo in the file are skipped.
    #[command(flatten)]
    pub play: crate::eval::Episodes,
    /// Training settings for every run (JSON, as `train --config-json`).
    #[arg(long, default_value = "")]
    pub config_json: String,
    /// A running server (HOST:PORT or http(s)://HOST:PORT); else an all-in-one server runs in
    /// this process on the data dir.
    #[arg(long)]
    pub server: Option<String>,
    /// Where sweep.json, sweep.md, sweep.png and each namespace's files go (else
    /// <data dir>/sweep-<prefix>).
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// One training run of the sweep.
struct Plan {
    demos: usize,
    training: &'static str,
    /// Keys added to `--config-json`.
    ablation: Option<(&'static str, bool)>,
}

/// `extra` merged into the user's `--config-json` object.
fn config_with(user: &str, extra: Option<(&str, bool)>) -> anyhow::Result<String> {
    let mut v: serde_json::Value = if user.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str(user).context("--config-json")?
    };
    let Some(obj) = v.as_object_mut() else {
        bail!("--config-json: must be a JSON object");
    };
    if let Some((k, b)) = extra {
        obj.insert(k.to_owned(), json!(b));
    }
    Ok(if obj.is_empty() {
        String::new()
    } else {
        v.to_string()
    })
}

fn plans(sizes: &[usize], ablation_demos: usize) -> Vec<Plan> {
    let mut out: Vec<Plan> = sizes
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|n| Plan {
            demos: n,
            training: "full",
            ablation: None,
        })
        .collect();
    if ablation_demos > 0 {
        if !sizes.contains(&ablation_demos) {
            out.push(Plan {
                demos: ablation_demos,
                training: "full",
                ablation: None,
            });
        }
        out.push(Plan {
            demos: ablation_demos,
            training: "no-explore",
            ablation: Some(("explore", false)),
        });
        out.push(Plan {
            demos: ablation_demos,
            training: "no-reflect",
            ablation: Some(("reflect", false)),
        });
    }
    out
}

pub async fn run(settings: &Settings, args: &SweepArgs) -> anyhow::Result<()> {
    let demos = agent_learning_envs::read_demos(&args.demos)?;
    if args.sizes.is_empty() || args.sizes.contains(&0) {
        bail!("--sizes: give demo counts of at least 1");
    }
    let largest = args
        .sizes
        .iter()
        .copied()
        .chain([args.ablation_demos])
        .max()
        .unwrap_or_default();
    if largest > demos.len() {
        bail!(
            "--demos {} holds {} demos; --sizes/--ablation-demos need {largest}",
            args.demos.display(),
            demos.len()
        );
    }
    // Checks a grpc:// environment's name against the demos' either way.
    let named =
        agent_learning_cli::train::namespace_for(&args.env, args.namespace.as_deref(), &demos)
            .await?;
    let prefix = match &args.namespace {
        Some(_) => named,
        None => format!("{named}-sweep"),
    };
    let plans = plans(&args.sizes, args.ablation_demos);
    for p in &plans {
        agent_learning_domain::validate_namespace("--namespace", &name(&prefix, p))?;
    }
    let dir = args
        .output
        .clone()
        .unwrap_or_else(|| settings.data_dir.join(format!("sweep-{prefix}")));
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    let all_seeds: BTreeSet<u64> = demos.iter().map(|d| d.seed).collect();

    let server = agent_learning_cli::train::Server::start(settings, args.server.as_deref()).await?;
    let url = server.url.clone();
    let result = async {
        let mut rows = Vec::new();
        for p in &plans {
            let ns = name(&prefix, p);
            let ns_dir = dir.join(&ns);
            std::fs::create_dir_all(&ns_dir).with_context(|| ns_dir.display().to_string())?;
            let demos_path = ns_dir.join("demos.jsonl");
            let mut jsonl = Vec::new();
            agent_learning_envs::write_demos(&mut jsonl, &demos[..p.demos])?;
            let jsonl = String::from_utf8(jsonl)?;
            std::fs::write(&demos_path, &jsonl)
                .with_context(|| demos_path.display().to_string())?;
            let summary_path = ns_dir.join("train.json");
            if summary_path.exists() {
                eprintln!("{ns}: trained already ({})", summary_path.display());
            } else {
                eprintln!("\n{ns}: {} demos, training {}", p.demos, p.training);
                let train = crate::train::TrainArgs {
                    demos: demos_path.clone(),
                    env: args.env.clone(),
                    namespace: Some(ns.clone()),
                    server: Some(url.clone()),
                    summary: Some(summary_path.clone()),
                    config_json: config_with(&args.config_json, p.ablation)?,
                };
                crate::train::drive(&url, &ns, &args.env, &jsonl, p.demos, &train).await?;
            }
            let train: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(&summary_path)
                    .with_context(|| summary_path.display().to_string())?,
            )
            .with_context(|| summary_path.display().to_string())?;
            // Imitation on the same demos is the baseline of each size; once is enough.
            let configs = if p.training == "full" {
                vec![Config::NearestDemo, Config::Full]
            } else {
                vec![Config::Full]
            };
            let report = crate::eval::run(
                settings,
                &EvalArgs {
                    env: args.env.clone(),
                    namespace: Some(ns.clone()),
                    play: args.play.clone(),
                    demos: Some(demos_path),
                    server: Some(url.clone()),
                    configs,
                    output: Some(ns_dir.clone()),
                    avoid_seeds: all_seeds.clone(),
                },
            )
            .await?;
            let train_seconds: f64 = train["stages"]
                .as_array()
                .map(|s| s.iter().filter_map(|s| s["seconds"].as_f64()).sum())
                .unwrap_or_default();
            for r in report["configs"].as_array().into_iter().flatten() {
                rows.push(json!({
                    "namespace": ns,
                    "demos": p.demos,
                    "training": p.training,
                    "policy": r["config"],
                    "successes": r["successes"],
                    "episodes": r["episodes"],
                    "wilson95": r["wilson95"],
                    "mean_steps": r["mean_steps"],
                    "tokens_per_decision": r["tokens_per_decision"],
                    "decide_ms_p50": r["decide_ms_p50"],
                    "bullets": train["bullets"],
                    "reflections_valid": train["reflections_valid"],
                    "rollouts": train["rollouts"],
                    "train_seconds": train_seconds,
                    "seeds": report["seeds"],
                }));
            }
        }
        Ok::<_, anyhow::Error>(rows)
    }
    .await;
    let rows = server.stop(result).await?;
    write(&dir, args, &prefix, &rows)
}

fn name(prefix: &str, p: &Plan) -> String {
    match p.training {
        "full" => format!("{prefix}-d{}", p.demos),
        other => format!("{prefix}-d{}-{other}", p.demos),
    }
}

fn write(
    dir: &std::path::Path,
    args: &SweepArgs,
    prefix: &str,
    rows: &[serde_json::Value],
) -> anyhow::Result<()> {
    let mut md = format!(
        "Sweep `{prefix}` on `{}`: {} episodes per row on unseen seeds (the same for every row), at most {} steps\n\n\
         | demos | training | policy | success | Wilson 95% | mean steps | tokens/decision | bullets | valid reflections | training s |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        args.env, args.play.episodes, args.play.max_steps
    );
    for r in rows {
        let imitation = r["policy"] == "nearest-demo";
        let dash = |v: &serde_json::Value| {
            if imitation {
                "-".to_owned()
            } else {
                v.to_string()
            }
        };
        md.push_str(&format!(
            "| {} | {} | {} | {}/{} | {:.2}-{:.2} | {:.1} | {:.0} | {} | {} | {} |\n",
            r["demos"],
            if imitation {
                "-"
            } else {
                r["training"].as_str().unwrap_or_default()
            },
            r["policy"].as_str().unwrap_or_default(),
            r["successes"],
            r["episodes"],
            r["wilson95"][0].as_f64().unwrap_or_default(),
            r["wilson95"][1].as_f64().unwrap_or_default(),
            r["mean_steps"].as_f64().unwrap_or_default(),
            r["tokens_per_decision"].as_f64().unwrap_or_default(),
            dash(&r["bullets"]),
            dash(&r["reflections_valid"]),
            if imitation {
                "-".to_owned()
            } else {
                format!("{:.0}", r["train_seconds"].as_f64().unwrap_or_default())
            },
        ));
    }
    println!("\n{md}");
    std::fs::write(dir.join("sweep.md"), &md)?;
    std::fs::write(
        dir.join("sweep.json"),
        serde_json::to_string_pretty(&json!({
            "env": args.env,
            "prefix": prefix,
            "episodes": args.play.episodes,
            "max_steps": args.play.max_steps,
            "rows": rows,
        }))?,
    )?;
    let bars: Vec<agent_learning_cli::plot::Bar> = rows
        .iter()
        .map(|r| {
            let name = match (r["policy"].as_str(), r["training"].as_str()) {
                (Some("nearest-demo"), _) => format!("{} nearest", r["demos"]),
                (_, Some(t)) => format!("{} {t}", r["demos"]),
                _ => r["namespace"].as_str().unwrap_or_default().to_owned(),
            };
            agent_learning_cli::plot::Bar::from_row(name, r)
        })
        .collect();
    agent_learning_cli::plot::success_chart(
        &dir.join("sweep.png"),
        &format!("{prefix} on {}: success by demos and training", args.env),
        &bars,
    )?;
    eprintln!(
        "wrote sweep.json, sweep.md and sweep.png to {}",
        dir.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ablations_are_trained_once_at_their_size_beside_the_sweep() {
        let p = plans(&[25, 5, 10, 5], 10);
        let got: Vec<String> = p
            .iter()
            .map(|p| format!("{} {} {:?}", p.demos, p.training, p.ablation))
            .collect();
        assert_eq!(
            got,
            [
                "5 full None",
                "10 full None",
                "25 full None",
                r#"10 no-explore Some(("explore", false))"#,
                r#"10 no-reflect Some(("reflect", false))"#,
            ]
        );
        // An ablation size outside the sweep gets its full run too, to compare with.
        let p = plans(&[5], 8);
        assert_eq!(p.len(), 4);
        assert_eq!((p[1].demos, p[1].training), (8, "full"));
        assert_eq!(name("s", &p[2]), "s-d8-no-explore");
        assert!(plans(&[5, 10], 0).iter().all(|p| p.ablation.is_none()));
    }

    #[test]
    fn ablation_keys_join_the_users_settings() {
        assert_eq!(config_with("", None).unwrap(), "");
        assert_eq!(
            config_with("", Some(("explore", false))).unwrap(),
            r#"{"explore":false}"#
        );
        let v: serde_json::Value = serde_json::from_str(
            &config_with(r#"{"holdout": 2}"#, Some(("reflect", false))).unwrap(),
        )
        .unwrap();
        assert_eq!(v, json!({"holdout": 2, "reflect": false}));
        assert!(config_with("[1]", None).is_err());
        assert!(config_with("{", None).is_err());
    }
}
