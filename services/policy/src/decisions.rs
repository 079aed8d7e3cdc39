//! Decisions are in the record before Decide answers (Feedback must find them), written in
//! group commits: the decisions that arrive while one batch is being written go together in
//! the next, in one statement, so concurrent Decides share one write of the database instead
//! of queueing for it one by one. A lone decision is written at once, as before.

use agent_learning_domain::DecisionRecord;
use agent_learning_store::{Store, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::PolicyError;

/// Most decisions written in one statement.
const BATCH: usize = 256;

type Done = oneshot::Sender<Result<(), StoreError>>;

pub(crate) struct DecisionLog {
    queue: mpsc::Sender<(DecisionRecord, Done)>,
}

impl DecisionLog {
    /// Starts the writer on the current runtime; it ends when the log is dropped.
    pub(crate) fn start(store: Store) -> Self {
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
        Self { queue }
    }

    /// Returns once `d` is in the record.
    pub(crate) async fn write(&self, d: DecisionRecord) -> Result<(), PolicyError> {
        let (done, written) = oneshot::channel();
        self.queue
            .send((d, done))
            .await
            .map_err(|_| PolicyError::WriterStopped)?;
        Ok(written.await.map_err(|_| PolicyError::WriterStopped)??)
    }
}
