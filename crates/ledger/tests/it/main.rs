//! Ledger through its public API: every rejection reason leaves the state unchanged,
//! blocks chain and verify, proofs verify offline, and tampering is found.

mod contracts;
mod props;
mod world;

use ed25519_dalek::SigningKey;
use medledger_core::genesis::{GENESIS_VERSION, GenesisNode};
use medledger_core::keys::generate_signing_key;
use medledger_core::tx::TX_VERSION;
use medledger_core::{AccountId, ChainId, Digest32, Genesis, NodeSigner, Payload, TxBody};
use medledger_ledger::store::Batch;
use medledger_ledger::{ApplyDurability, Ledger, LedgerError, VerifyMode, verify_ledger};
use medledger_merkle::verify::{verify_consistency, verify_inclusion};

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    ledger: Ledger,
    genesis: Genesis,
    admin: SigningKey,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let admin = generate_signing_key().unwrap();
    let node = NodeSigner::new(generate_signing_key().unwrap());
    let genesis = Genesis {
        version: GENESIS_VERSION,
        chain_id: ChainId::new("test-chain").unwrap(),
        created_ms: 1_700_000_000_000,
        admin: AccountId(admin.verifying_key().to_bytes()),
        admin_encryption_key: Digest32([1; 32]),
        nodes: vec![GenesisNode {
            id: 1,
            key: node.public(),
        }],
        params: medledger_core::ContractParams::defaults(AccountId(
            admin.verifying_key().to_bytes(),
        )),
    };
    let path = dir.path().join("ledger.redb");
    let ledger = Ledger::open(&path, genesis.clone(), node, 1).unwrap();
    Fixture {
        _dir: dir,
        path,
        ledger,
        genesis,
        admin,
    }
}

fn tx(key: &SigningKey, chain: &str, nonce: u64, payload: Payload) -> Vec<u8> {
    TxBody {
        version: TX_VERSION,
        chain_id: ChainId::new(chain).unwrap(),
        signer: AccountId(key.verifying_key().to_bytes()),
        nonce,
        payload,
    }
    .sign(key)
    .to_bytes()
}

fn anchor(n: u8) -> Payload {
    Payload::Anchor {
        digest: Digest32([n; 32]),
    }
}

fn apply(l: &Ledger, txs: &[Vec<u8>]) -> medledger_ledger::BatchOutcome {
    l.apply(
        &[Batch {
            time_ms: 1_700_000_001_000,
            txs,
        }],
        &[],
        ApplyDurability::Durable,
    )
    .unwrap()
    .remove(0)
}

fn code(o: &medledger_ledger::BatchOutcome, i: usize) -> &'static str {
    o.txs[i]
        .result
        .as_ref()
        .err()
        .map(|r| r.code())
        .unwrap_or("accepted")
}

#[test]
fn every_rejection_reason_changes_nothing() {
    let f = fixture();
    let user = generate_signing_key().unwrap();
    let user_id = AccountId(user.verifying_key().to_bytes());
    let reg = Payload::RegisterAccount {
        account: user_id,
        encryption_key: Digest32([2; 32]),
    };
    let ok = apply(&f.ledger, &[tx(&f.admin, "test-chain", 1, reg.clone())]);
    assert_eq!(ok.height, Some(1));
    let before_tip = f.ledger.tip();
    let before_admin = f.ledger.account(&f.genesis.admin).unwrap();

    let mut bad_sig = tx(&f.admin, "test-chain", 2, anchor(1));
    let n = bad_sig.len();
    bad_sig[n - 1] ^= 1;
    let stranger = generate_signing_key().unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (bad_sig, "bad_signature"),
        (tx(&f.admin, "other-chain", 2, anchor(1)), "wrong_chain_id"),
        (tx(&f.admin, "test-chain", 1, anchor(1)), "replayed_nonce"),
        (tx(&f.admin, "test-chain", 5, anchor(1)), "nonce_gap"),
        (tx(&stranger, "test-chain", 1, anchor(1)), "unknown_signer"),
        (vec![0u8; medledger_core::MAX_TX_BYTES + 1], "oversized"),
        (vec![1, 2, 3], "malformed"),
        (tx(&user, "test-chain", 1, reg.clone()), "unauthorized"),
        (tx(&f.admin, "test-chain", 2, reg), "account_exists"),
    ];
    for (bytes, want) in &cases {
        let out = apply(&f.ledger, std::slice::from_ref(bytes));
        assert_eq!(code(&out, 0), *want);
        assert_eq!(
            out.height, None,
            "{want}: a rejected batch must not make a block"
        );
        assert_eq!(f.ledger.tip(), before_tip, "{want}: tip changed");
        assert_eq!(
            f.ledger.account(&f.genesis.admin).unwrap(),
            before_admin,
            "{want}"
        );
        if let Some(h) = out.txs[0].hash {
            assert!(
                f.ledger.tx_location(&h).unwrap().is_none(),
                "{want}: tx was indexed"
            );
        }
    }
    // The user's own failed attempt did not consume its nonce either.
    assert_eq!(f.ledger.account(&user_id).unwrap().unwrap().nonce, 0);
    verify_ledger_open(&f);
}

fn verify_ledger_open(f: &Fixture) {
    f.ledger.verify(VerifyMode::Full, &|_, _| {}).unwrap();
}

#[test]
fn mixed_batch_keeps_good_txs_in_order_and_proofs_verify() {
    let f = fixture();
    let batch: Vec<Vec<u8>> = vec![
        tx(&f.admin, "test-chain", 1, anchor(1)),
        tx(&f.admin, "test-chain", 1, anchor(2)), // replay inside the same batch
        tx(&f.admin, "test-chain", 2, anchor(3)),
    ];
    let out = apply(&f.ledger, &batch);
    assert_eq!(
        [code(&out, 0), code(&out, 1), code(&out, 2)],
        ["accepted", "replayed_nonce", "accepted"]
    );
    let mut sizes = vec![];
    for round in 0..20u64 {
        let txs: Vec<_> = (0..(round % 7 + 1))
            .map(|i| {
                tx(
                    &f.admin,
                    "test-chain",
                    f.ledger.account(&f.genesis.admin).unwrap().unwrap().nonce + 1 + i,
                    anchor(i as u8),
                )
            })
            .collect();
        let out = apply(&f.ledger, &txs);
        assert!(out.txs.iter().all(|t| t.result.is_ok()));
        sizes.push(f.ledger.tip().log_size);
    }
    let tip = f.ledger.tip();
    let key = f.ledger.node_key();
    let head = f.ledger.checkpoint(None).unwrap();
    let cp = head.verify(&key).unwrap().clone();
    assert_eq!(cp.size, tip.log_size);
    // Inclusion of the first tx against the latest head.
    let h = out.txs[0].hash.unwrap();
    let loc = f.ledger.tx_location(&h).unwrap().unwrap();
    let proof = f.ledger.inclusion_proof(loc.leaf_index, cp.size).unwrap();
    verify_inclusion(&cp.root, cp.size, &h.0.0, loc.leaf_index, &proof).unwrap();
    // Consistency between every earlier head and the latest.
    for s in sizes {
        let old = f.ledger.checkpoint(Some(s)).unwrap();
        let old = old.verify(&key).unwrap();
        let proof = f.ledger.consistency_proof(old.size, cp.size).unwrap();
        verify_consistency(&old.root, old.size, &cp.root, cp.size, &proof).unwrap();
    }
    verify_ledger_open(&f);
}

#[test]
fn reopen_keeps_everything_and_detects_wrong_genesis() {
    let f = fixture();
    apply(&f.ledger, &[tx(&f.admin, "test-chain", 1, anchor(9))]);
    let tip = f.ledger.tip();
    let Fixture {
        _dir,
        path,
        ledger,
        genesis,
        ..
    } = f;
    drop(ledger);
    let node = NodeSigner::new(generate_signing_key().unwrap());
    let mut other = genesis.clone();
    other.created_ms += 1;
    assert!(matches!(
        Ledger::open(&path, other, node.clone(), 1),
        Err(LedgerError::GenesisMismatch { .. })
    ));
    let report = verify_ledger(&path, &genesis, VerifyMode::Full, &|_, _| {}).unwrap();
    assert_eq!(report.tip, tip);
}

/// Flips one bit of a stored transaction's signature in the ledger file. redb is
/// copy-on-write, so stale copies of a page may hold the same bytes; every copy is
/// flipped so the live one is hit.
fn flip_signature(path: &std::path::Path, tx: &[u8]) {
    let mut bytes = std::fs::read(path).unwrap();
    let sig = &tx[tx.len() - 64..];
    let hits: Vec<usize> = bytes
        .windows(64)
        .enumerate()
        .filter(|(_, w)| *w == sig)
        .map(|(i, _)| i)
        .collect();
    assert!(!hits.is_empty(), "signature is stored verbatim");
    for pos in hits {
        bytes[pos + 10] ^= 0x01;
    }
    std::fs::write(path, &bytes).unwrap();
}

#[test]
fn flipped_byte_in_a_block_is_named() {
    let f = fixture();
    let mut marker_tx = None;
    for i in 1..=5u64 {
        let t = tx(&f.admin, "test-chain", i, anchor(i as u8));
        if i == 3 {
            marker_tx = Some(t.clone());
        }
        apply(&f.ledger, &[t]);
    }
    let Fixture {
        _dir,
        path,
        ledger,
        genesis,
        ..
    } = f;
    drop(ledger);
    flip_signature(&path, &marker_tx.unwrap());
    match verify_ledger(&path, &genesis, VerifyMode::Full, &|_, _| {}) {
        Err(LedgerError::Corrupt { height, reason }) => {
            assert_eq!(height, 3, "{reason}");
        }
        other => panic!("expected corruption at block 3, got {other:?}"),
    }
}

#[test]
fn remembered_verification_covers_only_that_exact_signature() {
    let f = fixture();
    let good = tx(&f.admin, "test-chain", 1, anchor(1));
    let decoded = medledger_core::SignedTx::decode(&good).unwrap();
    let hash = decoded.body.hash();
    // Same body (same hash), different signature bytes: must still be verified.
    let mut forged = good.clone();
    let n = forged.len();
    forged[n - 3] ^= 0x04;
    f.ledger.remember_verified([(hash, decoded.signature.0)]);
    let out = apply(&f.ledger, &[forged]);
    assert_eq!(code(&out, 0), "bad_signature");
    let out = apply(&f.ledger, &[good]);
    assert_eq!(code(&out, 0), "accepted");
    verify_ledger_open(&f);
}

/// The verified mark: start-up's check from it passes on a sound ledger, names a
/// tampered block after it, leaves one before it to `verify` and to reads (which
/// refuse it), and a mark signed by another key is not accepted.
#[test]
fn verified_mark_bounds_the_startup_check_and_tampering_is_still_named() {
    let f = fixture();
    let mut marked = Vec::new();
    for i in 1..=3u64 {
        let t = tx(&f.admin, "test-chain", i, anchor(i as u8));
        marked.push(t.clone());
        apply(&f.ledger, &[t]);
    }
    let mark = f
        .ledger
        .record_verified(medledger_ledger::MarkSource::Replayed, true)
        .unwrap();
    assert_eq!((mark.height, mark.log_size), (3, 3));
    assert_eq!(f.ledger.verified_mark().unwrap(), Some(mark.clone()));
    let mut after = Vec::new();
    for i in 4..=6u64 {
        let t = tx(&f.admin, "test-chain", i, anchor(i as u8));
        after.push(t.clone());
        apply(&f.ledger, &[t]);
    }
    let r = f.ledger.verify_since(&mark, VerifyMode::Full).unwrap();
    assert_eq!((r.from_height, r.blocks, r.txs, r.tip.height), (3, 3, 3, 6));

    let Fixture {
        _dir,
        path,
        ledger,
        genesis,
        ..
    } = f;
    drop(ledger);
    let flip = |t: &[u8]| flip_signature(&path, t);
    let reopen = |key: NodeSigner| Ledger::open(&path, genesis.clone(), key, 1).unwrap();

    // A block covered by the mark: start-up's check does not replay it, but `verify`
    // names it and reading it refuses it.
    flip(&marked[1]);
    let fresh = NodeSigner::new(generate_signing_key().unwrap());
    let l = reopen(fresh.clone());
    // The stored mark was signed by the fixture's node key, not this one.
    assert!(matches!(
        l.verified_mark(),
        Err(LedgerError::CorruptMeta(_))
    ));
    let m = l
        .record_verified(medledger_ledger::MarkSource::Applied, true)
        .unwrap();
    assert_eq!(l.verify_since(&m, VerifyMode::Full).unwrap().blocks, 0);
    match l.verify(VerifyMode::Full, &|_, _| {}) {
        Err(LedgerError::Corrupt { height, .. }) => assert_eq!(height, 2),
        other => panic!("verify must name block 2: {other:?}"),
    }
    assert!(matches!(
        l.block(2),
        Err(LedgerError::Corrupt { height: 2, .. })
    ));
    assert!(l.block(3).is_ok());

    // A block after the mark: start-up's check names it.
    drop(l);
    flip(&after[1]);
    let l = reopen(fresh);
    match l.verify_since(&mark, VerifyMode::Full) {
        Err(LedgerError::Corrupt { height, .. }) => assert_eq!(height, 5),
        other => panic!("the check after the mark must name block 5: {other:?}"),
    }
}
