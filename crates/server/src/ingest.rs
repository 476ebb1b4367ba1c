//! Group commit for heartbeats: handlers submit heartbeats to a bounded queue and wait; one
//! writer task drains whatever has queued up, stores it in a single transaction, and acknowledges
//! every submitter once it is durable.
//!
//! Under load, transactions grow instead of multiplying, so throughput rises with concurrency
//! while each heartbeat is still acknowledged only after its commit. The queue is bounded: when it
//! is full, submitters are refused at once (HTTP 503 with `Retry-After`) rather than buffered, so a
//! burst of reconnecting devices cannot exhaust memory.

use std::time::Duration;

use drover_store::{HeartbeatRecord, IngestOptions, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

/// Why a submission was not stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The queue is full; retry after a moment.
    #[error("the server is busy ingesting heartbeats; retry in a few seconds")]
    Overloaded,
    /// The writer has stopped (the server is shutting down).
    #[error("heartbeat ingest is shutting down")]
    Stopped,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Tuning of the group-commit writer.
#[derive(Debug, Clone, Copy)]
pub struct IngestConfig {
    /// Submissions that may wait for the writer before new ones are refused.
    pub queue: usize,
    /// Most heartbeats per transaction.
    pub max_batch: usize,
    pub options: IngestOptions,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            queue: 1024,
            max_batch: 5000,
            options: IngestOptions::default(),
        }
    }
}

struct Job {
    records: Vec<HeartbeatRecord>,
    done: oneshot::Sender<Result<u64, String>>,
}

/// Handle for submitting heartbeats. Cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    tx: mpsc::Sender<Job>,
}

impl Ingest {
    /// Starts the writer task on the current runtime.
    pub fn start(store: Store, config: IngestConfig) -> Ingest {
        let (ingest, rx) = Ingest::channel(config.queue);
        tokio::spawn(writer(store, config, rx));
        ingest
    }

    fn channel(queue: usize) -> (Ingest, mpsc::Receiver<Job>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        (Ingest { tx }, rx)
    }

    /// Queues `records` and waits until they are durable. Returns how many were stored.
    pub async fn submit(&self, records: Vec<HeartbeatRecord>) -> Result<u64, IngestError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .try_send(Job { records, done })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => IngestError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => IngestError::Stopped,
            })?;
        match wait.await {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(message)) => Err(IngestError::Store(StoreError::Backend(message))),
            Err(_) => Err(IngestError::Stopped),
        }
    }
}

async fn writer(store: Store, config: IngestConfig, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        let mut n = jobs[0].records.len();
        // Take everything already waiting, up to the batch size: no artificial delay, so a lone
        // heartbeat commits at once and a burst shares one transaction.
        while n < config.max_batch {
            match rx.try_recv() {
                Ok(job) => {
                    n += job.records.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let mut records = Vec::with_capacity(n);
        let mut counts = Vec::with_capacity(jobs.len());
        let mut acks = Vec::with_capacity(jobs.len());
        for job in jobs {
            counts.push(job.records.len() as u64);
            records.extend(job.records);
            acks.push(job.done);
        }
        let result = store.record_heartbeats(records, config.options).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, heartbeats = n, "could not store heartbeats");
            // Give a failing database a moment before the next batch.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (ack, count) in acks.into_iter().zip(counts) {
            let _ = ack.send(result.as_ref().map(|_| count).map_err(ToString::to_string));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> HeartbeatRecord {
        HeartbeatRecord {
            device: drover_core::DeviceId::parse("d").unwrap(),
            received_at: drover_core::Timestamp::from_millis(0),
            heartbeat: drover_proto::device_api::Heartbeat {
                sent_at: None,
                firmware: None,
                interval_s: None,
                boot_slot: None,
                metrics: Default::default(),
            },
        }
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_instead_of_buffering() {
        // No writer drains this queue of one: the first submission waits in it, the second is
        // refused immediately.
        let (ingest, mut rx) = Ingest::channel(1);
        let waiting = tokio::spawn({
            let ingest = ingest.clone();
            async move { ingest.submit(vec![record()]).await }
        });
        while rx.is_empty() {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            ingest.submit(vec![record()]).await,
            Err(IngestError::Overloaded)
        ));
        // The queued job is acknowledged only when the writer answers it.
        let job = rx.recv().await.unwrap();
        job.done.send(Ok(1)).unwrap();
        assert_eq!(waiting.await.unwrap().unwrap(), 1);
        drop(rx);
        assert!(matches!(
            ingest.submit(vec![record()]).await,
            Err(IngestError::Stopped)
        ));
    }
}
