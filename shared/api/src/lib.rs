//! What each service offers, as a plain Rust trait over domain types, and a gRPC client that
//! implements the same trait. A caller holds an `Arc<dyn ...Api>` and cannot tell the service's
//! own logic (in its crate) from the remote one; tests can hand it either, or a fake.

mod curator;
mod environment;
mod error;
mod explorer;
mod policy;
mod reflector;
mod world_model;

pub use curator::{CuratorApi, CuratorClient, FeedbackItem, RenderedContext};
pub use environment::{RemoteEnvironment, RemoteError, open_env};
pub use error::ApiError;
pub use explorer::{Demo, ExploreRequest, ExplorerApi, ExplorerClient, RolloutStream};
pub use policy::{CompileRequest, DecideRequest, Decision, PolicyApi, PolicyClient};
pub use reflector::{ReflectRequest, ReflectorApi, ReflectorClient};
pub use world_model::{
    Accuracy, FitReport, Neighbour, Prediction, WorldModelApi, WorldModelClient,
};
