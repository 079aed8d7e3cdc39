//! Cross-service tests live in `tests/`: the serving plumbing in process (`serving.rs`) and the
//! split deployment as real processes on PostgreSQL, Redis and a Qdrant server
//! (`distributed.rs`). The `agent-learning` CLI crate's tests exercise the all-in-one server.
