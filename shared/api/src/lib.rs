//! What each service offers, as a plain Rust trait over domain types, and a gRPC client that
//! implements the same trait. A caller holds an `Arc<dyn ...Api>` and cannot tell the service's
//! own logic (in its crate) from the remote one; tests can hand it either, or a fake.

mod coordinator;
mod curator;
mod environment;
mod error;
mod explorer;
mod key;
mod policy;
mod reflector;
mod tls;
mod world_model;

pub use coordinator::{
    CoordinatorApi, CoordinatorClient, LiveLoopRequest, RunEvent, RunEventStream, RunInfo, RunPage,
    StageInfo, TrainingRequest, run_event_from_pb, run_event_to_pb, run_info_from_pb,
    run_info_to_pb,
};
pub use curator::{
    BatchFlushed, CuratorApi, CuratorClient, FeedbackItem, FeedbackOutcome, Health, PlaybookPage,
    PlaybookQuery, RenderedContext,
};
pub use environment::{RemoteEnvAllowlist, RemoteEnvironment, RemoteError, open_env};
pub use error::ApiError;
pub use explorer::{Demo, ExploreRequest, ExplorerApi, ExplorerClient, RolloutStream};
pub use key::{ApiKey, InvalidKey, KeyedChannel, set_process_key};
pub use policy::{CompileRequest, DecideRequest, Decision, PastStep, PolicyApi, PolicyClient};
pub use reflector::{ReflectRequest, ReflectorApi, ReflectorClient};
pub use tls::{ClientTls, endpoint, set_process_tls};
pub use world_model::{
    Accuracy, FitReport, Neighbour, Prediction, WorldModelApi, WorldModelClient,
};
