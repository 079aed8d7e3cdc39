//! Customer support: a ticket with a hidden cause; verify, diagnose, resolve within policy.

use serde::{Deserialize, Serialize};

use crate::{EnvError, Environment, Expert, Outcome, Rng, Step, invalid};

const ACTIONS: [&str; 9] = [
    "ask_order_number",
    "verify_identity",
    "check_order_status",
    "issue_refund",
    "send_replacement",
    "reset_password",
    "escalate_to_human",
    "apologize",
    "close_ticket",
];
const MAX_STEPS: u32 = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Issue {
    /// Parcel late; the fix is telling the customer its status.
    LateDelivery,
    /// Item arrived broken: replacement.
    Damaged,
    /// Wants money back: refund, which over 100 dollars only a human may approve.
    Refund,
    /// Cannot log in: password reset after identity verification.
    Login,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Ticket {
    issue: Issue,
    amount: u32,
    order_known: bool,
    verified: bool,
    status_checked: bool,
    resolved: bool,
    policy_violation: Option<String>,
    apologized: bool,
    step: u32,
    done: bool,
    last: String,
}

#[derive(Debug, Default, Clone)]
pub struct Support {
    ticket: Option<Ticket>,
}

impl Ticket {
    fn opening(&self) -> &'static str {
        match self.issue {
            Issue::LateDelivery => "Where is my order? It should have arrived days ago.",
            Issue::Damaged => "My order arrived broken.",
            Issue::Refund => "I want my money back for my order.",
            Issue::Login => "I cannot log in to my account.",
        }
    }

    fn render(&self) -> String {
        let mut s = format!("customer: \"{}\"", self.opening());
        s.push_str(&format!(
            " order number: {}. identity: {}. order status: {}. resolved: {}.",
            if self.order_known { "known" } else { "unknown" },
            if self.verified {
                "verified"
            } else {
                "unverified"
            },
            if self.status_checked {
                match self.issue {
                    Issue::LateDelivery => "in transit, arrives tomorrow".to_owned(),
                    _ => format!("delivered, amount {} dollars", self.amount),
                }
            } else {
                "not checked".to_owned()
            },
            if self.resolved { "yes" } else { "no" },
        ));
        if !self.last.is_empty() {
            s.push_str(&format!(" last: {}", self.last));
        }
        if self.done {
            s.push_str(" ticket closed.");
        }
        s
    }

    fn apply(&mut self, action: &str) {
        self.step += 1;
        let violation = |t: &mut Ticket, why: &str| {
            if t.policy_violation.is_none() {
                t.policy_violation = Some(why.to_owned());
            }
        };
        self.last = match action {
            "ask_order_number" => {
                self.order_known = true;
                "the customer gave the order number.".into()
            }
            "verify_identity" => {
                self.verified = true;
                "identity verified.".into()
            }
            "check_order_status" if !self.order_known => {
                "cannot check status without an order number.".into()
            }
            "check_order_status" => {
                self.status_checked = true;
                if self.issue == Issue::LateDelivery {
                    self.resolved = true;
                }
                "status retrieved and shared with the customer.".into()
            }
            "issue_refund" => {
                if !self.verified {
                    violation(self, "refund without verifying identity");
                } else if !self.status_checked {
                    violation(self, "refund without checking the order");
                } else if self.amount > 100 {
                    violation(self, "refund over 100 dollars without a human");
                } else if self.issue == Issue::Refund {
                    self.resolved = true;
                } else {
                    violation(self, "refund for an issue that did not call for one");
                }
                "refund issued.".into()
            }
            "send_replacement" => {
                if self.issue == Issue::Damaged && self.status_checked {
                    self.resolved = true;
                } else {
                    violation(self, "replacement without a damaged, checked order");
                }
                "replacement sent.".into()
            }
            "reset_password" => {
                if !self.verified {
                    violation(self, "password reset without verifying identity");
                } else if self.issue == Issue::Login {
                    self.resolved = true;
                }
                "password reset link sent.".into()
            }
            "escalate_to_human" => {
                if self.issue == Issue::Refund
                    && self.amount > 100
                    && self.verified
                    && self.status_checked
                {
                    self.resolved = true;
                    "a human agent approved the refund.".into()
                } else {
                    violation(self, "needless escalation");
                    "a human agent took over; it was not needed.".into()
                }
            }
            "apologize" => {
                self.apologized = true;
                "the customer appreciates the apology.".into()
            }
            _ => {
                self.done = true;
                "ticket closed.".into()
            }
        };
        if self.step >= MAX_STEPS {
            self.done = true;
        }
    }
}

impl Environment for Support {
    fn name(&self) -> &'static str {
        "support"
    }

    fn reset(&mut self, seed: u64) -> Result<String, EnvError> {
        let mut rng = Rng::new(seed);
        let issue = [
            Issue::LateDelivery,
            Issue::Damaged,
            Issue::Refund,
            Issue::Login,
        ][rng.below(4)];
        let t = Ticket {
            issue,
            amount: 20 + 10 * rng.below(20) as u32,
            order_known: false,
            verified: false,
            status_checked: false,
            resolved: false,
            policy_violation: None,
            apologized: false,
            step: 0,
            done: false,
            last: String::new(),
        };
        let s = t.render();
        self.ticket = Some(t);
        Ok(s)
    }

    fn step(&mut self, action: &str) -> Result<Step, EnvError> {
        let t = self.ticket.as_mut().ok_or(EnvError::NotStarted)?;
        if t.done {
            return Err(EnvError::Done);
        }
        if !ACTIONS.contains(&action) {
            let valid: Vec<String> = ACTIONS.iter().map(|a| a.to_string()).collect();
            return Err(invalid(action, &valid));
        }
        t.apply(action);
        Ok(Step {
            state: t.render(),
            done: t.done,
        })
    }

    fn actions(&self) -> Option<Vec<String>> {
        self.ticket
            .as_ref()
            .map(|_| ACTIONS.iter().map(|a| a.to_string()).collect())
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        self.ticket
            .as_ref()
            .and_then(|t| serde_json::to_vec(t).ok())
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<String, EnvError> {
        let t: Ticket =
            serde_json::from_slice(snapshot).map_err(|e| EnvError::Snapshot(e.to_string()))?;
        let s = t.render();
        self.ticket = Some(t);
        Ok(s)
    }

    fn outcome(&self) -> Option<Outcome> {
        let t = self.ticket.as_ref().filter(|t| t.done)?;
        Some(Outcome {
            success: t.resolved && t.policy_violation.is_none(),
            metrics: [
                ("steps".to_owned(), f64::from(t.step)),
                (
                    "policy_violation".to_owned(),
                    f64::from(u8::from(t.policy_violation.is_some())),
                ),
                ("apologized".to_owned(), f64::from(u8::from(t.apologized))),
            ]
            .into(),
        })
    }
}

/// Follows the support policy: order number, verification, status, then the fix the issue
/// calls for (a human for refunds over 100 dollars), then close.
#[derive(Debug, Default, Clone, Copy)]
pub struct SupportExpert;

impl Expert for SupportExpert {
    fn act(&mut self, env: &dyn Environment) -> String {
        let Some(t) = env
            .snapshot()
            .and_then(|s| serde_json::from_slice::<Ticket>(&s).ok())
        else {
            return "close_ticket".into();
        };
        let next = if t.resolved {
            "close_ticket"
        } else if t.issue == Issue::Damaged && !t.apologized {
            "apologize"
        } else if t.issue == Issue::Login {
            if t.verified {
                "reset_password"
            } else {
                "verify_identity"
            }
        } else if !t.order_known {
            "ask_order_number"
        } else if !t.verified && t.issue == Issue::Refund {
            "verify_identity"
        } else if !t.status_checked {
            "check_order_status"
        } else {
            match t.issue {
                Issue::Damaged => "send_replacement",
                Issue::Refund if t.amount > 100 => "escalate_to_human",
                Issue::Refund => "issue_refund",
                _ => "close_ticket",
            }
        };
        next.into()
    }
}
