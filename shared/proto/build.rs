//! Compiles `proto/agent_learning/v1/*.proto` with the pure-Rust `protox` parser, so building
//! needs no system `protoc`.

use std::path::PathBuf;

use prost::Message;

const FILES: &[&str] = &[
    "agent_learning/v1/common.proto",
    "agent_learning/v1/curator.proto",
    "agent_learning/v1/world_model.proto",
    "agent_learning/v1/explorer.proto",
    "agent_learning/v1/reflector.proto",
    "agent_learning/v1/policy.proto",
    "agent_learning/v1/coordinator.proto",
    "agent_learning/v1/environment.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(FILES, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("agent_learning_descriptor.bin"),
        fds.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
