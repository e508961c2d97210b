//! End-to-end tests against the real `medledger` binary on 127.0.0.1: crash safety
//! under SIGKILL, tamper evidence, and rejections over HTTP leaving state unchanged.

use medledger_core::tx::TX_VERSION;
use medledger_core::{AccountId, ChainId, Digest32, Payload, TxBody, TxHash};
use medledger_node::client::Client;
use medledger_node::keystore::{AccountKeys, KeystoreFile};
use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

mod common;
use common::*;

fn anchor(n: u64) -> Payload {
    let mut d = [0u8; 32];
    d[..8].copy_from_slice(&n.to_le_bytes());
    Payload::Anchor {
        digest: Digest32(d),
    }
}

#[test]
fn rejections_over_http_change_nothing_and_proofs_verify_via_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init(tmp.path());
    let node = start(&dir);
    let admin = admin(&dir);
    rt().block_on(async {
        let c = client(&node, &dir).await;
        let ok = c
            .submit(&sign(&admin, "e2e-chain", 1, anchor(1)))
            .await
            .unwrap();
        assert_eq!(ok.status, "committed");
        let before = c.status().await.unwrap().tip;

        let mut bad_sig = sign(&admin, "e2e-chain", 2, anchor(2));
        let n = bad_sig.len();
        bad_sig[n - 5] ^= 0x10;
        let stranger = AccountKeys::generate().unwrap();
        let user = AccountKeys::generate().unwrap();
        let reg = Payload::RegisterAccount {
            account: user.account(),
            encryption_key: Digest32([3; 32]),
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (bad_sig, "bad_signature"),
            (sign(&admin, "other-chain", 2, anchor(2)), "wrong_chain_id"),
            (sign(&admin, "e2e-chain", 1, anchor(9)), "replayed_nonce"),
            (sign(&admin, "e2e-chain", 7, anchor(2)), "nonce_gap"),
            (sign(&stranger, "e2e-chain", 1, anchor(2)), "unknown_signer"),
            (vec![0u8; medledger_core::MAX_TX_BYTES + 10], "oversized"),
            (b"not a transaction".to_vec(), "malformed"),
            (
                sign(
                    &admin,
                    "e2e-chain",
                    2,
                    Payload::RegisterAccount {
                        account: admin.account(),
                        encryption_key: Digest32([1; 32]),
                    },
                ),
                "account_exists",
            ),
        ];
        for (bytes, want) in cases {
            let r = c.submit(&bytes).await.unwrap();
            assert_eq!(r.status, "rejected", "{want}");
            assert_eq!(r.error.as_ref().unwrap().code, want);
            assert_eq!(
                c.status().await.unwrap().tip,
                before,
                "{want} changed the ledger"
            );
            assert_eq!(
                c.account_nonce(&admin.account()).await.unwrap(),
                1,
                "{want}"
            );
        }
        // An account the admin did not register cannot act, even to register others.
        assert!(
            c.submit(&sign(&user, "e2e-chain", 1, reg))
                .await
                .unwrap()
                .error
                .unwrap()
                .code
                == "unknown_signer"
        );

        // Malformed JSON and oversized bodies are refused before anything runs.
        let http = medledger_node::client::http_client(Some(&dir.join("tls/cert.pem"))).unwrap();
        let r = http
            .post(format!("{}/v1/tx", node.url))
            .header("content-type", "application/json")
            .body("{\"tx\":")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let huge = format!("{{\"txs\":[\"{}\"]}}", "A".repeat(30 * 1024 * 1024));
        let r = http
            .post(format!("{}/v1/txs", node.url))
            .header("content-type", "application/json")
            .body(huge)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 413);
        assert_eq!(c.status().await.unwrap().tip, before);

        // More blocks, then proofs fetched and verified by the CLI.
        for i in 2..6 {
            assert_eq!(
                c.submit(&sign(&admin, "e2e-chain", i, anchor(i)))
                    .await
                    .unwrap()
                    .status,
                "committed"
            );
        }
        let hash = ok.hash.unwrap().to_string();
        let url = node.url.clone();
        let out = succeed(
            Command::new(BIN)
                .args(["proof", "inclusion", &hash, "--node", &url, "--data-dir"])
                .arg(&dir),
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("inclusion proof OK"));
        succeed(
            Command::new(BIN)
                .args(["proof", "consistency", "1", "--node", &url, "--data-dir"])
                .arg(&dir),
        );
        // Transaction status is for its signer and overseers: the CLI signs the query
        // with the (admin) keystore.
        let pw = dir.parent().unwrap().join("pw");
        let out = Command::new(BIN)
            .args(["tx", "status", &hash, "--node", &url, "--data-dir"])
            .arg(&dir)
            .arg("--password-file")
            .arg(&pw)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("\"committed\""));
        let missing = "00".repeat(32);
        let out = Command::new(BIN)
            .args(["tx", "status", &missing, "--node", &url, "--data-dir"])
            .arg(&dir)
            .arg("--password-file")
            .arg(&pw)
            .output()
            .unwrap();
        assert!(!out.status.success());
    });
}

/// Submits until the node dies; returns acknowledged hashes and every hash sent.
async fn load(c: Client, keys: AccountKeys, mut nonce: u64) -> (Vec<TxHash>, Vec<(u64, TxHash)>) {
    let mut acked = Vec::new();
    let mut sent = Vec::new();
    loop {
        let batch: Vec<Vec<u8>> = (0..10)
            .map(|i| sign(&keys, "e2e-chain", nonce + 1 + i, anchor(nonce + 1 + i)))
            .collect();
        for (i, b) in batch.iter().enumerate() {
            sent.push((
                nonce + 1 + i as u64,
                medledger_core::SignedTx::decode(b).unwrap().body.hash(),
            ));
        }
        match c.submit_many(&batch).await {
            Ok(results) => {
                for r in results {
                    assert_eq!(r.status, "committed", "{:?}", r.error);
                    acked.push(r.hash.unwrap());
                }
                nonce += 10;
            }
            Err(_) => return (acked, sent),
        }
    }
}

#[test]
fn sigkill_during_load_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init(tmp.path());
    let admin = admin(&dir);
    let rt = rt();
    let users: Vec<AccountKeys> = (0..2).map(|_| AccountKeys::generate().unwrap()).collect();
    {
        let node = start(&dir);
        rt.block_on(async {
            let c = client(&node, &dir).await;
            for (i, u) in users.iter().enumerate() {
                let reg = Payload::RegisterAccount {
                    account: u.account(),
                    encryption_key: u.encryption_public(),
                };
                assert_eq!(
                    c.submit(&sign(&admin, "e2e-chain", i as u64 + 1, reg))
                        .await
                        .unwrap()
                        .status,
                    "committed"
                );
            }
        });
    }
    let mut all_acked: Vec<TxHash> = Vec::new();
    for round in 0..20u64 {
        let mut node = start(&dir);
        let (acked, sent) = rt.block_on(async {
            let c = client(&node, &dir).await;
            // Every acknowledged tx from earlier rounds survived the kill.
            for h in &all_acked {
                assert!(
                    c.tx_status(h).await.unwrap().is_some(),
                    "round {round}: acknowledged {h} lost"
                );
            }
            let mut tasks = Vec::new();
            for u in &users {
                let keys = KeystoreFile::clone(&u.seal(b"x").unwrap())
                    .open(b"x")
                    .unwrap();
                let nonce = c.account_nonce(&u.account()).await.unwrap();
                tasks.push(tokio::spawn(load(c.clone(), keys, nonce)));
            }
            tokio::time::sleep(Duration::from_millis(200 + (round * 97) % 800)).await;
            node.child.kill().unwrap(); // SIGKILL
            node.child.wait().unwrap();
            let mut acked = Vec::new();
            let mut sent = Vec::new();
            for t in tasks {
                let (a, s) = t.await.unwrap();
                acked.extend(a);
                sent.push(s);
            }
            (acked, sent)
        });
        all_acked.extend(acked);
        let out = medledger(&["verify"], &dir);
        assert!(
            out.status.success(),
            "round {round}: verify failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        // Unacknowledged txs are wholly present or wholly absent: each account's
        // committed txs are exactly nonces 1..=its ledger nonce, each in a block.
        let node2 = start(&dir);
        rt.block_on(async {
            let c = client(&node2, &dir).await;
            // Start-up checked only the blocks after the mark the killed node left
            // (recorded when it started), not the whole ledger again.
            let st = c.status().await.unwrap();
            let s = &st.startup;
            assert!(s.from_height > 0 && s.signatures, "round {round}: {s:?}");
            assert_eq!(s.from_height + s.blocks, s.height, "round {round}: {s:?}");
            assert!(s.height <= st.tip.height);
            for (u, sent) in users.iter().zip(&sent) {
                let nonce = c.account_nonce(&u.account()).await.unwrap();
                for (n, h) in sent {
                    let present = c.tx_status(h).await.unwrap().is_some();
                    assert_eq!(
                        present,
                        *n <= nonce,
                        "round {round}: nonce {n} (ledger nonce {nonce})"
                    );
                }
            }
        });
        drop(node2);
        drop(node);
    }
    let set: BTreeSet<_> = all_acked.iter().collect();
    assert_eq!(set.len(), all_acked.len());
    assert!(
        all_acked.len() > 100,
        "the load never got going ({} acked)",
        all_acked.len()
    );
}

/// The prefix of a borsh-encoded verified mark for `height` and block `hash`.
fn mark_prefix(chain: &str, height: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut p = (chain.len() as u32).to_le_bytes().to_vec();
    p.extend_from_slice(chain.as_bytes());
    p.extend_from_slice(&height.to_le_bytes());
    p.extend_from_slice(hash);
    p
}

#[test]
fn tampered_store_is_named_by_verify_and_node_refuses_to_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init(tmp.path());
    let admin = admin(&dir);
    let mut target = Vec::new();
    let mut target_hash = String::new();
    let tip = {
        let node = start(&dir);
        let tip = rt().block_on(async {
            let c = client(&node, &dir).await;
            // A fresh node checked everything from genesis.
            let s = c.status().await.unwrap().startup;
            assert_eq!((s.from_height, s.signatures), (0, true), "{s:?}");
            for i in 1..=6u64 {
                let tx = sign(&admin, "e2e-chain", i, anchor(i));
                if i == 4 {
                    target = tx.clone();
                }
                let r = c.submit(&tx).await.unwrap();
                assert_eq!(r.status, "committed");
                if i == 4 {
                    target_hash = r.hash.unwrap().to_string();
                }
            }
            c.status().await.unwrap().tip
        });
        node.stop();
        tip
    };
    assert!(medledger(&["verify"], &dir).status.success());
    // The stopped node left a mark at its tip: the next start checks nothing again.
    {
        let node = start(&dir);
        rt().block_on(async {
            let c = client(&node, &dir).await;
            let s = c.status().await.unwrap().startup;
            assert_eq!(
                (s.from_height, s.blocks, s.height),
                (tip.height, 0, tip.height),
                "{s:?}"
            );
        });
        node.stop();
    }
    let path = dir.join("ledger.redb");
    let mut bytes = std::fs::read(&path).unwrap();
    let sig = &target[target.len() - 64..];
    let hits: Vec<usize> = bytes
        .windows(64)
        .enumerate()
        .filter(|(_, w)| *w == sig)
        .map(|(i, _)| i)
        .collect();
    assert!(!hits.is_empty());
    for p in hits {
        bytes[p + 7] ^= 0x40; // one bit of one byte, in every copy redb kept
    }
    std::fs::write(&path, &bytes).unwrap();

    let out = medledger(&["verify"], &dir);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("block 4"), "verify must name block 4: {err}");

    let refused = |extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&dir)
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            err.contains("refusing to serve") && err.contains("block 4"),
            "{err}"
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).is_empty(),
            "it must not have started listening"
        );
    };
    refused(&["--startup-check", "full"]);

    // The default start checks only what came after the mark, so it serves; but a
    // read of the altered block refuses it, naming it, and serves nothing from it.
    {
        let node = start(&dir);
        rt().block_on(async {
            let c = client(&node, &dir).await;
            let s = c.status().await.unwrap().startup;
            assert_eq!((s.from_height, s.blocks), (tip.height, 0), "{s:?}");
            for path in [format!("/v1/tx/{target_hash}"), "/v1/blocks/4".to_owned()] {
                let (code, body) = c.get_raw(&path, &[]).await.unwrap();
                assert_eq!(code, 500, "{path}: {body}");
                assert!(body.to_string().contains("block 4"), "{path}: {body}");
            }
            let (code, _) = c.get_raw("/v1/blocks/5", &[]).await.unwrap();
            assert_eq!(code, 200, "other blocks still read");
        });
        node.stop();
    }

    // A mark that is not the node's own (here: one byte of it altered) is not
    // trusted: start-up verifies everything and finds block 4.
    let mut bytes = std::fs::read(&path).unwrap();
    let prefix = mark_prefix("e2e-chain", tip.height, &tip.hash.0.0);
    let hits: Vec<usize> = bytes
        .windows(prefix.len())
        .enumerate()
        .filter(|(_, w)| *w == &prefix[..])
        .map(|(i, _)| i)
        .collect();
    assert!(!hits.is_empty(), "the mark is stored");
    for p in hits {
        bytes[p + prefix.len() + 3] ^= 0x01; // inside the Merkle log size
    }
    std::fs::write(&path, &bytes).unwrap();
    refused(&[]);
}

#[test]
fn keystore_opened_with_wrong_password_fails_and_foreign_signature_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init(tmp.path());
    assert!(
        KeystoreFile::read(&dir.join("admin.keystore.json"))
            .unwrap()
            .open(b"wrong password")
            .is_err()
    );
    let node = start(&dir);
    let admin = admin(&dir);
    rt().block_on(async {
        let c = client(&node, &dir).await;
        // Claims to be the admin, signed by another key.
        let other = AccountKeys::generate().unwrap();
        let forged = TxBody {
            version: TX_VERSION,
            chain_id: ChainId::new("e2e-chain").unwrap(),
            signer: AccountId(admin.account().0),
            nonce: 1,
            payload: anchor(1),
        }
        .sign(&other.signing);
        let r = c.submit(&forged.to_bytes()).await.unwrap();
        assert_eq!(r.error.unwrap().code, "bad_signature");
        assert_eq!(c.account_nonce(&admin.account()).await.unwrap(), 0);
    });
}

/// `bench ledger --workload records` (the original design's addHealthcareRecord):
/// it sets up doctors, patients and grants, every record commits, and it prints the
/// figures as a table and a JSON line. Timings are printed, never asserted.
#[test]
fn bench_ledger_records_workload_commits_every_record() {
    let out = Command::new(BIN)
        .args([
            "bench",
            "ledger",
            "--workload",
            "records",
            "--txs",
            "400",
            "--clients",
            "4",
            "--patients",
            "12",
            "--seq",
            "10",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("sequential commit p50 (ms)"), "{text}");
    let json: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(json["workload"], "records");
    assert_eq!(
        json["committed"], 410,
        "the concurrent and the sequential records"
    );
    assert_eq!(json["rejected"], 0);
    for k in [
        "committed_tx_per_s",
        "p50_ms",
        "p99_ms",
        "seq_p50_ms",
        "seq_p99_ms",
        "verify_tx_per_s",
    ] {
        assert!(json[k].as_f64().is_some_and(|v| v > 0.0), "{k}: {json}");
    }
}
