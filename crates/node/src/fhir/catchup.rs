//! Keeps the FHIR index caught up with the ledger, which decides what exists.
//!
//! A write indexes its resource itself, but a crash can come between the commit and
//! the index write (a plain create writes both at once; a transaction Bundle or an
//! amendment indexes after the commit), leaving a committed record that reads by id
//! but that no search finds. So the index records a watermark: every record change
//! committed at or below that height is indexed. [`CatchUp::run`] walks the blocks
//! after it, checks that the index holds each changed record's latest version (by
//! its CID), indexes it from the record store when not, and moves the watermark. The
//! node runs it before serving (so a restart repairs what a crash left) and then in
//! the background a few seconds behind the tip (so the watermark, and the next
//! start's work, stay small); `medledger reindex` runs it from genesis into an
//! emptied index.
//!
//! Only records whose blob this node's custodian key opens can be indexed; others
//! (written through another node, or by a client that did not wrap the key for this
//! node) are passed over, as they are today.

use super::FhirError;
use super::index::{Index, IndexEntry};
use super::service::{fetch_version, index_terms};
use medledger_core::{Payload, RecordId, RecordWrite};
use medledger_ledger::Ledger;
use medledger_ledger::contracts::query;
use medledger_store::{BlobStore, ReaderSecret};
use serde::Serialize;
use std::collections::BTreeSet;

/// Blocks between watermark updates during a long catch-up.
const WATERMARK_EVERY: u64 = 256;
/// Attempts to index a record whose latest version moved while it was indexed.
const ATTEMPTS: usize = 3;

/// What a catch-up did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CatchUpReport {
    /// Heights walked: `from + 1 ..= to`.
    pub from: u64,
    pub to: u64,
    /// Records changed in those blocks.
    pub records: u64,
    /// Of those, indexed now (the index lacked their latest version).
    pub indexed: u64,
    /// Of those, not indexable here (no custodian envelope, blob elsewhere, erased).
    pub passed_over: u64,
    pub seconds: f64,
}

pub struct CatchUp<'a> {
    pub ledger: &'a Ledger,
    pub store: &'a BlobStore,
    pub index: &'a Index,
    pub custodian: &'a ReaderSecret,
}

/// The records a transaction adds or amends.
fn touched(tx: &medledger_core::SignedTx, out: &mut BTreeSet<RecordId>) {
    match &tx.body.payload {
        Payload::AddRecord { .. } => {
            out.insert(RecordId::from_tx(&tx.body.hash()));
        }
        Payload::AmendRecord { record, .. } => {
            out.insert(*record);
        }
        Payload::WriteRecords { items } => {
            for (i, item) in items.iter().enumerate() {
                out.insert(match item {
                    RecordWrite::Add { .. } => {
                        RecordId::in_batch(&tx.body.signer, tx.body.nonce, i as u32)
                    }
                    RecordWrite::Amend { record, .. } => *record,
                });
            }
        }
        _ => {}
    }
}

impl CatchUp<'_> {
    /// Indexes every record changed after the watermark up to height `to`, then sets
    /// the watermark to `to`. `progress(done, total)` counts blocks.
    pub async fn run(
        &self,
        to: u64,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<CatchUpReport, FhirError> {
        let started = std::time::Instant::now();
        let from = self.index.indexed_height()?;
        let mut report = CatchUpReport {
            from,
            to: to.max(from),
            ..Default::default()
        };
        let mut h = from;
        while h < to {
            let upto = (h + WATERMARK_EVERY).min(to);
            let ledger = self.ledger.clone();
            let first = h + 1;
            let records = tokio::task::spawn_blocking(move || {
                let mut set = BTreeSet::new();
                for height in first..=upto {
                    for tx in &ledger.block_for_scan(height)?.txs {
                        touched(tx, &mut set);
                    }
                }
                Ok::<_, medledger_ledger::LedgerError>(set)
            })
            .await
            .map_err(|e| FhirError::Internal(e.to_string()))?
            .map_err(|e| FhirError::Internal(format!("ledger: {e}")))?;
            for record in records {
                report.records += 1;
                match self.ensure(record).await? {
                    Ensured::Current => {}
                    Ensured::Indexed => report.indexed += 1,
                    Ensured::PassedOver => report.passed_over += 1,
                }
            }
            self.index.set_indexed_height(upto).await?;
            h = upto;
            progress(h - from, to - from);
        }
        report.seconds = started.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Makes the index hold the record's latest version.
    async fn ensure(&self, record: RecordId) -> Result<Ensured, FhirError> {
        let mut result = Ensured::Current;
        for _ in 0..ATTEMPTS {
            let view = self
                .ledger
                .state()
                .and_then(|st| query::record(&st, &record))
                .map_err(|e| FhirError::Internal(format!("ledger: {e}")))?;
            let Some(view) = view else {
                return Ok(Ensured::PassedOver);
            };
            let rtype = view.state.category.as_str().to_owned();
            let Some(latest) = view.history.last() else {
                return Ok(Ensured::PassedOver);
            };
            if view.state.is_erased() || !medledger_fhir::validate::is_r4_type(&rtype) {
                return Ok(Ensured::PassedOver);
            }
            let cid = latest.cid.to_string();
            if self
                .index
                .doc(&record)?
                .is_some_and(|d| d.cid.as_deref() == Some(cid.as_str()))
            {
                return Ok(result);
            }
            let content =
                match fetch_version(self.ledger, self.store, self.custodian, &record, latest).await
                {
                    Ok(c) => c,
                    Err(FhirError::Unavailable(e)) => return Err(FhirError::Unavailable(e)),
                    Err(e) => {
                        tracing::debug!(%record, error = %e, "not indexable on this node");
                        return Ok(Ensured::PassedOver);
                    }
                };
            let super::service::Terms {
                tokens,
                dates,
                deleted,
            } = index_terms(self.index, &rtype, &content);
            self.index
                .put(vec![IndexEntry {
                    record,
                    rtype,
                    tokens,
                    dates,
                    deleted,
                    cid: latest.cid,
                }])
                .await?;
            result = Ensured::Indexed;
            // A version committed meanwhile may have been indexed by its own request
            // before this write landed over it: look again.
        }
        Ok(result)
    }
}

enum Ensured {
    Current,
    Indexed,
    PassedOver,
}

/// How far behind the tip the background catch-up stays: a request that committed
/// has had this long to index its own resource, so the catch-up rarely repeats it.
const BEHIND: std::time::Duration = std::time::Duration::from_secs(5);
const TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the catch-up in the background for the life of the node, [`BEHIND`] the tip.
pub async fn follow(fhir: std::sync::Arc<super::Fhir>, ledger: Ledger) {
    let mut seen: std::collections::VecDeque<(std::time::Instant, u64)> = Default::default();
    let mut every = tokio::time::interval(TICK);
    loop {
        every.tick().await;
        let now = std::time::Instant::now();
        seen.push_back((now, ledger.tip().height));
        let mut target = None;
        while let Some(&(at, h)) = seen.front() {
            if now.duration_since(at) < BEHIND {
                break;
            }
            target = Some(h);
            seen.pop_front();
        }
        let Some(to) = target else { continue };
        match fhir.indexed_height() {
            Ok(h) if h >= to => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "FHIR index watermark unreadable");
                continue;
            }
        }
        match fhir.catch_up(to).await {
            Ok(r) if r.indexed > 0 => {
                tracing::warn!(
                    indexed = r.indexed,
                    to = r.to,
                    "indexed committed records their own requests had not"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "FHIR index catch-up failed; retrying"),
        }
    }
}

/// `medledger reindex`: rebuilds the FHIR search index of a stopped node from its
/// ledger and record store (custody keys and directory subjects are kept: they exist
/// nowhere else). `progress(done, total)` counts blocks.
pub async fn reindex(
    data_dir: &std::path::Path,
    store: &medledger_store::StoreConfig,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<CatchUpReport, crate::NodeError> {
    use crate::NodeError;
    let dd = crate::datadir::load(data_dir)?;
    let ledger = Ledger::open(
        &dd.dir.join(crate::datadir::LEDGER_DB),
        dd.genesis.clone(),
        dd.node.clone(),
        dd.node_id,
    )
    .map_err(|e| match e {
        medledger_ledger::LedgerError::Storage(_) => NodeError::Server(format!(
            "cannot open the ledger ({e}); stop the node before reindexing"
        )),
        e => NodeError::Server(format!("ledger: {e}")),
    })?;
    let key = crate::datadir::local_secret(&dd.dir.join("fhir.key"), &dd.dir.join("fhir.redb"))?;
    let index = Index::open(&dd.dir.join("fhir.redb"), key)
        .map_err(|e| NodeError::Server(format!("FHIR index: {e}")))?;
    let store =
        BlobStore::open(store).map_err(|e| NodeError::Server(format!("record store: {e}")))?;
    let custodian = super::service::custodian(key, medledger_core::AccountId(dd.node.public().0));
    index
        .reset_search()
        .await
        .map_err(|e| NodeError::Server(e.to_string()))?;
    CatchUp {
        ledger: &ledger,
        store: &store,
        index: &index,
        custodian: &custodian,
    }
    .run(ledger.tip().height, progress)
    .await
    .map_err(|e| NodeError::Server(format!("reindex: {e}")))
}
