use agent_learning_domain::Insight;
use uuid::Uuid;

/// The closest live bullet of the insight's namespace and section.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Nearest {
    pub bullet_id: Uuid,
    pub similarity: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    Merge(Uuid),
    Add,
}

/// Decides whether an insight restates an existing bullet. The default compares cosine
/// similarity with a threshold; a smarter judge (an LLM, a cross-encoder) can replace it.
pub trait MergeJudge: Send + Sync {
    fn judge(&self, insight: &Insight, nearest: Option<Nearest>) -> Judgement;
}

#[derive(Debug, Clone, Copy)]
pub struct ThresholdJudge {
    pub threshold: f32,
}

impl MergeJudge for ThresholdJudge {
    fn judge(&self, _insight: &Insight, nearest: Option<Nearest>) -> Judgement {
        match nearest {
            Some(n) if n.similarity >= self.threshold => Judgement::Merge(n.bullet_id),
            _ => Judgement::Add,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_inclusive() {
        let j = ThresholdJudge { threshold: 0.8 };
        let i = Insight {
            id: "i".into(),
            section: "facts".into(),
            content: "c".into(),
            source: String::new(),
        };
        let id = Uuid::new_v4();
        let near = |s| {
            Some(Nearest {
                bullet_id: id,
                similarity: s,
            })
        };
        assert_eq!(j.judge(&i, near(0.8)), Judgement::Merge(id));
        assert_eq!(j.judge(&i, near(0.79)), Judgement::Add);
        assert_eq!(j.judge(&i, None), Judgement::Add);
    }
}
