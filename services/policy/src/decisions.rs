//! Decisions are in the record before Decide answers (Feedback must find them), written in
//! group commits: the decisions that arrive while one batch is being written go together in
//! the next, in one statement, so concurrent Decides share one write of the database instead
//! of queueing for it one by one. A lone decision is written at once, as before.

use agent_learning_domain::DecisionRecord;
use std::sync::OnceLock;

use agent_learning_store::{Store, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::PolicyError;

/// Most decisions written in one statement.
const BATCH: usize = 256;

type Done = oneshot::Sender<Result<(), StoreError>>;

pub(crate) struct DecisionLog {
    store: Store,
    /// The writer's queue, made (and the writer started) by the first decision, on the
    /// runtime that serves it: a policy can be built outside one.
    queue: OnceLock<mpsc::Sender<(DecisionRecord, Done)>>,
}

impl DecisionLog {
    pub(crate) fn new(store: Store) -> Self {
        Self {
            store,
            queue: OnceLock::new(),
        }
    }

    /// Starts the writer on the current runtime; it ends when the log is dropped.
    fn start(store: Store) -> mpsc::Sender<(DecisionRecord, Done)> {
        let (queue, mut incoming) = mpsc::channel::<(DecisionRecord, Done)>(4 * BATCH);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while incoming.recv_many(&mut batch, BATCH).await > 0 {
                let (records, waiting): (Vec<DecisionRecord>, Vec<Done>) = batch.drain(..).unzip();
                match store.insert_decisions(&records).await {
                    Ok(()) => {
                        for w in waiting {
                            let _ = w.send(Ok(()));
                        }
                    }
                    // An outage fails every decision of the batch alike (each caller sees
                    // UNAVAILABLE and may retry); writing them one by one would only wait for
                    // the same outage once per decision.
                    Err(e) if e.is_transient() => {
                        let text = e.to_string();
                        for w in waiting {
                            let _ = w.send(Err(StoreError::outage(text.clone())));
                        }
                    }
                    // One decision the record refuses must not fail the others with it: each
                    // is written alone and gets its own answer.
                    Err(_) if records.len() > 1 => {
                        for (r, w) in records.iter().zip(waiting) {
                            let _ = w.send(store.insert_decision(r).await);
                        }
                    }
                    Err(e) => {
                        if let Some(w) = waiting.into_iter().next() {
                            let _ = w.send(Err(e));
                        }
                    }
                }
            }
        });
        queue
    }

    /// Returns once `d` is in the record.
    pub(crate) async fn write(&self, d: DecisionRecord) -> Result<(), PolicyError> {
        let (done, written) = oneshot::channel();
        self.queue
            .get_or_init(|| Self::start(self.store.clone()))
            .send((d, done))
            .await
            .map_err(|_| PolicyError::WriterStopped)?;
        Ok(written.await.map_err(|_| PolicyError::WriterStopped)??)
    }
}
