//! Generated code for the `agent_learning.v1` protobuf contract (`proto/`), clients and servers.

pub mod convert;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("agent_learning.v1");
}

/// The encoded `FileDescriptorSet` of the contract, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/agent_learning_descriptor.bin"));

/// Fully-qualified gRPC service names, as health checks and reflection report them.
pub mod service_names {
    pub const CURATOR: &str = "agent_learning.v1.Curator";
    pub const WORLD_MODEL: &str = "agent_learning.v1.WorldModel";
    pub const EXPLORER: &str = "agent_learning.v1.Explorer";
    pub const REFLECTOR: &str = "agent_learning.v1.Reflector";
    pub const POLICY: &str = "agent_learning.v1.Policy";
    pub const COORDINATOR: &str = "agent_learning.v1.Coordinator";
    pub const ENVIRONMENT: &str = "agent_learning.v1.Environment";
}
