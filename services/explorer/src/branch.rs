//! Real branching in an environment: replay the demo from its seed, and at each branch point
//! snapshot, try each alternative, restore. Runs on a blocking thread (environments are
//! synchronous).

use agent_learning_api::{Demo, open_env};
use agent_learning_envs::{EnvError, Rng};

use crate::pick;

#[derive(Debug, Clone)]
pub struct BranchPlan {
    /// Step indexes to branch at, ascending.
    pub steps: Vec<usize>,
    pub alternatives: usize,
}

/// What the environment could tell at one branch point.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Alternatives actually run: (action, next state, done).
    Branched(Vec<(String, String, bool)>),
    /// The environment cannot branch here (no snapshot, or the replay diverged from the demo):
    /// the outcomes must be imagined; `actions` are the valid actions if it offered them.
    Imagine { actions: Option<Vec<String>> },
}

/// `points` step indexes spread evenly over an episode of `len` steps; 0: every step.
pub fn branch_points(len: usize, points: u32) -> Vec<usize> {
    if points == 0 || points as usize >= len {
        return (0..len).collect();
    }
    let n = points as usize;
    let mut out: Vec<usize> = (1..=n).map(|i| i * len / (n + 1)).collect();
    out.dedup();
    out
}

fn same(a: &str, b: &str) -> bool {
    a.split_whitespace().eq(b.split_whitespace())
}

/// Replays `demo` in the environment named `spec` and branches at the plan's steps.
pub fn explore_in_env(
    spec: &str,
    demo: &Demo,
    plan: &BranchPlan,
) -> Result<Vec<Outcome>, EnvError> {
    let mut env = open_env(spec)?;
    let first = env.reset(demo.seed)?;
    let mut diverged = !same(&first, &demo.steps[0].state);
    if diverged {
        tracing::warn!(demo = %demo.id, "the environment's first state differs from the demo's; imagining its branches");
    }
    let mut out = Vec::with_capacity(plan.steps.len());
    let mut next = plan.steps.iter().copied().peekable();
    for (i, step) in demo.steps.iter().enumerate() {
        let Some(&at) = next.peek() else { break };
        if diverged {
            break;
        }
        if at == i {
            next.next();
            let actions = env.actions();
            match (env.snapshot(), actions) {
                (Some(snap), Some(actions)) => {
                    let mut rng =
                        Rng::new(demo.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                    let mut alts = Vec::new();
                    for action in pick(&actions, &step.action, plan.alternatives, &mut rng) {
                        env.restore(&snap)?;
                        let s = env.step(&action)?;
                        alts.push((action, s.state, s.done));
                    }
                    env.restore(&snap)?;
                    out.push(Outcome::Branched(alts));
                }
                (_, actions) => out.push(Outcome::Imagine { actions }),
            }
        }
        match env.step(&step.action) {
            Ok(s) if same(&s.state, &step.next_state) => {}
            Ok(_) | Err(_) => {
                tracing::warn!(demo = %demo.id, step = i, "replay diverged from the demo; imagining later branches");
                diverged = true;
            }
        }
    }
    // Branch points the replay never reached are imagined.
    out.extend(next.map(|_| Outcome::Imagine { actions: None }));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_points_spread_over_the_episode() {
        assert_eq!(branch_points(60, 1), [30]);
        assert_eq!(branch_points(60, 2), [20, 40]);
        assert_eq!(branch_points(3, 0), [0, 1, 2]);
        assert_eq!(branch_points(2, 5), [0, 1]);
    }

    #[test]
    fn driving_branches_for_real_and_restores() {
        let demo = &agent_learning_envs::generate_demos("driving", 1, 7).expect("demos")[0];
        let pb_demo = Demo::from(demo);
        let plan = BranchPlan {
            steps: branch_points(pb_demo.steps.len(), 3),
            alternatives: 2,
        };
        let out = explore_in_env("driving", &pb_demo, &plan).expect("explore");
        assert_eq!(out.len(), 3);
        for (o, &at) in out.iter().zip(&plan.steps) {
            let Outcome::Branched(alts) = o else {
                panic!("driving snapshots, so every branch is real: {o:?}")
            };
            assert_eq!(alts.len(), 2);
            for (action, next, _) in alts {
                assert_ne!(action, &pb_demo.steps[at].action);
                assert!(!next.is_empty());
            }
        }
        // The replay stayed on the demo: restoring after each branch worked.
        let again = explore_in_env("driving", &pb_demo, &plan).expect("explore");
        assert_eq!(out, again, "deterministic");
    }
}
