//! Group commit on the leader. Submissions queue here; one task drains the queue into
//! a batch (one Raft entry, hence one fsync and one block), proposes it, and moves on
//! to the next while earlier batches are in flight. Proposals are sent in queue order,
//! so an account's pipelined nonces stay in order.

use crate::{ConsensusError, Raft, Request};
use medledger_ledger::TxOutcome;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::{Semaphore, mpsc, oneshot};

#[derive(Debug, Clone)]
pub struct BatcherConfig {
    /// Most transactions in one batch (one block).
    pub max_batch: usize,
    /// Most batches proposed but not yet applied.
    pub max_in_flight: usize,
    /// Queue length beyond which submissions are refused with `Overloaded`.
    pub queue: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        BatcherConfig {
            max_batch: 4096,
            max_in_flight: 4,
            queue: 100_000,
        }
    }
}

type Reply = oneshot::Sender<Result<TxOutcome, ConsensusError>>;

struct Pending {
    bytes: Vec<u8>,
    reply: Reply,
}

/// Handle for submitting transactions; cheap to clone.
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Pending>,
}

impl Batcher {
    pub fn start(raft: Raft, config: BatcherConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.queue);
        tokio::spawn(run(raft, config, rx));
        Batcher { tx }
    }

    /// Queues one already-checked transaction now (so queue order is call order) and
    /// returns a future that waits for its outcome.
    pub fn enqueue(
        &self,
        bytes: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<TxOutcome, ConsensusError>> + use<> {
        let (reply, rx) = oneshot::channel();
        let early = match self.tx.try_send(Pending { bytes, reply }) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(p)) => {
                let hash = medledger_core::SignedTx::decode(&p.bytes)
                    .ok()
                    .map(|t| t.body.hash());
                Some(Ok(TxOutcome {
                    hash,
                    result: Err(medledger_core::RejectReason::Overloaded),
                }))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Some(Err(ConsensusError::ShuttingDown)),
        };
        async move {
            match early {
                Some(r) => r,
                None => rx.await.unwrap_or(Err(ConsensusError::ShuttingDown)),
            }
        }
    }

    /// Queues already-checked transactions and waits until each is committed or
    /// rejected by the state machine. Returns one result per input, in order.
    pub async fn submit(&self, txs: Vec<Vec<u8>>) -> Vec<Result<TxOutcome, ConsensusError>> {
        let waits: Vec<_> = txs.into_iter().map(|b| self.enqueue(b)).collect();
        let mut out = Vec::with_capacity(waits.len());
        for w in waits {
            out.push(w.await);
        }
        out
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn run(raft: Raft, config: BatcherConfig, mut rx: mpsc::Receiver<Pending>) {
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight));
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < config.max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // Anything that arrived while we waited for a slot joins this batch.
        while batch.len() < config.max_batch {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let (txs, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.bytes, p.reply)).unzip();
        metrics::histogram!("medledger_batch_size").record(txs.len() as f64);
        let sent = raft
            .client_write_ff(Request {
                time_ms: now_ms(),
                txs,
            })
            .await;
        tokio::spawn(async move {
            let result = match sent {
                Err(e) => Err(ConsensusError::Raft(e.to_string())),
                Ok(rx) => match rx.await {
                    Err(_) => Err(ConsensusError::ShuttingDown),
                    Ok(Err(openraft::error::ClientWriteError::ForwardToLeader(f))) => {
                        Err(ConsensusError::NotLeader(f.leader_id))
                    }
                    Ok(Err(e)) => Err(ConsensusError::Raft(e.to_string())),
                    Ok(Ok(resp)) => Ok(resp.data),
                },
            };
            drop(permit);
            match result {
                Ok(outcome) => {
                    for (reply, o) in replies.into_iter().zip(outcome.txs) {
                        let _ = reply.send(Ok(o));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for reply in replies {
                        let _ = reply.send(Err(ConsensusError::Raft(msg.clone())));
                    }
                }
            }
        });
    }
}
