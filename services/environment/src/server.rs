use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use agent_learning_envs::{EnvError, Environment};
use agent_learning_proto::v1 as pb;
use pb::environment_server::{Environment as EnvironmentRpc, EnvironmentServer};
use tonic::{Request, Response, Status};

/// Makes a fresh environment for each episode.
pub type EnvFactory = Arc<dyn Fn() -> Box<dyn Environment> + Send + Sync>;

/// Episodes kept at most; the oldest is dropped to make room.
const MAX_EPISODES: usize = 10_000;
/// Snapshots kept per episode at most; the oldest is dropped to make room.
const MAX_SNAPSHOTS: usize = 1_000;

struct Episode {
    env: Box<dyn Environment>,
    snapshots: HashMap<String, Vec<u8>>,
    snapshot_order: Vec<String>,
}

#[derive(Default)]
struct Episodes {
    by_id: HashMap<String, Arc<Mutex<Episode>>>,
    order: std::collections::VecDeque<String>,
}

/// Serves one kind of environment.
#[derive(Clone)]
pub struct EnvService {
    name: String,
    factory: EnvFactory,
    episodes: Arc<Mutex<Episodes>>,
}

fn status(e: EnvError) -> Status {
    match e {
        EnvError::InvalidAction { .. } => Status::invalid_argument(format!("action: {e}")),
        EnvError::Done | EnvError::NotStarted => Status::failed_precondition(e.to_string()),
        EnvError::Snapshot(_) => Status::invalid_argument(format!("snapshot: {e}")),
        EnvError::Unknown(_) => Status::not_found(e.to_string()),
        EnvError::Remote(_) => Status::unavailable(e.to_string()),
    }
}

fn poisoned<T>(_: T) -> Status {
    Status::internal("episode state poisoned by an earlier panic")
}

impl EnvService {
    pub fn new(name: impl Into<String>, factory: EnvFactory) -> Self {
        Self {
            name: name.into(),
            factory,
            episodes: Arc::default(),
        }
    }

    pub fn into_server(self, max_message_bytes: usize) -> EnvironmentServer<Self> {
        EnvironmentServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }

    fn episode(&self, id: &str) -> Result<Arc<Mutex<Episode>>, Status> {
        if id.is_empty() {
            return Err(Status::invalid_argument(
                "episode_id: must be set (Reset returns it)",
            ));
        }
        self.episodes
            .lock()
            .map_err(poisoned)?
            .by_id
            .get(id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("episode_id: no episode {id:?}")))
    }
}

#[tonic::async_trait]
impl EnvironmentRpc for EnvService {
    async fn close(
        &self,
        request: Request<pb::CloseRequest>,
    ) -> Result<Response<pb::CloseResponse>, Status> {
        let id = request.into_inner().episode_id;
        if id.is_empty() {
            return Err(Status::invalid_argument(
                "episode_id: must be set (Reset returns it)",
            ));
        }
        let mut episodes = self.episodes.lock().map_err(poisoned)?;
        if episodes.by_id.remove(&id).is_some() {
            episodes.order.retain(|e| *e != id);
        }
        Ok(Response::new(pb::CloseResponse {}))
    }

    async fn reset(
        &self,
        request: Request<pb::ResetRequest>,
    ) -> Result<Response<pb::ResetResponse>, Status> {
        let seed = request.into_inner().seed;
        let mut env = (self.factory)();
        let state = env.reset(seed).map_err(status)?;
        let capabilities = pb::Capabilities {
            actions: env.actions().is_some(),
            snapshot: env.snapshot().is_some(),
            outcome: true,
        };
        let id = uuid::Uuid::new_v4().to_string();
        let mut episodes = self.episodes.lock().map_err(poisoned)?;
        while episodes.by_id.len() >= MAX_EPISODES {
            let Some(oldest) = episodes.order.pop_front() else {
                break;
            };
            episodes.by_id.remove(&oldest);
        }
        episodes.order.push_back(id.clone());
        episodes.by_id.insert(
            id.clone(),
            Arc::new(Mutex::new(Episode {
                env,
                snapshots: HashMap::new(),
                snapshot_order: Vec::new(),
            })),
        );
        Ok(Response::new(pb::ResetResponse {
            episode_id: id,
            state,
            capabilities: Some(capabilities),
            env: self.name.clone(),
        }))
    }

    async fn step(
        &self,
        request: Request<pb::StepRequest>,
    ) -> Result<Response<pb::StepResponse>, Status> {
        let r = request.into_inner();
        let episode = self.episode(&r.episode_id)?;
        let mut ep = episode.lock().map_err(poisoned)?;
        let step = ep.env.step(&r.action).map_err(status)?;
        let outcome = if step.done {
            ep.env.outcome().map(|o| pb::Outcome {
                success: o.success,
                metrics: o.metrics.into_iter().collect(),
            })
        } else {
            None
        };
        Ok(Response::new(pb::StepResponse {
            state: step.state,
            done: step.done,
            outcome,
        }))
    }

    async fn actions(
        &self,
        request: Request<pb::ActionsRequest>,
    ) -> Result<Response<pb::ActionsResponse>, Status> {
        let episode = self.episode(&request.into_inner().episode_id)?;
        let ep = episode.lock().map_err(poisoned)?;
        Ok(Response::new(pb::ActionsResponse {
            actions: ep.env.actions().unwrap_or_default(),
        }))
    }

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<pb::SnapshotResponse>, Status> {
        let episode = self.episode(&request.into_inner().episode_id)?;
        let mut ep = episode.lock().map_err(poisoned)?;
        let snap = ep
            .env
            .snapshot()
            .ok_or_else(|| Status::failed_precondition(format!("{} cannot snapshot", self.name)))?;
        let id = uuid::Uuid::new_v4().to_string();
        if ep.snapshot_order.len() >= MAX_SNAPSHOTS {
            let oldest = ep.snapshot_order.remove(0);
            ep.snapshots.remove(&oldest);
        }
        ep.snapshot_order.push(id.clone());
        ep.snapshots.insert(id.clone(), snap);
        Ok(Response::new(pb::SnapshotResponse { snapshot_id: id }))
    }

    async fn restore(
        &self,
        request: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::RestoreResponse>, Status> {
        let r = request.into_inner();
        let episode = self.episode(&r.episode_id)?;
        let mut ep = episode.lock().map_err(poisoned)?;
        let snap = ep.snapshots.get(&r.snapshot_id).cloned().ok_or_else(|| {
            Status::not_found(format!(
                "snapshot_id: no snapshot {:?} in this episode",
                r.snapshot_id
            ))
        })?;
        let state = ep.env.restore(&snap).map_err(status)?;
        Ok(Response::new(pb::RestoreResponse { state }))
    }
}

impl EnvService {
    /// Adds this service to `server`; it has no dependencies, so it serves at once.
    pub fn mount(self, server: &mut agent_learning_server::GrpcServer) {
        let max = server.limits().max_message_bytes;
        server.routes_mut().add_service(self.into_server(max));
        server.track(agent_learning_proto::service_names::ENVIRONMENT);
    }

    /// A service for a built-in environment.
    pub fn built_in(name: &str) -> Result<Self, EnvError> {
        let make = agent_learning_envs::factory(name)?;
        Ok(Self::new(name, Arc::new(make)))
    }
}
