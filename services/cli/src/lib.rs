//! The `agent-learning` command line's library part: the all-in-one server, `train` and health
//! checks, shared by the binary and the pipeline benchmark.

pub mod all;
pub mod health;
pub mod live;
pub mod plot;
pub mod train;
