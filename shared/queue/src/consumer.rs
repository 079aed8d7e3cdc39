//! The consumer loop every stream consumer runs: claim what crashed consumers left, read new
//! entries, handle, acknowledge.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{Delivery, Queue};

/// Pauses before the in-place retries of a failed handler.
const IN_PLACE_RETRIES: [Duration; 2] = [Duration::from_millis(200), Duration::from_secs(1)];

#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    pub stream: String,
    pub group: String,
    /// Unique per consumer process (e.g. host and pid); entries pending for it are its own.
    pub consumer: String,
    /// Entries fetched per read.
    pub batch: usize,
    /// How long a read waits for new entries.
    pub block: Duration,
}

/// Runs until `shutdown`: every entry is handed to `handler` and acknowledged when it returns
/// `Ok`. An `Err` leaves the entry pending: it is delivered again after the visibility
/// timeout (to this or another consumer) and dead-lettered after `max_deliveries`.
pub async fn consume<H, Fut, E>(
    queue: Arc<dyn Queue>,
    opts: ConsumerOptions,
    shutdown: CancellationToken,
    handler: H,
) where
    H: Fn(Delivery) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let batch = async {
            queue.ensure_group(&opts.stream, &opts.group).await?;
            let mut batch = queue
                .claim_stale(&opts.stream, &opts.group, &opts.consumer, opts.batch)
                .await?;
            if batch.is_empty() {
                batch = queue
                    .read(
                        &opts.stream,
                        &opts.group,
                        &opts.consumer,
                        opts.batch,
                        opts.block,
                    )
                    .await?;
            }
            Ok::<_, crate::QueueError>(batch)
        };
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return,
            b = batch => b,
        };
        let batch = match batch {
            Ok(b) => {
                backoff = Duration::from_millis(100);
                b
            }
            Err(e) => {
                warn!(stream = %opts.stream, error = %e, "queue read failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        for delivery in batch {
            if shutdown.is_cancelled() {
                // Not acknowledged: another consumer (or this one after a restart) claims it.
                return;
            }
            let id = delivery.id.clone();
            let key = delivery.key.clone();
            // Transient failures (a busy database, a dropped connection) are retried here a
            // few times before the entry is left to the visibility timeout.
            let mut result = handler(delivery.clone()).await;
            for pause in IN_PLACE_RETRIES {
                if result.is_ok() || shutdown.is_cancelled() {
                    break;
                }
                tokio::time::sleep(pause).await;
                result = handler(delivery.clone()).await;
            }
            match result {
                Ok(()) => {
                    if let Err(e) = queue
                        .ack(&opts.stream, &opts.group, std::slice::from_ref(&id))
                        .await
                    {
                        warn!(stream = %opts.stream, %id, error = %e, "ack failed; the entry will be redelivered");
                    } else {
                        debug!(stream = %opts.stream, %id, %key, "handled");
                    }
                }
                Err(e) => {
                    warn!(stream = %opts.stream, %id, %key, error = %e, "handler failed; left pending for redelivery");
                }
            }
        }
    }
}
