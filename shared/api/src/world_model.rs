//! The world model: learns transitions, predicts the next state of `(state, action)`.

use agent_learning_domain::{TokenUsage, Transition};
use agent_learning_proto::convert::{transition_from_pb, transition_to_pb, usage_from_pb};
use agent_learning_proto::v1 as pb;
use async_trait::async_trait;
use tonic::transport::Channel;

use crate::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FitReport {
    pub stored: u64,
    pub duplicates: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Neighbour {
    pub transition: Transition,
    pub similarity: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub next_state: String,
    pub confidence: f32,
    pub neighbours: Vec<Neighbour>,
    pub usage: TokenUsage,
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Accuracy {
    pub evaluated: u64,
    pub exact_match: f64,
    pub mean_similarity: f64,
}

#[async_trait]
pub trait WorldModelApi: Send + Sync {
    /// Stores transitions not stored before; `source` defaults to `expert` when empty.
    async fn fit(
        &self,
        ns: &str,
        transitions: Vec<Transition>,
        source: &str,
    ) -> Result<FitReport, ApiError>;
    /// The next state of `(state, action)`; `k` neighbours as examples, 0 for the default.
    async fn predict(
        &self,
        ns: &str,
        state: &str,
        action: &str,
        k: u32,
    ) -> Result<Prediction, ApiError>;
    /// Predictions measured against held-out transitions.
    async fn evaluate(&self, ns: &str, held_out: Vec<Transition>) -> Result<Accuracy, ApiError>;
}

/// The world model over gRPC.
#[derive(Clone)]
pub struct WorldModelClient(pb::world_model_client::WorldModelClient<crate::KeyedChannel>);

impl WorldModelClient {
    /// A client presenting the process's API key (see [`crate::set_process_key`]).
    pub fn new(channel: Channel) -> Self {
        Self::new_with_key(channel, crate::ApiKey::process())
    }

    pub fn new_with_key(channel: Channel, key: crate::ApiKey) -> Self {
        Self(pb::world_model_client::WorldModelClient::with_interceptor(
            channel, key,
        ))
    }
}

#[async_trait]
impl WorldModelApi for WorldModelClient {
    async fn fit(
        &self,
        ns: &str,
        transitions: Vec<Transition>,
        source: &str,
    ) -> Result<FitReport, ApiError> {
        let r = self
            .0
            .clone()
            .fit(pb::FitRequest {
                namespace: ns.to_owned(),
                transitions: transitions.into_iter().map(transition_to_pb).collect(),
                source: source.to_owned(),
            })
            .await?
            .into_inner();
        Ok(FitReport {
            stored: r.stored,
            duplicates: r.duplicates,
        })
    }

    async fn predict(
        &self,
        ns: &str,
        state: &str,
        action: &str,
        k: u32,
    ) -> Result<Prediction, ApiError> {
        let p = self
            .0
            .clone()
            .predict(pb::PredictRequest {
                namespace: ns.to_owned(),
                state: state.to_owned(),
                action: action.to_owned(),
                k,
            })
            .await?
            .into_inner();
        Ok(Prediction {
            next_state: p.next_state,
            confidence: p.confidence,
            neighbours: p
                .neighbours
                .into_iter()
                .map(|n| Neighbour {
                    transition: transition_from_pb(n.transition.unwrap_or_default()),
                    similarity: n.similarity,
                })
                .collect(),
            usage: usage_from_pb(p.usage),
        })
    }

    async fn evaluate(&self, ns: &str, held_out: Vec<Transition>) -> Result<Accuracy, ApiError> {
        let e = self
            .0
            .clone()
            .evaluate(pb::EvaluateRequest {
                namespace: ns.to_owned(),
                held_out: held_out.into_iter().map(transition_to_pb).collect(),
            })
            .await?
            .into_inner();
        Ok(Accuracy {
            evaluated: e.evaluated,
            exact_match: e.exact_match,
            mean_similarity: e.mean_similarity,
        })
    }
}
