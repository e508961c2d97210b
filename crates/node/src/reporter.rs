//! The node's own transactions: batched, node-signed access reports (so auditing never
//! waits on a read) and housekeeping that settles due work (expired agreement
//! proposals, erasures whose retention ended), and the shredding of erased records'
//! blobs. One task sends them, one at a time, numbered by the node's [`Submitter`].

use crate::audit_queue::{AuditQueue, Inflight};
use crate::submitter::{Reserved, SubmitError, Submitter, TxSigner, is_nonce_race};
use medledger_core::model::MAX_ACCESS_REPORTS;
use medledger_core::{
    AccessReport, AccountId, NodeSigner, Payload, Purpose, RecordId, RejectReason, SignedTx,
};
use medledger_ledger::contracts::query;
use medledger_ledger::{Decision, Ledger};
use medledger_store::BlobStore;
use std::time::Duration;

/// This node's progress through the ledger's shred queue (local metadata, not state).
const SHRED_CURSOR: &str = "shred_cursor";

/// Where read paths send their access reports: a durable local queue the reporting
/// task drains to the ledger (see [`crate::audit_queue`]).
#[derive(Clone, Debug)]
pub struct Reporter {
    queue: AuditQueue,
}

/// How long a small batch of reports waits for others to share its transaction.
const LINGER: Duration = Duration::from_millis(20);
/// First and longest pause before retrying a submission that did not commit.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

impl Reporter {
    /// The durable queue of reports not yet on the ledger (a backup dumps it).
    pub(crate) fn queue(&self) -> &AuditQueue {
        &self.queue
    }

    /// Starts the reporting task over `queue`, first settling a batch a crash may
    /// have left in flight. `housekeeping` is how often due work is settled.
    pub fn start(
        ledger: Ledger,
        submitter: Submitter,
        signer: NodeSigner,
        store: BlobStore,
        queue: AuditQueue,
        housekeeping: Duration,
    ) -> Self {
        tokio::spawn(run(
            ledger,
            submitter,
            signer,
            store,
            queue.clone(),
            housekeeping,
        ));
        Reporter { queue }
    }

    /// Records access decisions (allowed or refused) durably; returns once they are
    /// on disk, so no content is served before its report would survive a crash.
    pub async fn report_decisions(
        &self,
        decisions: impl IntoIterator<Item = (AccountId, RecordId, Purpose, u64, &Decision)>,
    ) -> Result<(), crate::NodeError> {
        let reports = decisions
            .into_iter()
            .map(|(accessor, record, purpose, time_ms, d)| AccessReport {
                accessor,
                record,
                purpose,
                time_ms,
                allowed: d.allowed(),
                reason: d.code().to_owned(),
            })
            .collect();
        self.queue
            .append(reports)
            .await
            .map_err(|e| crate::NodeError::Server(format!("audit: {e}")))
    }

    /// One decision; see [`Reporter::report_decisions`].
    pub async fn report_decision(
        &self,
        accessor: AccountId,
        record: RecordId,
        purpose: Purpose,
        time_ms: u64,
        d: &Decision,
    ) -> Result<(), crate::NodeError> {
        self.report_decisions([(accessor, record, purpose, time_ms, d)])
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
    submitter: Submitter,
    signer: NodeSigner,
    store: BlobStore,
}

impl NodeTxs {
    /// Signs `payload` as the node with its next nonce; the reservation is held until
    /// [`NodeTxs::send`], so the hash can be recorded durably first.
    async fn sign(&self, payload: Payload) -> Option<(Reserved, SignedTx)> {
        match self.submitter.reserve(&self.signer.account()).await {
            Ok(r) => {
                let tx = self.submitter.sign(&r, &self.signer, payload);
                Some((r, tx))
            }
            Err(e) => {
                tracing::warn!(error = %e, "reserving a node nonce failed");
                None
            }
        }
    }

    /// Submits a signed transaction and waits for its outcome.
    async fn send(&self, r: Reserved, tx: &SignedTx) -> Sent {
        let kind = tx.body.payload.kind();
        let account = r.account();
        let outcome = self.submitter.send(r, tx).await;
        match self.submitter.settle(&account, outcome) {
            Ok(_) => Sent::Committed,
            Err(SubmitError::Refused(RejectReason::Overloaded)) => Sent::Retry,
            Err(e) if is_nonce_race(&e) => Sent::Retry,
            Err(SubmitError::Refused(reason)) => {
                tracing::warn!(kind, code = reason.code(), "node transaction rejected");
                Sent::Rejected
            }
            Err(e) => {
                tracing::warn!(kind, error = %e, "node transaction not committed");
                Sent::Retry
            }
        }
    }

    /// Housekeeping transactions: best effort, settled again on the next pass.
    async fn submit(&self, payload: Payload) -> bool {
        match self.sign(payload).await {
            Some((r, tx)) => matches!(self.send(r, &tx).await, Sent::Committed),
            None => false,
        }
    }
}

/// What became of a submitted node transaction.
enum Sent {
    Committed,
    /// Not committed for a passing reason (overload, leadership, shutdown): retry.
    Retry,
    /// Refused by the contracts: the same transaction will never commit.
    Rejected,
}

async fn run(
    ledger: Ledger,
    submitter: Submitter,
    signer: NodeSigner,
    store: BlobStore,
    queue: AuditQueue,
    housekeeping: Duration,
) {
    let node = NodeTxs {
        ledger,
        submitter,
        signer,
        store,
    };
    settle_inflight(&node, &queue);
    let mut tick = tokio::time::interval(housekeeping);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry = RETRY_MIN;
    let mut unsure = Vec::new();
    loop {
        settle_unsure(&node, &queue, &mut unsure);
        let mut batch = match queue.oldest(MAX_ACCESS_REPORTS) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "reading the audit queue failed");
                Vec::new()
            }
        };
        if batch.is_empty() {
            tokio::select! {
                _ = queue.ready.notified() => {}
                _ = tick.tick() => {
                    settle_due(&node).await;
                    shred_erased(&node).await;
                }
            }
            continue;
        }
        if batch.len() < MAX_ACCESS_REPORTS {
            // Let concurrent reads join this transaction.
            tokio::time::sleep(LINGER).await;
            batch = queue.oldest(MAX_ACCESS_REPORTS).unwrap_or(batch);
        }
        match deliver(&node, &queue, &batch, &mut unsure).await {
            Ok(true) => {
                retry = RETRY_MIN;
                metrics::counter!("medledger_access_reports_total").increment(batch.len() as u64);
            }
            Ok(false) | Err(_) => {
                metrics::counter!("medledger_access_report_retries_total").increment(1);
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
        if let Ok(n) = queue.pending() {
            metrics::gauge!("medledger_access_reports_queued").set(n as f64);
        }
        if tick_due(&mut tick) {
            settle_due(&node).await;
            shred_erased(&node).await;
        }
    }
}

/// Whether the housekeeping interval has elapsed (without waiting for it).
fn tick_due(tick: &mut tokio::time::Interval) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    tick.poll_tick(&mut cx).is_ready()
}

/// A batch a crash left in flight: if its transaction is on the ledger, its reports
/// are delivered and leave the queue; otherwise they stay and are sent again.
fn settle_inflight(node: &NodeTxs, queue: &AuditQueue) {
    let Ok(Some(f)) = queue.inflight() else {
        return;
    };
    let result = match node.ledger.tx_location(&f.tx) {
        Ok(Some(_)) => queue.committed(&f.seqs),
        Ok(None) => queue.set_inflight(None),
        Err(e) => {
            tracing::error!(error = %e, "checking the in-flight audit batch failed");
            return;
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "settling the in-flight audit batch failed");
    }
}

/// Report transactions whose outcome was not learned (no leader, a lost proposal):
/// they may still commit. At most this many are remembered.
const MAX_UNSURE: usize = 64;

/// Settles the reports of earlier transactions that did commit after all, before the
/// same reports are sent again (they would be on the ledger twice).
fn settle_unsure(node: &NodeTxs, queue: &AuditQueue, unsure: &mut Vec<Inflight>) {
    unsure.retain(|f| match node.ledger.tx_location(&f.tx) {
        Ok(Some(_)) => {
            if let Err(e) = queue.committed(&f.seqs) {
                tracing::error!(error = %e, "settling a late-committed audit batch failed");
            }
            false
        }
        Ok(None) => true,
        Err(_) => true,
    });
    let excess = unsure.len().saturating_sub(MAX_UNSURE);
    unsure.drain(..excess);
}

/// Moves one batch to the ledger. `Ok(true)` when every report left the queue
/// (committed, or refused on its own and set aside); `Ok(false)` to retry later.
/// A transaction whose outcome is unknown goes to `unsure`, to be settled if it
/// commits later.
async fn deliver(
    node: &NodeTxs,
    queue: &AuditQueue,
    batch: &[(u64, AccessReport)],
    unsure: &mut Vec<Inflight>,
) -> Result<bool, crate::audit_queue::QueueError> {
    let reports: Vec<AccessReport> = batch.iter().map(|(_, r)| r.clone()).collect();
    let seqs: Vec<u64> = batch.iter().map(|(s, _)| *s).collect();
    let Some((r, tx)) = node.sign(Payload::ReportAccess { reports }).await else {
        return Ok(false);
    };
    let inflight = Inflight {
        tx: tx.body.hash(),
        seqs: seqs.clone(),
    };
    queue.set_inflight(Some(&inflight))?;
    match node.send(r, &tx).await {
        Sent::Committed => {
            queue.committed(&seqs)?;
            Ok(true)
        }
        Sent::Retry => {
            unsure.push(inflight);
            queue.set_inflight(None)?;
            Ok(false)
        }
        Sent::Rejected => {
            // One report the contracts refuse must not hold back the others: send
            // each on its own; what is still refused alone is kept aside, not lost.
            queue.set_inflight(None)?;
            for (seq, r) in batch {
                let Some((reserved, one)) = node
                    .sign(Payload::ReportAccess {
                        reports: vec![r.clone()],
                    })
                    .await
                else {
                    return Ok(false);
                };
                let inflight = Inflight {
                    tx: one.body.hash(),
                    seqs: vec![*seq],
                };
                queue.set_inflight(Some(&inflight))?;
                match node.send(reserved, &one).await {
                    Sent::Committed => queue.committed(&[*seq])?,
                    Sent::Retry => {
                        unsure.push(inflight);
                        queue.set_inflight(None)?;
                        return Ok(false);
                    }
                    Sent::Rejected => {
                        tracing::error!(seq, "an access report the ledger refuses was set aside");
                        metrics::counter!("medledger_access_reports_refused_total").increment(1);
                        queue.set_inflight(None)?;
                        queue.refuse(*seq)?;
                    }
                }
            }
            Ok(true)
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
        node.submit(Payload::ExpireAgreement { agreement }).await;
    }
    for record in due.erasures {
        node.submit(Payload::CompleteErasure { record }).await;
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
