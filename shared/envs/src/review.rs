//! Code review: a pull request with hidden defects; inspect, comment on each, decide.

use serde::{Deserialize, Serialize};

use crate::{EnvError, Environment, Expert, Outcome, Rng, Step, invalid};

const ACTIONS: [&str; 9] = [
    "read_diff",
    "run_tests",
    "scan_for_secrets",
    "comment_missing_tests",
    "comment_unchecked_error",
    "comment_secret",
    "comment_style",
    "request_changes",
    "approve",
];
const MAX_STEPS: u32 = 12;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Pr {
    title: String,
    missing_tests: bool,
    unchecked_error: bool,
    secret: bool,
    diff_read: bool,
    tests_run: bool,
    scanned: bool,
    comments: Vec<String>,
    false_comments: u32,
    decision: Option<String>,
    step: u32,
    done: bool,
}

#[derive(Debug, Default, Clone)]
pub struct CodeReview {
    pr: Option<Pr>,
}

impl Pr {
    fn defects(&self) -> Vec<&'static str> {
        let mut d = Vec::new();
        if self.missing_tests {
            d.push("comment_missing_tests");
        }
        if self.unchecked_error {
            d.push("comment_unchecked_error");
        }
        if self.secret {
            d.push("comment_secret");
        }
        d
    }

    fn render(&self) -> String {
        let mut s = format!("pull request: \"{}\".", self.title);
        if self.diff_read {
            s.push_str(if self.unchecked_error {
                " diff: adds a handler; one call's returned error is ignored."
            } else {
                " diff: adds a handler; every returned error is handled."
            });
            s.push_str(if self.missing_tests {
                " no test files changed."
            } else {
                " tests added for the handler."
            });
        } else {
            s.push_str(" diff not read yet.");
        }
        if self.tests_run {
            s.push_str(" test suite: passing.");
        }
        if self.scanned {
            s.push_str(if self.secret {
                " secret scan: an API key is committed in config.yaml."
            } else {
                " secret scan: clean."
            });
        }
        if !self.comments.is_empty() {
            s.push_str(&format!(" comments so far: {}.", self.comments.join(", ")));
        }
        if let Some(d) = &self.decision {
            s.push_str(&format!(" review submitted: {d}."));
        }
        s
    }

    fn apply(&mut self, action: &str) {
        self.step += 1;
        match action {
            "read_diff" => self.diff_read = true,
            "run_tests" => self.tests_run = true,
            "scan_for_secrets" => self.scanned = true,
            "request_changes" | "approve" => {
                self.decision = Some(action.to_owned());
                self.done = true;
            }
            comment => {
                let real = self.defects().contains(&comment);
                if !real {
                    self.false_comments += 1;
                }
                if !self.comments.iter().any(|c| c == comment) {
                    self.comments.push(comment.to_owned());
                }
            }
        }
        if self.step >= MAX_STEPS {
            self.done = true;
        }
    }
}

impl Environment for CodeReview {
    fn name(&self) -> &'static str {
        "code-review"
    }

    fn reset(&mut self, seed: u64) -> Result<String, EnvError> {
        let mut rng = Rng::new(seed);
        let title = [
            "Add retry to the payment client",
            "New endpoint for order history",
            "Cache product lookups",
            "Send a webhook on refund",
        ][rng.below(4)]
        .to_owned();
        let pr = Pr {
            title,
            missing_tests: rng.chance(0.4),
            unchecked_error: rng.chance(0.35),
            secret: rng.chance(0.2),
            diff_read: false,
            tests_run: false,
            scanned: false,
            comments: Vec::new(),
            false_comments: 0,
            decision: None,
            step: 0,
            done: false,
        };
        let s = pr.render();
        self.pr = Some(pr);
        Ok(s)
    }

    fn step(&mut self, action: &str) -> Result<Step, EnvError> {
        let pr = self.pr.as_mut().ok_or(EnvError::NotStarted)?;
        if pr.done {
            return Err(EnvError::Done);
        }
        if !ACTIONS.contains(&action) {
            let valid: Vec<String> = ACTIONS.iter().map(|a| a.to_string()).collect();
            return Err(invalid(action, &valid));
        }
        pr.apply(action);
        Ok(Step {
            state: pr.render(),
            done: pr.done,
        })
    }

    fn actions(&self) -> Option<Vec<String>> {
        self.pr
            .as_ref()
            .map(|_| ACTIONS.iter().map(|a| a.to_string()).collect())
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        self.pr.as_ref().and_then(|p| serde_json::to_vec(p).ok())
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<String, EnvError> {
        let p: Pr =
            serde_json::from_slice(snapshot).map_err(|e| EnvError::Snapshot(e.to_string()))?;
        let s = p.render();
        self.pr = Some(p);
        Ok(s)
    }

    fn outcome(&self) -> Option<Outcome> {
        let pr = self.pr.as_ref().filter(|p| p.done)?;
        let defects = pr.defects();
        let all_flagged = defects.iter().all(|d| pr.comments.iter().any(|c| c == d));
        let right_decision = match pr.decision.as_deref() {
            Some("approve") => defects.is_empty(),
            Some("request_changes") => !defects.is_empty(),
            _ => false,
        };
        Some(Outcome {
            success: right_decision && all_flagged && pr.false_comments == 0,
            metrics: [
                ("steps".to_owned(), f64::from(pr.step)),
                ("defects".to_owned(), defects.len() as f64),
                ("false_comments".to_owned(), f64::from(pr.false_comments)),
            ]
            .into(),
        })
    }
}

/// Reads the diff, scans for secrets, comments on each defect it sees, then decides.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReviewExpert;

impl Expert for ReviewExpert {
    fn act(&mut self, env: &dyn Environment) -> String {
        let Some(pr) = env
            .snapshot()
            .and_then(|s| serde_json::from_slice::<Pr>(&s).ok())
        else {
            return "approve".into();
        };
        if !pr.diff_read {
            return "read_diff".into();
        }
        if !pr.scanned {
            return "scan_for_secrets".into();
        }
        if let Some(d) = pr
            .defects()
            .into_iter()
            .find(|d| !pr.comments.iter().any(|c| c == d))
        {
            return d.into();
        }
        if pr.defects().is_empty() {
            "approve".into()
        } else {
            "request_changes".into()
        }
    }
}
