//! A run's training configuration: the server's `pipeline` and `policy` settings, overridden
//! per run by `StartTraining.config_json`.

use agent_learning_config::Settings;
use agent_learning_domain::{InvalidInput, Stage};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    pub alternatives: u32,
    pub branch_points: u32,
    pub every_step: bool,
    pub holdout: u32,
    pub stall_timeout_secs: u64,
    pub instructions_template: String,
    pub exemplars_k: u32,
    pub min_stage: Stage,
    pub token_budget: u32,
    /// Ablation: `false` skips exploration (and so reflection and curation): the policy learns
    /// from the demonstrations alone.
    #[serde(default = "yes")]
    pub explore: bool,
    /// Ablation: `false` explores without publishing the rollouts to reflectors, and skips
    /// reflection and curation: the playbook learns nothing from this run.
    #[serde(default = "yes")]
    pub reflect: bool,
}

fn yes() -> bool {
    true
}

/// Every key optional: what `config_json` may say.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Overrides {
    alternatives: Option<u32>,
    branch_points: Option<u32>,
    every_step: Option<bool>,
    holdout: Option<u32>,
    stall_timeout_secs: Option<u64>,
    instructions_template: Option<String>,
    exemplars_k: Option<u32>,
    min_stage: Option<String>,
    token_budget: Option<u32>,
    explore: Option<bool>,
    reflect: Option<bool>,
}

impl TrainingConfig {
    pub fn defaults(s: &Settings) -> Self {
        Self {
            alternatives: s.pipeline.alternatives,
            branch_points: s.pipeline.branch_points,
            every_step: false,
            holdout: s.pipeline.holdout,
            stall_timeout_secs: s.pipeline.stall_timeout_secs,
            instructions_template: s.policy.instructions_template.clone(),
            exemplars_k: s.policy.exemplars_k,
            min_stage: s.policy.min_stage,
            token_budget: s.policy.token_budget,
            explore: true,
            reflect: true,
        }
    }

    /// The defaults with `json`'s keys applied; unknown keys and bad values name themselves.
    pub fn from_json(s: &Settings, json: &str) -> Result<Self, InvalidInput> {
        let mut c = Self::defaults(s);
        if json.trim().is_empty() {
            return Ok(c);
        }
        let o: Overrides = serde_json::from_str(json)
            .map_err(|e| InvalidInput::new("config_json", e.to_string()))?;
        if let Some(v) = o.alternatives {
            if v == 0 || v > 16 {
                return Err(InvalidInput::new(
                    "config_json.alternatives",
                    "must be in 1..=16",
                ));
            }
            c.alternatives = v;
        }
        if let Some(v) = o.branch_points {
            c.branch_points = v;
        }
        if let Some(v) = o.every_step {
            c.every_step = v;
        }
        if let Some(v) = o.holdout {
            c.holdout = v;
        }
        if let Some(v) = o.stall_timeout_secs {
            if v == 0 {
                return Err(InvalidInput::new(
                    "config_json.stall_timeout_secs",
                    "must be at least 1",
                ));
            }
            c.stall_timeout_secs = v;
        }
        if let Some(v) = o.instructions_template {
            c.instructions_template = v;
        }
        if let Some(v) = o.exemplars_k {
            if v > 20 {
                return Err(InvalidInput::new(
                    "config_json.exemplars_k",
                    "must be at most 20",
                ));
            }
            c.exemplars_k = v;
        }
        if let Some(v) = o.min_stage {
            c.min_stage = Stage::parse(&v)
                .filter(|s| *s != Stage::Quarantined)
                .ok_or_else(|| {
                    InvalidInput::new(
                        "config_json.min_stage",
                        format!("{v:?} is not one of shadow, staging, production"),
                    )
                })?;
        }
        if let Some(v) = o.token_budget {
            if v == 0 {
                return Err(InvalidInput::new(
                    "config_json.token_budget",
                    "must be at least 1",
                ));
            }
            c.token_budget = v;
        }
        if let Some(v) = o.explore {
            c.explore = v;
        }
        if let Some(v) = o.reflect {
            c.reflect = v;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::load(&agent_learning_config::Sources::default()).unwrap()
    }

    #[test]
    fn ablations_are_off_by_default_and_named_when_wrong() {
        let s = settings();
        let c = TrainingConfig::from_json(&s, "").unwrap();
        assert!(c.explore && c.reflect);
        let c = TrainingConfig::from_json(&s, r#"{"reflect": false}"#).unwrap();
        assert!(c.explore && !c.reflect);
        let c = TrainingConfig::from_json(&s, r#"{"explore": false}"#).unwrap();
        assert!(!c.explore && c.reflect);
        let e = TrainingConfig::from_json(&s, r#"{"explore": "no"}"#).unwrap_err();
        assert_eq!(e.field, "config_json");
        assert!(e.reason.contains("boolean"), "{e:?}");
        // A run stored before the ablation keys existed reads as a full run.
        let mut stored = serde_json::to_value(TrainingConfig::defaults(&s)).unwrap();
        stored.as_object_mut().unwrap().remove("explore");
        stored.as_object_mut().unwrap().remove("reflect");
        let c: TrainingConfig = serde_json::from_value(stored).unwrap();
        assert!(c.explore && c.reflect);
    }
}
