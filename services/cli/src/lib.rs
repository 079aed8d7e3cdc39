//! The `agent-learning` command line's library part: the all-in-one server and `train`, shared
//! by the binary and the pipeline benchmark.

pub mod all;
pub mod train;
