//! Cross-service tests live in `tests/`; the services as real processes are exercised by the `agent-learning` CLI crate's tests.
