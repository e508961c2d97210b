//! `medledger proof check FILE`: checks an audit entry's proof bundle (the auditor
//! page's download) offline, trusting only the local genesis. It proves that the
//! entry's facts were signed into a transaction that is in the chain's log under a
//! tree head a genesis node signed, and says which facts that covers.

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use medledger_core::{Payload, SignedTx};
use medledger_merkle::SignedCheckpoint;
use medledger_merkle::verify::verify_inclusion;
use medledger_node::datadir;
use medledger_node::http::v1::{PROOF_FORMAT, ProofBundle};
use serde_json::Value;
use std::path::Path;

const CONTRACT_FACT: [&str; 5] = ["accessor", "purpose", "allowed", "reason", "break_glass"];
const CONTRACT_FACT_WITH_PATIENT: [&str; 6] = [
    "accessor",
    "patient",
    "purpose",
    "allowed",
    "reason",
    "break_glass",
];

/// Whether an entry says what a contract writes for its kind of transaction.
fn contract_fact(e: &Value, purpose: &str, reason: &str, break_glass: bool) -> bool {
    e["purpose"] == purpose
        && e["reason"] == reason
        && e["allowed"] == Value::Bool(true)
        && e["break_glass"] == Value::Bool(break_glass)
        && e["record"].is_null()
}

pub fn check(file: &Path, data_dir: &Path) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let b: ProofBundle = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a medledger proof bundle", file.display()))?;
    ensure!(
        b.format == PROOF_FORMAT,
        "unknown proof format {:?} (expected {PROOF_FORMAT})",
        b.format
    );
    let genesis = datadir::read_genesis(data_dir)
        .context("the genesis file holds the node keys that heads are checked against")?;

    // The head: signed by a genesis node, for this chain.
    let signed = SignedCheckpoint::parse(&b.tree_head).context("tree head")?;
    let head = genesis
        .nodes
        .iter()
        .find_map(|n| signed.verify(&n.key).ok())
        .context("the tree head is NOT signed by any node in this chain's genesis")?;
    let origin = medledger_ledger::store::origin(&genesis);
    ensure!(
        head.origin == origin,
        "the tree head is for {:?}, this data directory's chain is {origin:?}",
        head.origin
    );

    // The transaction: decoded, of this chain, signed by its signer, with this hash.
    let raw = B64
        .decode(b.tx.as_bytes())
        .context("the transaction is not base64")?;
    let tx = SignedTx::decode(&raw).context("the transaction does not decode")?;
    let checked = tx
        .check(&genesis.chain_id)
        .map_err(|e| anyhow::anyhow!("the transaction does NOT verify: {e}"))?;
    let p = &b.inclusion;
    ensure!(
        checked.hash == p.hash,
        "the transaction hashes to {}, the proof is for {}",
        checked.hash,
        p.hash
    );

    // The entry: what the signed payload says, field by field.
    let e = &b.entry;
    let field = |k: &str| e.get(k).cloned().unwrap_or(Value::Null);
    ensure!(
        field("tx") == Value::String(p.hash.to_string()),
        "the entry names transaction {}, the proof is for {}",
        field("tx"),
        p.hash
    );
    let signer = checked.tx.body.signer;
    ensure!(
        field("reporter") == serde_json::to_value(signer)?,
        "the entry names reporter {}, the transaction is signed by {signer}",
        field("reporter")
    );
    let me = serde_json::to_value(signer)?;
    // Which of the entry's fields the payload states, if it states the entry at all.
    let proven: Option<&[&str]> = match &checked.tx.body.payload {
        Payload::ReportAccess { reports } => {
            const FIELDS: [&str; 6] = [
                "accessor", "record", "purpose", "time_ms", "allowed", "reason",
            ];
            reports
                .iter()
                .any(|r| {
                    let r = serde_json::to_value(r).unwrap_or_default();
                    FIELDS.iter().all(|k| r.get(*k) == e.get(*k))
                        && field("break_glass") == Value::Bool(r["reason"] == "break_glass")
                })
                .then_some(&FIELDS)
        }
        // Entries the contracts write: their facts follow from the payload's kind.
        Payload::BreakGlass { patient, .. } => (field("accessor") == me
            && field("patient") == serde_json::to_value(patient)?
            && contract_fact(e, "emergency", "break_glass_opened", true))
        .then_some(&CONTRACT_FACT_WITH_PATIENT),
        Payload::RequestRecovery { account } => (field("accessor") == me
            && field("patient") == serde_json::to_value(account)?
            && contract_fact(e, "operations", "recovery_requested", false))
        .then_some(&CONTRACT_FACT_WITH_PATIENT),
        Payload::ApproveRecovery { .. } => (field("accessor") == me
            && contract_fact(e, "operations", "recovery_approved", false))
        .then_some(&CONTRACT_FACT),
        other => bail!(
            "a {} transaction records no audit entry this tool can check",
            other.kind()
        ),
    };
    let Some(proven) = proven else {
        bail!("the entry's facts are NOT what the signed transaction states");
    };

    verify_inclusion(&head.root, head.size, &p.hash.0.0, p.leaf_index, &p.proof)
        .context("inclusion proof does NOT verify")?;
    ensure!(
        head.size == p.tree_size,
        "the proof is for a tree of size {}, the signed head has size {}",
        p.tree_size,
        head.size
    );
    let facts: Vec<String> = proven.iter().map(|k| format!("{k} {}", field(k))).collect();
    println!(
        "proof OK: the {} transaction {} signed by {signer} states this entry's {}; it is leaf {} of the tree of size {} with root {}, signed by a genesis node of {origin}. Other fields of the entry (its sequence number{}) are the ledger's, not part of this proof.",
        checked.tx.body.payload.kind(),
        p.hash,
        facts.join(", "),
        p.leaf_index,
        head.size,
        head.root,
        if proven.contains(&"time_ms") {
            ""
        } else {
            ", its time"
        },
    );
    Ok(())
}
