//! The node's own transactions: batched, node-signed access reports (so auditing never
//! waits on a read) and housekeeping that settles due work (expired agreement
//! proposals, erasures whose retention ended). One task owns the node's nonce, so its
//! transactions are ordered and never collide.

use medledger_consensus::Batcher;
use medledger_core::model::MAX_ACCESS_REPORTS;
use medledger_core::tx::{SignatureBytes, TX_VERSION};
use medledger_core::{
    AccessReport, AccountId, NodeSigner, Payload, Purpose, RecordId, SignedTx, TxBody,
};
use medledger_ledger::contracts::query;
use medledger_ledger::{Decision, Ledger};
use medledger_store::BlobStore;

/// This node's progress through the ledger's shred queue (local metadata, not state).
const SHRED_CURSOR: &str = "shred_cursor";
use std::time::Duration;
use tokio::sync::mpsc;

/// Where read paths send their access reports.
#[derive(Clone, Debug)]
pub struct Reporter {
    tx: mpsc::Sender<AccessReport>,
}

/// How long a report may wait for others to share its transaction.
const LINGER: Duration = Duration::from_millis(20);
/// Reports waiting beyond this make senders wait (back-pressure, never loss).
const QUEUE: usize = 100_000;

impl Reporter {
    /// Starts the reporting task. `housekeeping` is how often due work is settled.
    pub fn start(
        ledger: Ledger,
        batcher: Batcher,
        signer: NodeSigner,
        store: BlobStore,
        housekeeping: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(ledger, batcher, signer, store, rx, housekeeping));
        Reporter { tx }
    }

    /// Queues a report; waits only if the queue is full. Fails only when the node is
    /// shutting down.
    pub async fn report(&self, r: AccessReport) -> Result<(), crate::NodeError> {
        self.tx
            .send(r)
            .await
            .map_err(|_| crate::NodeError::Server("audit reporter stopped".into()))
    }
}

impl Reporter {
    /// Queues the report of an access decision (allowed or refused).
    pub async fn report_decision(
        &self,
        accessor: AccountId,
        record: RecordId,
        purpose: Purpose,
        time_ms: u64,
        d: &Decision,
    ) -> Result<(), crate::NodeError> {
        self.report(AccessReport {
            accessor,
            record,
            purpose,
            time_ms,
            allowed: d.allowed(),
            reason: d.code().to_owned(),
        })
        .await
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct NodeTxs {
    ledger: Ledger,
    batcher: Batcher,
    signer: NodeSigner,
    id: AccountId,
    store: BlobStore,
}

impl NodeTxs {
    fn next_nonce(&self) -> u64 {
        self.ledger
            .account(&self.id)
            .ok()
            .flatten()
            .map(|a| a.nonce)
            .unwrap_or(0)
            + 1
    }

    /// Signs and submits one transaction, waiting for its commit. Every node tx is
    /// sent after the previous one committed, so the nonce read from the ledger is
    /// always the next one.
    async fn send(&self, payload: Payload) -> bool {
        let kind = payload.kind();
        let body = TxBody {
            version: TX_VERSION,
            chain_id: self.ledger.genesis().chain_id.clone(),
            signer: self.id,
            nonce: self.next_nonce(),
            payload,
        };
        let hash = body.hash();
        let tx = SignedTx {
            body,
            signature: SignatureBytes(self.signer.sign(&hash.0.0)),
        };
        match self.batcher.submit(vec![tx.to_bytes()]).await.pop() {
            Some(Ok(o)) => match o.result {
                Ok(_) => true,
                Err(reason) => {
                    tracing::warn!(kind, code = reason.code(), "node transaction rejected");
                    false
                }
            },
            Some(Err(e)) => {
                tracing::warn!(kind, error = %e, "node transaction not committed");
                false
            }
            None => false,
        }
    }
}

async fn run(
    ledger: Ledger,
    batcher: Batcher,
    signer: NodeSigner,
    store: BlobStore,
    mut rx: mpsc::Receiver<AccessReport>,
    housekeeping: Duration,
) {
    let id = AccountId(signer.public().0);
    let node = NodeTxs {
        ledger,
        batcher,
        signer,
        id,
        store,
    };
    let mut tick = tokio::time::interval(housekeeping);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            first = rx.recv() => {
                let Some(first) = first else { return };
                let mut reports = vec![first];
                let deadline = tokio::time::Instant::now() + LINGER;
                while reports.len() < MAX_ACCESS_REPORTS {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(r)) => reports.push(r),
                        _ => break,
                    }
                }
                let n = reports.len();
                if node.send(Payload::ReportAccess { reports }).await {
                    metrics::counter!("medledger_access_reports_total").increment(n as u64);
                } else {
                    metrics::counter!("medledger_access_reports_failed_total").increment(n as u64);
                }
            }
            _ = tick.tick() => {
                settle_due(&node).await;
                shred_erased(&node).await;
            }
        }
    }
}

async fn settle_due(node: &NodeTxs) {
    let due = match node
        .ledger
        .state()
        .and_then(|s| query::due(&s, now_ms(), 100))
    {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "reading due work failed");
            return;
        }
    };
    for agreement in due.agreements {
        node.send(Payload::ExpireAgreement { agreement }).await;
    }
    for record in due.erasures {
        node.send(Payload::CompleteErasure { record }).await;
    }
}

/// Deletes from this node's record store every version of each record the ledger has
/// erased since the last pass (crypto-shredding), then advances the local cursor.
async fn shred_erased(node: &NodeTxs) {
    let cursor = node
        .ledger
        .meta(SHRED_CURSOR)
        .ok()
        .flatten()
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0);
    // Only blobs registered to a version of the erased record itself: the ledger binds
    // each CID to one version, and shredding must never reach another record's blob.
    let work = node.ledger.state().and_then(|s| {
        query::shred_after(&s, cursor, 100)?
            .into_iter()
            .map(|(seq, id)| {
                let mut cids = Vec::new();
                for v in query::record(&s, &id)?
                    .map(|r| r.history)
                    .unwrap_or_default()
                {
                    let owner = query::cid_owner(&s, &v.cid)?;
                    if owner.is_some_and(|o| o.record == id && o.version == v.version) {
                        cids.push(v.cid);
                    }
                }
                Ok((seq, cids))
            })
            .collect::<medledger_ledger::Result<Vec<_>>>()
    });
    let work = match work {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "reading the shred queue failed");
            return;
        }
    };
    for (seq, cids) in work {
        for cid in cids {
            if let Err(e) = node.store.erase(&cid).await {
                // Retried on the next pass: the cursor stays before this record.
                tracing::warn!(error = %e, "shredding an erased record failed");
                return;
            }
        }
        if let Err(e) = node.ledger.put_meta(SHRED_CURSOR, &seq.to_be_bytes()) {
            tracing::warn!(error = %e, "saving the shred cursor failed");
            return;
        }
        metrics::counter!("medledger_records_shredded_total").increment(1);
    }
}
