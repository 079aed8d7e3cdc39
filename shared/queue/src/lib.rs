//! Work queues between the pipeline's services: the [`Queue`] trait with Redis Streams
//! semantics (consumer groups, at-least-once delivery, acknowledgement, claiming of entries
//! a crashed consumer left pending, a dead-letter stream after too many deliveries), over
//! Redis ([`RedisQueue`]) or over the relational store in process ([`EmbeddedQueue`]).
//!
//! Delivery is at least once: consumers make their effects idempotent by the entry's `key`
//! (the publisher's id for the work), and acknowledge only after the effect is durable.

mod consumer;
mod embedded;
mod redis_streams;

use std::time::Duration;

use async_trait::async_trait;

pub use consumer::{ConsumerOptions, consume};
pub use embedded::EmbeddedQueue;
pub use redis_streams::{RedisQueue, RedisTls};

/// Stream names used by the pipeline.
pub mod streams {
    /// Rollout groups (one branch point each), from the explorer to the reflectors.
    pub const ROLLOUTS: &str = "agent_learning:rollouts";
    /// Finished live-loop episodes, from the coordinator to the reflectors.
    pub const EPISODES: &str = "agent_learning:episodes";
    /// Reflections, from the reflectors to the curator.
    pub const REFLECTIONS: &str = "agent_learning:reflections";
    /// Consumer group of the reflectors on [`ROLLOUTS`] and [`EPISODES`].
    pub const REFLECTORS: &str = "reflectors";
    /// Consumer group of the curator on [`REFLECTIONS`].
    pub const CURATORS: &str = "curators";
}

/// The dead-letter stream of `stream`.
pub fn dead_letter_stream(stream: &str) -> String {
    format!("{stream}:dead")
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue: consumer group {group:?} of stream {stream:?} does not exist")]
    NoGroup { stream: String, group: String },
    #[error("queue: invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("queue store: {0}")]
    Store(#[from] sea_orm::DbErr),
    #[error("queue: unexpected reply: {0}")]
    Protocol(String),
}

impl QueueError {
    /// An outage of Redis or of the database behind the embedded queue, worth trying again.
    pub fn is_transient(&self) -> bool {
        match self {
            QueueError::Redis(r) => {
                r.is_io_error()
                    || r.is_connection_dropped()
                    || r.is_connection_refusal()
                    || r.is_timeout()
            }
            QueueError::Store(db) => agent_learning_store::is_transient_db(db),
            _ => false,
        }
    }
}

pub type Result<T, E = QueueError> = std::result::Result<T, E>;

/// An entry handed to a consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The entry id in its stream (Redis `ms-seq`, or the embedded sequence number).
    pub id: String,
    /// The publisher's idempotency key.
    pub key: String,
    pub payload: Vec<u8>,
    /// How many times the entry has been delivered, this time included.
    pub deliveries: u32,
}

/// How far a consumer group is behind: the figure to scale consumers on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lag {
    /// Entries not yet delivered to the group.
    pub undelivered: u64,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
    /// Entries in the stream's dead-letter stream.
    pub dead: u64,
}

impl Lag {
    /// Nothing left to do for the group.
    pub fn drained(&self) -> bool {
        self.undelivered == 0 && self.pending == 0
    }
}

/// Redelivery policy shared by both implementations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueOptions {
    /// An entry pending this long without acknowledgement may be claimed by another consumer.
    pub visibility_timeout: Duration,
    /// An entry delivered this many times without acknowledgement goes to the dead-letter
    /// stream instead of being delivered again.
    pub max_deliveries: u32,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            visibility_timeout: Duration::from_secs(300),
            max_deliveries: 5,
        }
    }
}

#[async_trait]
pub trait Queue: Send + Sync {
    /// `redis` or `embedded`.
    fn kind(&self) -> &'static str;
    fn options(&self) -> &QueueOptions;
    /// Creates the consumer group (delivering from the start of the stream) unless it exists.
    async fn ensure_group(&self, stream: &str, group: &str) -> Result<()>;
    /// Appends an entry; returns its id.
    async fn publish(&self, stream: &str, key: &str, payload: &[u8]) -> Result<String>;
    /// Up to `count` entries never delivered to the group, now pending for `consumer`; waits up
    /// to `block` for one when there are none.
    async fn read(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>>;
    /// Up to `count` entries pending longer than the visibility timeout, now pending for
    /// `consumer`. Entries already delivered `max_deliveries` times are moved to the
    /// dead-letter stream instead and acknowledged.
    async fn claim_stale(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<Delivery>>;
    /// Acknowledges entries; unknown or already acknowledged ids are ignored.
    async fn ack(&self, stream: &str, group: &str, ids: &[String]) -> Result<()>;
    async fn lag(&self, stream: &str, group: &str) -> Result<Lag>;
    /// The oldest `limit` entries of the stream's dead-letter stream.
    async fn dead_letters(&self, stream: &str, limit: usize) -> Result<Vec<Delivery>>;
    /// Answers while the queue's server does (the embedded queue lives in the record, whose
    /// own probe covers it).
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

pub(crate) fn check_names(stream: &str, group: &str) -> Result<()> {
    if stream.trim().is_empty() {
        return Err(QueueError::Invalid {
            field: "stream",
            reason: "must not be empty".into(),
        });
    }
    if group.trim().is_empty() {
        return Err(QueueError::Invalid {
            field: "group",
            reason: "must not be empty".into(),
        });
    }
    Ok(())
}

impl QueueOptions {
    pub fn from_settings(settings: &agent_learning_config::Settings) -> Self {
        Self {
            visibility_timeout: Duration::from_secs(settings.queue.visibility_timeout_secs),
            max_deliveries: settings.queue.max_deliveries,
        }
    }
}

/// The queue the configuration names: Redis Streams at `queue.redis_url`, else the embedded
/// queue in `store`.
pub async fn open(
    settings: &agent_learning_config::Settings,
    store: &agent_learning_store::Store,
) -> Result<std::sync::Arc<dyn Queue>> {
    let opts = QueueOptions::from_settings(settings);
    Ok(match &settings.queue.redis_url {
        Some(url) => {
            let read = |field: &'static str, path: &std::path::Path| {
                std::fs::read(path).map_err(|e| QueueError::Invalid {
                    field,
                    reason: format!("{}: {e}", path.display()),
                })
            };
            let t = &settings.tls;
            let tls = RedisTls {
                ca: t.ca.as_deref().map(|p| read("tls.ca", p)).transpose()?,
                identity: match (&t.client_cert, &t.client_key) {
                    (Some(c), Some(k)) => {
                        Some((read("tls.client_cert", c)?, read("tls.client_key", k)?))
                    }
                    _ => None,
                },
            };
            std::sync::Arc::new(RedisQueue::connect_tls(url, opts, &tls).await?)
        }
        None => std::sync::Arc::new(EmbeddedQueue::new(store.clone(), opts)),
    })
}
