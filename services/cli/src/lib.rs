//! The `agent-learning` command line's library part: the all-in-one server, `train` and health
//! checks, shared by the binary and the benchmarks (whose own helpers are behind `bench`).

pub mod all;
#[cfg(feature = "bench")]
pub mod bench;
pub mod health;
pub mod live;
pub mod plot;
pub mod train;
