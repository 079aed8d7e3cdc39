//! DevOps incident response: an alert with a hidden root cause; investigate, fix, resolve.

use serde::{Deserialize, Serialize};

use crate::{EnvError, Environment, Expert, Outcome, Rng, Step, invalid};

const ACTIONS: [&str; 10] = [
    "check_logs",
    "check_metrics",
    "check_recent_deploys",
    "check_disk",
    "rollback_deploy",
    "restart_service",
    "increase_db_pool",
    "clean_disk",
    "scale_out",
    "resolve_incident",
];
const MAX_STEPS: u32 = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Cause {
    BadDeploy,
    DbPoolExhausted,
    DiskFull,
    TrafficSpike,
}

impl Cause {
    fn fix(self) -> &'static str {
        match self {
            Cause::BadDeploy => "rollback_deploy",
            Cause::DbPoolExhausted => "increase_db_pool",
            Cause::DiskFull => "clean_disk",
            Cause::TrafficSpike => "scale_out",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Incident {
    cause: Cause,
    service: String,
    findings: Vec<String>,
    fixed: bool,
    wrong_fixes: u32,
    /// A restart hides the symptoms for a while without fixing anything.
    masked: bool,
    step: u32,
    done: bool,
    resolved_while_broken: bool,
}

#[derive(Debug, Default, Clone)]
pub struct DevOps {
    incident: Option<Incident>,
}

impl Incident {
    fn symptoms(&self) -> &'static str {
        if self.fixed {
            "error rate back to normal"
        } else if self.masked {
            "error rate briefly lower after the restart"
        } else {
            "error rate 12% and p99 latency 4 s"
        }
    }

    fn render(&self) -> String {
        let mut s = format!(
            "alert: {} service: {}. step {}.",
            self.service,
            self.symptoms(),
            self.step
        );
        if !self.findings.is_empty() {
            s.push_str(" findings: ");
            s.push_str(&self.findings.join(" "));
        }
        if self.done {
            s.push_str(" incident closed.");
        }
        s
    }

    fn find(&mut self, f: String) {
        if !self.findings.contains(&f) {
            self.findings.push(f);
        }
    }

    fn apply(&mut self, action: &str) {
        self.step += 1;
        self.masked = false;
        match action {
            "check_logs" => self.find(match self.cause {
                Cause::BadDeploy => {
                    "logs: NullPointerException in the new checkout handler.".into()
                }
                Cause::DbPoolExhausted => "logs: timeout acquiring a database connection.".into(),
                Cause::DiskFull => "logs: write failed: no space left on device.".into(),
                Cause::TrafficSpike => "logs: request queue full, dropping requests.".into(),
            }),
            "check_metrics" => self.find(match self.cause {
                Cause::TrafficSpike => "metrics: requests per second 3x the usual, CPU 97%.".into(),
                Cause::DbPoolExhausted => "metrics: db pool 100/100 in use, CPU 40%.".into(),
                _ => "metrics: traffic normal, CPU 45%.".into(),
            }),
            "check_recent_deploys" => self.find(match self.cause {
                Cause::BadDeploy => "deploys: v2.14 went out 10 minutes before the alert.".into(),
                _ => "deploys: nothing in the last 24 hours.".into(),
            }),
            "check_disk" => self.find(match self.cause {
                Cause::DiskFull => "disk: /var at 100%.".into(),
                _ => "disk: /var at 41%.".into(),
            }),
            "restart_service" => self.masked = !self.fixed,
            "resolve_incident" => {
                self.done = true;
                self.resolved_while_broken = !self.fixed;
            }
            fix => {
                if fix == self.cause.fix() {
                    self.fixed = true;
                } else {
                    self.wrong_fixes += 1;
                }
            }
        }
        if self.step >= MAX_STEPS {
            self.done = true;
        }
    }
}

impl Environment for DevOps {
    fn name(&self) -> &'static str {
        "devops"
    }

    fn reset(&mut self, seed: u64) -> Result<String, EnvError> {
        let mut rng = Rng::new(seed);
        let cause = [
            Cause::BadDeploy,
            Cause::DbPoolExhausted,
            Cause::DiskFull,
            Cause::TrafficSpike,
        ][rng.below(4)];
        let service = ["checkout", "search", "payments", "accounts"][rng.below(4)].to_owned();
        let i = Incident {
            cause,
            service,
            findings: Vec::new(),
            fixed: false,
            wrong_fixes: 0,
            masked: false,
            step: 0,
            done: false,
            resolved_while_broken: false,
        };
        let s = i.render();
        self.incident = Some(i);
        Ok(s)
    }

    fn step(&mut self, action: &str) -> Result<Step, EnvError> {
        let i = self.incident.as_mut().ok_or(EnvError::NotStarted)?;
        if i.done {
            return Err(EnvError::Done);
        }
        if !ACTIONS.contains(&action) {
            let valid: Vec<String> = ACTIONS.iter().map(|a| a.to_string()).collect();
            return Err(invalid(action, &valid));
        }
        i.apply(action);
        Ok(Step {
            state: i.render(),
            done: i.done,
        })
    }

    fn actions(&self) -> Option<Vec<String>> {
        self.incident
            .as_ref()
            .map(|_| ACTIONS.iter().map(|a| a.to_string()).collect())
    }

    fn snapshot(&self) -> Option<Vec<u8>> {
        self.incident
            .as_ref()
            .and_then(|i| serde_json::to_vec(i).ok())
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<String, EnvError> {
        let i: Incident =
            serde_json::from_slice(snapshot).map_err(|e| EnvError::Snapshot(e.to_string()))?;
        let s = i.render();
        self.incident = Some(i);
        Ok(s)
    }

    fn outcome(&self) -> Option<Outcome> {
        let i = self.incident.as_ref().filter(|i| i.done)?;
        Some(Outcome {
            success: i.fixed && !i.resolved_while_broken && i.wrong_fixes == 0,
            metrics: [
                ("steps".to_owned(), f64::from(i.step)),
                ("wrong_fixes".to_owned(), f64::from(i.wrong_fixes)),
            ]
            .into(),
        })
    }
}

/// Investigates before acting: deploys, logs and metrics, then the disk, then the one fix
/// the evidence points to, then resolves.
#[derive(Debug, Default, Clone, Copy)]
pub struct DevOpsExpert;

impl Expert for DevOpsExpert {
    fn act(&mut self, env: &dyn Environment) -> String {
        let Some(i) = env
            .snapshot()
            .and_then(|s| serde_json::from_slice::<Incident>(&s).ok())
        else {
            return "resolve_incident".into();
        };
        if i.fixed {
            return "resolve_incident".into();
        }
        let seen = |prefix: &str| i.findings.iter().any(|f| f.starts_with(prefix));
        let says = |text: &str| i.findings.iter().any(|f| f.contains(text));
        let next = if !seen("deploys:") {
            "check_recent_deploys"
        } else if says("went out") {
            "rollback_deploy"
        } else if !seen("logs:") {
            "check_logs"
        } else if says("no space left") {
            "clean_disk"
        } else if says("database connection") {
            "increase_db_pool"
        } else if !seen("metrics:") {
            "check_metrics"
        } else if says("3x the usual") {
            "scale_out"
        } else {
            "check_disk"
        };
        next.into()
    }
}
