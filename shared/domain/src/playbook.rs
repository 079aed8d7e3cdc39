use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Lifecycle of a bullet. Policies read bullets at or above a minimum stage; quarantined
/// bullets are never read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Shadow,
    Staging,
    Production,
    Quarantined,
}

impl Stage {
    pub const fn as_str(self) -> &'static str {
        match self {
            Stage::Shadow => "shadow",
            Stage::Staging => "staging",
            Stage::Production => "production",
            Stage::Quarantined => "quarantined",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "shadow" => Some(Stage::Shadow),
            "staging" => Some(Stage::Staging),
            "production" => Some(Stage::Production),
            "quarantined" => Some(Stage::Quarantined),
            _ => None,
        }
    }

    /// Rank in the promotion order; `None` for quarantined (outside the order).
    pub const fn rank(self) -> Option<u8> {
        match self {
            Stage::Shadow => Some(0),
            Stage::Staging => Some(1),
            Stage::Production => Some(2),
            Stage::Quarantined => None,
        }
    }

    /// Whether a bullet in this stage may be used by a reader asking for `min` or above.
    pub fn satisfies(self, min: Stage) -> bool {
        match (self.rank(), min.rank()) {
            (Some(have), Some(need)) => have >= need,
            _ => false,
        }
    }

    /// The stages a reader asking for `min` or above may use.
    pub fn at_or_above(min: Stage) -> Vec<Stage> {
        [Stage::Shadow, Stage::Staging, Stage::Production]
            .into_iter()
            .filter(|s| s.satisfies(min))
            .collect()
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Promotion gates on the helpful/harmful counters.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PromotionGates {
    pub staging_min_helpful: u32,
    pub staging_min_ratio: f64,
    pub production_min_helpful: u32,
    pub production_min_ratio: f64,
    /// Harmful votes that quarantine a bullet no vote has found helpful. (One with helpful
    /// votes is quarantined once its harmful votes reach its helpful ones.)
    #[serde(default = "default_quarantine_min_harmful")]
    pub quarantine_min_harmful: u32,
}

fn default_quarantine_min_harmful() -> u32 {
    3
}

impl Default for PromotionGates {
    fn default() -> Self {
        Self {
            staging_min_helpful: 3,
            staging_min_ratio: 3.0,
            production_min_helpful: 5,
            production_min_ratio: 5.0,
            quarantine_min_harmful: default_quarantine_min_harmful(),
        }
    }
}

impl PromotionGates {
    /// The stage the counters earn. Quarantine when harmful >= helpful > 0, or when no vote
    /// was helpful and `quarantine_min_harmful` were harmful; otherwise the highest stage whose
    /// gates pass. A bullet with no harmful votes has an unbounded ratio.
    pub fn earned(&self, helpful: u32, harmful: u32) -> Stage {
        if helpful > 0 && harmful >= helpful {
            return Stage::Quarantined;
        }
        if helpful == 0 && harmful >= self.quarantine_min_harmful.max(1) {
            return Stage::Quarantined;
        }
        let ratio = if harmful == 0 {
            f64::INFINITY
        } else {
            f64::from(helpful) / f64::from(harmful)
        };
        if helpful >= self.production_min_helpful && ratio >= self.production_min_ratio {
            Stage::Production
        } else if helpful >= self.staging_min_helpful && ratio >= self.staging_min_ratio {
            Stage::Staging
        } else {
            Stage::Shadow
        }
    }
}

/// A unit of knowledge to curate, as a reflector (or a person) states it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Insight {
    pub id: String,
    pub section: String,
    pub content: String,
    pub source: String,
}

/// One entry of the playbook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bullet {
    pub id: Uuid,
    pub namespace: String,
    pub section: String,
    pub content: String,
    pub helpful: u32,
    pub harmful: u32,
    pub evidence: u32,
    pub stage: Stage,
    pub sources: Vec<String>,
    pub deleted: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeltaKind {
    Add,
    Merge,
    Update,
    Delete,
}

impl DeltaKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            DeltaKind::Add => "add",
            DeltaKind::Merge => "merge",
            DeltaKind::Update => "update",
            DeltaKind::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "add" => Some(DeltaKind::Add),
            "merge" => Some(DeltaKind::Merge),
            "update" => Some(DeltaKind::Update),
            "delete" => Some(DeltaKind::Delete),
            _ => None,
        }
    }
}

/// A change the curator made (or, when `replayed`, had already made) to the playbook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeltaOp {
    pub kind: DeltaKind,
    pub bullet_id: Uuid,
    pub insight_id: String,
    pub similarity: f32,
    pub replayed: bool,
    pub merged_bullet_id: Option<Uuid>,
}

/// Kinds of entries in a bullet's append-only history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Added,
    Merged,
    Updated,
    CountersChanged,
    StageChanged,
    Deleted,
}

impl EventKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::Added => "added",
            EventKind::Merged => "merged",
            EventKind::Updated => "updated",
            EventKind::CountersChanged => "counters_changed",
            EventKind::StageChanged => "stage_changed",
            EventKind::Deleted => "deleted",
        }
    }
}

/// One entry of a bullet's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BulletEvent {
    pub seq: i64,
    pub bullet_id: Uuid,
    pub kind: String,
    pub insight_id: Option<String>,
    pub from_stage: Option<Stage>,
    pub to_stage: Option<Stage>,
    pub detail: serde_json::Value,
    pub at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_follow_the_defaults() {
        let g = PromotionGates::default();
        assert_eq!(g.earned(0, 0), Stage::Shadow);
        assert_eq!(g.earned(2, 0), Stage::Shadow);
        assert_eq!(g.earned(3, 0), Stage::Staging);
        assert_eq!(g.earned(3, 1), Stage::Staging);
        assert_eq!(g.earned(4, 2), Stage::Shadow);
        assert_eq!(g.earned(5, 0), Stage::Production);
        assert_eq!(g.earned(5, 1), Stage::Production);
        assert_eq!(g.earned(9, 2), Stage::Staging);
        assert_eq!(g.earned(2, 2), Stage::Quarantined);
        assert_eq!(g.earned(0, 2), Stage::Shadow);
        // Harmful evidence alone quarantines too.
        assert_eq!(g.earned(0, 3), Stage::Quarantined);
        assert_eq!(g.earned(0, 8), Stage::Quarantined);
    }

    #[test]
    fn stage_order() {
        assert!(Stage::Production.satisfies(Stage::Staging));
        assert!(!Stage::Shadow.satisfies(Stage::Staging));
        assert!(!Stage::Quarantined.satisfies(Stage::Shadow));
        assert_eq!(
            Stage::at_or_above(Stage::Staging),
            vec![Stage::Staging, Stage::Production]
        );
    }
}
