//! The explorer: alternative actions from expert states, by real branching or imagination.

use std::pin::Pin;

use agent_learning_domain::{Rollout, Transition};
use agent_learning_proto::convert::{rollout_from_pb, transition_to_pb};
use agent_learning_proto::v1 as pb;
use async_trait::async_trait;
use futures::{Stream, StreamExt as _};
use tonic::transport::Channel;

use crate::ApiError;

/// One expert episode to explore from.
#[derive(Debug, Clone, PartialEq)]
pub struct Demo {
    pub id: String,
    pub env: String,
    pub seed: u64,
    pub steps: Vec<Transition>,
}

impl From<&agent_learning_envs::Demo> for Demo {
    fn from(d: &agent_learning_envs::Demo) -> Self {
        Self {
            id: d.id.clone(),
            env: d.env.clone(),
            seed: d.seed,
            steps: d
                .steps
                .iter()
                .map(|s| Transition {
                    state: s.state.clone(),
                    action: s.action.clone(),
                    next_state: s.next_state.clone(),
                    done: s.done,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExploreRequest {
    pub namespace: String,
    pub run_id: String,
    pub demos: Vec<Demo>,
    /// A built-in environment or `grpc://HOST:PORT`.
    pub env: String,
    /// Alternatives per branch point; 0 for the service's default.
    pub alternatives: u32,
    /// Branch points per demo; 0 for the service's default.
    pub branch_points: u32,
    /// Branch at every expert step.
    pub every_step: bool,
    /// Publish each branch point to the rollouts stream.
    pub publish: bool,
}

pub type RolloutStream = Pin<Box<dyn Stream<Item = Result<Rollout, ApiError>> + Send>>;

#[async_trait]
pub trait ExplorerApi: Send + Sync {
    /// Checks the request, then streams every rollout as its branch point is explored.
    async fn explore(&self, req: ExploreRequest) -> Result<RolloutStream, ApiError>;
}

#[derive(Clone)]
pub struct ExplorerClient(pb::explorer_client::ExplorerClient<crate::KeyedChannel>);

impl ExplorerClient {
    /// A client presenting the process's API key (see [`crate::set_process_key`]).
    pub fn new(channel: Channel) -> Self {
        Self::new_with_key(channel, crate::ApiKey::process())
    }

    pub fn new_with_key(channel: Channel, key: crate::ApiKey) -> Self {
        Self(pb::explorer_client::ExplorerClient::with_interceptor(
            channel, key,
        ))
    }
}

pub fn explore_request_to_pb(r: ExploreRequest) -> pb::ExploreRequest {
    pb::ExploreRequest {
        namespace: r.namespace,
        run_id: r.run_id,
        demos: r
            .demos
            .into_iter()
            .map(|d| pb::Demo {
                id: d.id,
                env: d.env,
                seed: d.seed,
                steps: d.steps.into_iter().map(transition_to_pb).collect(),
            })
            .collect(),
        env: r.env,
        alternatives: r.alternatives,
        branch_points: r.branch_points,
        every_step: r.every_step,
        publish: r.publish,
    }
}

#[async_trait]
impl ExplorerApi for ExplorerClient {
    async fn explore(&self, req: ExploreRequest) -> Result<RolloutStream, ApiError> {
        let stream = self
            .0
            .clone()
            .explore(explore_request_to_pb(req))
            .await?
            .into_inner();
        Ok(Box::pin(stream.map(|r| {
            let r = r?;
            rollout_from_pb("rollout", r).map_err(|e| ApiError::internal("explorer answer", e))
        })))
    }
}
