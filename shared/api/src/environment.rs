//! [`RemoteEnvironment`]: an environment served over gRPC (in any language), behind the same
//! synchronous `Environment` trait as the built-in ones.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Duration;

use crate::{ApiKey, KeyedChannel};
use agent_learning_envs::{EnvError, Environment, Outcome, Step};
use agent_learning_proto::v1 as pb;
use pb::environment_client::EnvironmentClient;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot reach {url}: {message}")]
    Connect { url: String, message: String },
    #[error("the client worker stopped")]
    Worker,
}

enum Call {
    Reset(u64),
    Step(String, String),
    Actions(String),
    Snapshot(String),
    Restore(String, String),
    Close(String),
}

enum Answer {
    Reset(pb::ResetResponse),
    Step(pb::StepResponse),
    Actions(Vec<String>),
    Snapshot(String),
    Restore(String),
    Closed,
}

type Job = (Call, mpsc::Sender<Result<Answer, Status>>);

/// An environment served over gRPC, behind the same synchronous trait as the built-in ones.
/// Calls run on a worker thread with its own runtime, so this works from any thread; from
/// async code, call it inside `spawn_blocking` as any blocking environment.
pub struct RemoteEnvironment {
    jobs: mpsc::Sender<Job>,
    episode: Option<String>,
    capabilities: pb::Capabilities,
    outcome: Option<Outcome>,
    /// The name the server gave in its last `ResetResponse.env` (empty when it gives none).
    reported: String,
}

async fn answer(
    client: &mut EnvironmentClient<KeyedChannel>,
    call: Call,
) -> Result<Answer, Status> {
    Ok(match call {
        Call::Reset(seed) => {
            Answer::Reset(client.reset(pb::ResetRequest { seed }).await?.into_inner())
        }
        Call::Step(episode_id, action) => Answer::Step(
            client
                .step(pb::StepRequest { episode_id, action })
                .await?
                .into_inner(),
        ),
        Call::Actions(episode_id) => Answer::Actions(
            client
                .actions(pb::ActionsRequest { episode_id })
                .await?
                .into_inner()
                .actions,
        ),
        Call::Snapshot(episode_id) => Answer::Snapshot(
            client
                .snapshot(pb::SnapshotRequest { episode_id })
                .await?
                .into_inner()
                .snapshot_id,
        ),
        Call::Restore(episode_id, snapshot_id) => Answer::Restore(
            client
                .restore(pb::RestoreRequest {
                    episode_id,
                    snapshot_id,
                })
                .await?
                .into_inner()
                .state,
        ),
        Call::Close(episode_id) => {
            match client.close(pb::CloseRequest { episode_id }).await {
                // A server from before Close keeps its episodes until it evicts them.
                Err(s) if s.code() == Code::Unimplemented => {}
                other => {
                    other?;
                }
            }
            Answer::Closed
        }
    })
}

fn remote(status: Status, action: &str) -> EnvError {
    match status.code() {
        Code::InvalidArgument if !action.is_empty() => EnvError::InvalidAction {
            action: action.to_owned(),
            // Servers name the valid actions after "valid actions: " (ours do); else the
            // whole message says what was wrong.
            valid: status
                .message()
                .rsplit_once("valid actions: ")
                .map_or(status.message(), |(_, valid)| valid)
                .to_owned(),
        },
        Code::FailedPrecondition => EnvError::Done,
        _ => EnvError::Remote(format!("{:?}: {}", status.code(), status.message())),
    }
}

impl RemoteEnvironment {
    /// Connects to an Environment server at `url` (`http://host:port`).
    pub fn connect(url: &str) -> Result<Self, RemoteError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let target = url.to_owned();
        // The process's key: an Environment server with keys wants the `learn` role.
        let key = ApiKey::process();
        std::thread::Builder::new()
            .name("remote-env".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let connected = rt.block_on(async {
                    crate::endpoint(&target)
                        .map_err(|e| e.to_string())?
                        .connect_timeout(Duration::from_secs(10))
                        .timeout(Duration::from_secs(60))
                        .connect()
                        .await
                        .map_err(|e| e.to_string())
                });
                let mut client = match connected {
                    Ok(ch) => {
                        let _ = ready_tx.send(Ok(()));
                        EnvironmentClient::with_interceptor(ch, key)
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok((call, reply)) = rx.recv() {
                    let _ = reply.send(rt.block_on(answer(&mut client, call)));
                }
            })
            .map_err(|e| RemoteError::Connect {
                url: url.to_owned(),
                message: e.to_string(),
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                jobs,
                episode: None,
                capabilities: pb::Capabilities::default(),
                outcome: None,
                reported: String::new(),
            }),
            Ok(Err(message)) => Err(RemoteError::Connect {
                url: url.to_owned(),
                message,
            }),
            Err(_) => Err(RemoteError::Worker),
        }
    }

    fn call(&self, call: Call) -> Result<Answer, Status> {
        let (tx, rx) = mpsc::channel();
        self.jobs
            .send((call, tx))
            .map_err(|_| Status::unavailable("the client worker stopped"))?;
        rx.recv()
            .map_err(|_| Status::unavailable("the client worker stopped"))?
    }

    /// The environment's own name, as its last `Reset` reported it (`ResetResponse.env`);
    /// empty before a reset or when the server names none.
    pub fn reported_name(&self) -> &str {
        &self.reported
    }

    fn episode(&self) -> Result<String, EnvError> {
        self.episode.clone().ok_or(EnvError::NotStarted)
    }

    /// Tells the server the current episode is over (it forgets it and its snapshots). Not
    /// waited for: the worker sends it before any later call.
    fn close_episode(&mut self) {
        if let Some(id) = self.episode.take() {
            let (tx, _rx) = mpsc::channel();
            let _ = self.jobs.send((Call::Close(id), tx));
        }
    }
}

impl Drop for RemoteEnvironment {
    fn drop(&mut self) {
        self.close_episode();
    }
}

impl Environment for RemoteEnvironment {
    fn name(&self) -> &'static str {
        "grpc"
    }

    fn reset(&mut self, seed: u64) -> Result<String, EnvError> {
        self.close_episode();
        match self.call(Call::Reset(seed)).map_err(|s| remote(s, ""))? {
            Answer::Reset(r) => {
                self.episode = Some(r.episode_id);
                self.capabilities = r.capabilities.unwrap_or_default();
                self.outcome = None;
                self.reported = r.env;
                Ok(r.state)
            }
            _ => Err(EnvError::Remote("mismatched answer".into())),
        }
    }

    fn step(&mut self, action: &str) -> Result<Step, EnvError> {
        let episode = self.episode()?;
        match self
            .call(Call::Step(episode, action.to_owned()))
            .map_err(|s| remote(s, action))?
        {
            Answer::Step(r) => {
                if let Some(o) = r.outcome {
                    self.outcome = Some(Outcome {
                        success: o.success,
                        metrics: o.metrics.into_iter().collect::<BTreeMap<_, _>>(),
                    });
                }
                Ok(Step {
                    state: r.state,
                    done: r.done,
                })
            }
            _ => Err(EnvError::Remote("mismatched answer".into())),
        }
    }

    fn actions(&self) -> Option<Vec<String>> {
        if !self.capabilities.actions {
            return None;
        }
        match self.call(Call::Actions(self.episode.clone()?)) {
            Ok(Answer::Actions(a)) => Some(a),
            _ => None,
        }
    }

    /// The server keeps the snapshot; the bytes are its id.
    fn snapshot(&self) -> Option<Vec<u8>> {
        if !self.capabilities.snapshot {
            return None;
        }
        match self.call(Call::Snapshot(self.episode.clone()?)) {
            Ok(Answer::Snapshot(id)) => Some(id.into_bytes()),
            _ => None,
        }
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<String, EnvError> {
        let episode = self.episode()?;
        let id = String::from_utf8(snapshot.to_vec())
            .map_err(|_| EnvError::Snapshot("not a snapshot of a remote environment".into()))?;
        match self.call(Call::Restore(episode, id)) {
            Ok(Answer::Restore(state)) => {
                self.outcome = None;
                Ok(state)
            }
            Ok(_) => Err(EnvError::Remote("mismatched answer".into())),
            Err(s) => Err(EnvError::Snapshot(s.message().to_owned())),
        }
    }

    fn outcome(&self) -> Option<Outcome> {
        self.outcome.clone()
    }
}

/// Which `grpc://HOST:PORT` environments a service may connect to (`environments.allowed_remotes`):
/// patterns `HOST:PORT`, `HOST:*` or `*`. Built-in environments need no entry.
#[derive(Debug, Clone, Default)]
pub struct RemoteEnvAllowlist(Vec<String>);

impl RemoteEnvAllowlist {
    pub fn new(patterns: Vec<String>) -> Self {
        Self(patterns)
    }

    /// `Ok` for a built-in environment's name and for a `grpc://` address a pattern allows;
    /// otherwise the reason, for an INVALID_ARGUMENT on `env`.
    pub fn check(&self, spec: &str) -> Result<(), String> {
        let Some(addr) = spec.strip_prefix("grpc://") else {
            return Ok(());
        };
        let addr = addr.trim_end_matches('/');
        let Some((host, port)) = addr.rsplit_once(':') else {
            return Err(format!("{spec}: expected grpc://HOST:PORT"));
        };
        let allowed = self.0.iter().any(|p| {
            p == "*"
                || p.rsplit_once(':').is_some_and(|(ph, pp)| {
                    ph.eq_ignore_ascii_case(host) && (pp == "*" || pp == port)
                })
        });
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "{spec} is not in environments.allowed_remotes ({})",
                if self.0.is_empty() {
                    "empty".to_owned()
                } else {
                    self.0.join(", ")
                }
            ))
        }
    }
}

/// An environment by name: a built-in one (`driving`, ...) or `grpc://HOST:PORT` for a remote
/// Environment server.
pub fn open_env(spec: &str) -> Result<Box<dyn Environment>, EnvError> {
    match spec.strip_prefix("grpc://") {
        Some(addr) => RemoteEnvironment::connect(&format!("http://{addr}"))
            .map(|e| Box::new(e) as Box<dyn Environment>)
            .map_err(|e| EnvError::Unknown(format!("{spec}: {e}"))),
        None => agent_learning_envs::built_in(spec).map(|(env, _)| env),
    }
}

#[cfg(test)]
mod allowlist_tests {
    use super::RemoteEnvAllowlist;

    #[test]
    fn remote_environments_need_an_entry() {
        let list = RemoteEnvAllowlist::new(vec![
            "127.0.0.1:*".into(),
            "[::1]:*".into(),
            "envs.internal:7000".into(),
        ]);
        for ok in [
            "driving",
            "grpc://127.0.0.1:50061",
            "grpc://[::1]:9",
            "grpc://ENVS.internal:7000",
        ] {
            assert_eq!(list.check(ok), Ok(()), "{ok}");
        }
        for bad in [
            "grpc://10.0.0.7:50061",
            "grpc://envs.internal:7001",
            "grpc://127.0.0.1.evil.example:80",
            "grpc://nohost",
        ] {
            assert!(list.check(bad).is_err(), "{bad}");
        }
        assert!(
            RemoteEnvAllowlist::new(vec!["*".into()])
                .check("grpc://anywhere:1")
                .is_ok()
        );
    }
}
