//! The contracts end to end against the real binary: the CLI submits any kind as JSON
//! and queries; a self-custody client prepares, signs and submits over the JSON API;
//! record access needs a signed request, is decided by the ledger's rules and lands in
//! the audit trail (refusals too); the OpenAPI document is served.

mod common;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use ed25519_dalek::{Signer, SigningKey};
use medledger_core::{AccountId, Digest32, RecordId, TxHash};
use medledger_node::http::caller::request_message;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

fn cli(dir: &Path, node: &Node, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .args(["--node", &node.url, "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `medledger tx submit ... json PAYLOAD` signed with the admin keystore.
fn http(dir: &Path) -> reqwest::Client {
    medledger_node::client::http_client(Some(&dir.join("tls/cert.pem"))).unwrap()
}

async fn get(h: &reqwest::Client, url: &str, path: &str) -> (u16, Value) {
    let r = h.get(format!("{url}{path}")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// A GET signed by `key`'s account: the status and the JSON body.
async fn signed_json(h: &reqwest::Client, url: &str, key: &SigningKey, path: &str) -> (u16, Value) {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let sig = key.sign(request_message("GET", path, ts).as_bytes());
    let did = AccountId(key.verifying_key().to_bytes()).to_did();
    let r = h
        .get(format!("{url}{path}"))
        .header(
            "authorization",
            format!(
                "Medledger-Ed25519 did={did},ts={ts},sig={}",
                hex::encode(sig.to_bytes())
            ),
        )
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn signed_get(h: &reqwest::Client, url: &str, key: &SigningKey, path: &str) -> u16 {
    signed_json(h, url, key, path).await.0
}

async fn audit_len(h: &reqwest::Client, url: &str, key: &SigningKey, query: &str) -> usize {
    let (code, body) = signed_json(h, url, key, &format!("/v1/audit?{query}")).await;
    assert_eq!(code, 200, "{body}");
    body["entries"].as_array().unwrap().len()
}

#[test]
fn contracts_through_cli_json_api_and_audited_access() {
    let root = tempfile::tempdir().unwrap();
    let dir = init(root.path());
    let pw = root.path().join("pw");
    let node = start(&dir);
    let rt = rt();
    let url = node.url.clone();
    let h = http(&dir);
    rt.block_on(client(&node, &dir));
    let admin_key = admin(&dir).signing.clone();
    let admin = admin(&dir).account().to_did();
    let pw_s = pw.to_str().unwrap();

    // The consortium admin founds an organisation (CLI, JSON payload) and administers it.
    let (ok, out) = submit_json(
        &dir,
        &node,
        pw_s,
        &format!(r#"{{"kind":"add_org","org":"general","admin":"{admin}"}}"#),
    );
    assert!(ok, "{out}");
    let (ok, out) = cli(
        &dir,
        &node,
        &["query", "orgs/general", "--password-file", pw_s],
    );
    assert!(ok && out.contains("hospital_admin"), "{out}");
    // Malformed JSON payloads are refused before anything is signed.
    let (ok, out) = submit_json(&dir, &node, pw_s, r#"{"kind":"add_org","org":"Bad Name"}"#);
    assert!(
        !ok && out.contains("invalid transaction payload JSON"),
        "{out}"
    );
    let (ok, out) = cli(
        &dir,
        &node,
        &["query", "orgs/nowhere", "--password-file", pw_s],
    );
    assert!(!ok && out.contains("not found"), "{out}");

    // Self-custody patient and doctor register over the JSON API; the admin approves.
    let patient = SigningKey::from_bytes(&[21; 32]);
    let doctor = SigningKey::from_bytes(&[22; 32]);
    let stranger = SigningKey::from_bytes(&[23; 32]);
    let did = |k: &SigningKey| AccountId(k.verifying_key().to_bytes()).to_did();
    rt.block_on(async {
        for (k, role) in [(&patient, "patient"), (&doctor, "doctor")] {
            let (code, body) = self_custody(
                &h,
                &url,
                k,
                json!({"kind": "register", "org": "general", "role": role, "encryption_key": hex::encode([7u8; 32])}),
            )
            .await;
            assert_eq!(code, 200, "{body}");
        }
        // A forged signature (the stranger signs for the patient) changes nothing.
        // Account facts are for the account itself (and overseers), not for strangers.
        let (code, _) = get(&h, &url, &format!("/v1/accounts/{}", did(&patient))).await;
        assert_eq!(code, 401, "anonymous");
        let (code, _) = signed_json(&h, &url, &stranger, &format!("/v1/accounts/{}", did(&patient))).await;
        assert_eq!(code, 404, "a stranger");
        let (code, body) = signed_json(&h, &url, &patient, &format!("/v1/accounts/{}", did(&patient))).await;
        assert_eq!(code, 200);
        let nonce_before = body["nonce"].as_u64().unwrap();
        let prep: Value = h
            .post(format!("{url}/v1/tx/prepare"))
            .json(&json!({"signer": did(&patient), "payload": {"kind": "anchor", "digest": hex::encode([1u8; 32])}}))
            .send().await.unwrap().json().await.unwrap();
        let hash = Digest32::from_hex(prep["hash"].as_str().unwrap()).unwrap();
        let mut tx = B64.decode(prep["body"].as_str().unwrap()).unwrap();
        tx.extend_from_slice(&stranger.sign(&hash.0).to_bytes());
        let r = h.post(format!("{url}/v1/tx")).json(&json!({"tx": B64.encode(tx)})).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 422);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_signature");
        let (_, after) = signed_json(&h, &url, &patient, &format!("/v1/accounts/{}", did(&patient))).await;
        assert_eq!(after["nonce"].as_u64().unwrap(), nonce_before);
    });
    for k in [&patient, &doctor] {
        let (ok, out) = submit_json(
            &dir,
            &node,
            pw_s,
            &format!(
                r#"{{"kind":"approve_registration","account":"{}"}}"#,
                did(k)
            ),
        );
        assert!(ok, "{out}");
    }

    rt.block_on(async {
        // The patient registers a record (only CID and hashes on the ledger).
        let cid = medledger_core::Cid::of(b"ciphertext").to_string();
        let (code, body) = self_custody(
            &h,
            &url,
            &patient,
            json!({"kind": "add_record", "patient": did(&patient), "category": "Observation", "cid": cid, "content_hash": hex::encode([3u8; 32]), "size": 10}),
        )
        .await;
        assert_eq!(code, 200, "{body}");
        let record = RecordId::from_tx(&body["hash"].as_str().unwrap().parse::<TxHash>().unwrap());
        let access = format!("/v1/records/{record}/access?purpose=treatment");

        // Without a grant the doctor is refused, exactly as for a record that does not
        // exist; the refusal is audited too.
        let decision = format!("/v1/decision?account={}&record={record}&purpose=treatment", did(&doctor));
        let (_, d) = signed_json(&h, &url, &doctor, &decision).await;
        assert_eq!(d["allowed"], false);
        assert_eq!(d["reason"], "no_valid_grant");
        // The decision oracle answers about oneself only (and to overseers).
        assert_eq!(get(&h, &url, &decision).await.0, 401);
        assert_eq!(signed_get(&h, &url, &stranger, &decision).await, 404);
        let (st, refused) = signed_json(&h, &url, &doctor, &access).await;
        let missing = format!("/v1/records/{}/access?purpose=treatment", "0".repeat(64));
        assert_eq!((st, &refused), (404, &signed_json(&h, &url, &doctor, &missing).await.1));
        // Ledger facts of the record are absent to the doctor too.
        assert_eq!(signed_get(&h, &url, &doctor, &format!("/v1/records/{record}")).await, 404);
        assert_eq!(signed_get(&h, &url, &patient, &format!("/v1/records/{record}")).await, 200);
        // Unsigned, wrongly signed, and signed-for-another-path requests are refused.
        let (code, _) = get(&h, &url, &access).await;
        assert_eq!(code, 401);
        assert_eq!(signed_get(&h, &url, &doctor, &format!("/v1/records/{record}/access?purpose=payment")).await, 404);

        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let (code, body) = self_custody(
            &h,
            &url,
            &patient,
            json!({"kind": "grant_consent", "grantee": {"type": "account", "id": did(&doctor)}, "scope": {"type": "all"}, "purpose": "treatment", "start_ms": 0, "expiry_ms": now + 3_600_000}),
        )
        .await;
        assert_eq!(code, 200, "{body}");
        let grant = body["hash"].as_str().unwrap().to_owned();
        let (_, d) = signed_json(&h, &url, &doctor, &decision).await;
        assert_eq!(d["allowed"], true);
        assert_eq!(d["reason"], "grant");
        assert_eq!(signed_get(&h, &url, &doctor, &access).await, 200);
        assert_eq!(signed_get(&h, &url, &patient, &access).await, 200);

        // Reports are batched by the node; wait for them to commit.
        let mut n = 0;
        for _ in 0..100 {
            n = audit_len(&h, &url, &admin_key, &format!("record={record}")).await;
            if n >= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(n, 4, "every access, allowed or refused, is audited");
        let (_, trail) = signed_json(&h, &url, &doctor, &format!("/v1/audit?accessor={}", did(&doctor))).await;
        let allowed: Vec<bool> = trail["entries"].as_array().unwrap().iter().map(|e| e["allowed"].as_bool().unwrap()).collect();
        // Refused, a probe of a record that does not exist (audited like a refusal),
        // refused for another purpose, allowed.
        assert_eq!(allowed, vec![false, false, false, true]);
        assert_eq!(audit_len(&h, &url, &admin_key, &format!("patient={}", did(&patient))).await, 4);
        assert_eq!(audit_len(&h, &url, &patient, &format!("patient={}", did(&patient))).await, 4);
        // The audit trail is not public: anonymous callers get 401, and a stranger
        // asking for the patient's trail gets an empty one.
        assert_eq!(get(&h, &url, &format!("/v1/audit?patient={}", did(&patient))).await.0, 401);
        assert_eq!(audit_len(&h, &url, &stranger, &format!("patient={}", did(&patient))).await, 0);
        assert_eq!(audit_len(&h, &url, &stranger, "from=0").await, 0);
        // Nor are blocks and transactions.
        assert_eq!(get(&h, &url, "/v1/blocks/1").await.0, 401);
        assert_eq!(signed_get(&h, &url, &stranger, "/v1/blocks/1").await, 404);
        assert_eq!(signed_get(&h, &url, &admin_key, "/v1/blocks/1").await, 200);
        let (code, _) = signed_json(&h, &url, &admin_key, "/v1/audit").await;
        assert_eq!(code, 400);

        // OpenAPI is served and names the endpoints.
        let (code, doc) = get(&h, &url, "/v1/openapi.json").await;
        assert_eq!(code, 200);
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["paths"]["/v1/decision"].is_object());
        assert!(doc["paths"]["/auth/login"].is_object());
        // An independent validator (PyPI openapi-spec-validator) accepts the document.
        let spec = std::env::temp_dir().join(format!("medledger-openapi-{}.json", std::process::id()));
        std::fs::write(&spec, serde_json::to_vec(&doc).unwrap()).unwrap();
        let out = std::process::Command::new("python3")
            .args(["-c", "import json,sys; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('valid')"])
            .arg(&spec)
            .output()
            .expect("python3 with openapi-spec-validator");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

        // Real answers conform to what the document says of them (their schemas are
        // derived from the types that encode them): each body is checked with PyPI
        // jsonschema against the document's schema for its route and status.
        let p = did(&patient);
        let mut answers = Vec::new();
        for (template, path, key) in [
            ("/v1/records/{id}", format!("/v1/records/{record}"), Some(&patient)),
            ("/v1/records/{id}/access", access.clone(), Some(&patient)),
            ("/v1/records/{id}", format!("/v1/records/{}", "0".repeat(64)), Some(&doctor)),
            ("/v1/patients/{did}/records", format!("/v1/patients/{p}/records"), Some(&patient)),
            ("/v1/patients/{did}/grants", format!("/v1/patients/{p}/grants"), Some(&patient)),
            ("/v1/patients/{did}/break-glass", format!("/v1/patients/{p}/break-glass"), Some(&patient)),
            ("/v1/patients/{did}/agreements", format!("/v1/patients/{p}/agreements"), Some(&patient)),
            ("/v1/accounts/{did}/inbox", format!("/v1/accounts/{p}/inbox"), Some(&patient)),
            ("/v1/accounts/{did}", format!("/v1/accounts/{p}"), Some(&patient)),
            ("/v1/grants/{id}", format!("/v1/grants/{grant}"), Some(&patient)),
            ("/v1/tx/{hash}", format!("/v1/tx/{grant}"), Some(&patient)),
            ("/v1/audit", format!("/v1/audit?record={record}"), Some(&admin_key)),
            ("/v1/audit", format!("/v1/audit?record={record}"), None),
            ("/v1/decision", decision.clone(), Some(&doctor)),
            ("/v1/totals", "/v1/totals".to_owned(), Some(&admin_key)),
            ("/v1/due", "/v1/due".to_owned(), Some(&admin_key)),
            ("/v1/orgs/{org}", "/v1/orgs/general".to_owned(), Some(&admin_key)),
            ("/v1/blocks/{height}", "/v1/blocks/1".to_owned(), Some(&admin_key)),
            ("/v1/status", "/v1/status".to_owned(), None),
            ("/v1/proof/inclusion", format!("/v1/proof/inclusion?hash={grant}"), None),
            ("/v1/proof/consistency", "/v1/proof/consistency?old=1".to_owned(), None),
        ] {
            let (status, body) = match key {
                Some(k) => signed_json(&h, &url, k, &path).await,
                None => get(&h, &url, &path).await,
            };
            answers.push(json!({"path": template, "method": "get", "status": status, "body": body}));
        }
        let statuses: Vec<u64> = answers.iter().map(|a| a["status"].as_u64().unwrap()).collect();
        assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 19, "{statuses:?}");
        let answers_file = spec.with_extension("answers.json");
        std::fs::write(&answers_file, serde_json::to_vec(&answers).unwrap()).unwrap();
        let out = std::process::Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/openapi_conformance.py"))
            .arg(&spec)
            .arg(&answers_file)
            .output()
            .expect("python3 with jsonschema");
        let _ = std::fs::remove_file(&spec);
        let _ = std::fs::remove_file(&answers_file);
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{report}{}", String::from_utf8_lossy(&out.stderr));
        assert!(report.contains("21 of 21 answers conform"), "{report}");
    });
    let (ok, out) = cli(
        &dir,
        &node,
        &[
            "query",
            &format!("patients/{}/grants", did(&patient)),
            "--password-file",
            pw_s,
        ],
    );
    assert!(ok && out.contains("treatment"), "{out}");
    node.stop();
    let out = medledger(&["verify"], &dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A patient's erasure request on the ledger makes the node delete the record's
/// ciphertext and key envelopes from its record store; reads then say "erased".
#[test]
fn ledger_erasure_shreds_the_blob_on_the_node() {
    let root = tempfile::tempdir().unwrap();
    let dir = init(root.path());
    let pw = root.path().join("pw");
    let pw_s = pw.to_str().unwrap();
    let node = start_with(&dir, &["--housekeeping-ms", "100"]);
    let rt = rt();
    let url = node.url.clone();
    let h = http(&dir);
    rt.block_on(client(&node, &dir));
    let admin = admin(&dir).account().to_did();
    let (ok, out) = submit_json(
        &dir,
        &node,
        pw_s,
        &format!(r#"{{"kind":"add_org","org":"general","admin":"{admin}"}}"#),
    );
    assert!(ok, "{out}");
    let patient = SigningKey::from_bytes(&[31; 32]);
    let did = AccountId(patient.verifying_key().to_bytes()).to_did();
    let other = SigningKey::from_bytes(&[32; 32]);
    let other_did = AccountId(other.verifying_key().to_bytes()).to_did();

    // Synthetic content, encrypted into the node's record store by the CLI.
    let file = root.path().join("note.txt");
    std::fs::write(&file, "synthetic clinical note 0042 for erasure test").unwrap();
    let (ok, out) = cli_raw(&[
        "blob",
        "put",
        file.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
        "--password-file",
        pw_s,
    ]);
    assert!(ok, "{out}");
    let receipt: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let cid = receipt["cid"].as_str().unwrap().to_owned();
    let c: medledger_core::Cid = cid.parse().unwrap();
    let store_root = dir.join("blobs");
    let blob = || {
        medledger_store::find_stored(&store_root, &c)
            .unwrap()
            .is_some()
    };
    let envs = || {
        medledger_store::find_envelopes(&store_root, &c)
            .unwrap()
            .is_some()
    };
    assert!(blob() && envs());

    rt.block_on(async {
        for k in [&patient, &other] {
            let (code, body) = self_custody(
                &h,
                &url,
                k,
                json!({"kind": "register", "org": "general", "role": "patient", "encryption_key": hex::encode([7u8; 32])}),
            )
            .await;
            assert_eq!(code, 200, "{body}");
        }
    });
    for d in [&did, &other_did] {
        let (ok, out) = submit_json(
            &dir,
            &node,
            pw_s,
            &format!(r#"{{"kind":"approve_registration","account":"{d}"}}"#),
        );
        assert!(ok, "{out}");
    }
    rt.block_on(async {
        let (code, body) = self_custody(
            &h,
            &url,
            &patient,
            json!({"kind": "add_record", "patient": did, "category": "DocumentReference", "cid": cid, "content_hash": receipt["content_hash"], "size": receipt["stored_bytes"]}),
        )
        .await;
        assert_eq!(code, 200, "{body}");
        let record = body["hash"].as_str().unwrap().to_owned();
        // Regression (issue 12, defect 1): another patient registering the same CID
        // under a record of their own (to read it through the node, or to shred it by
        // erasing theirs) is refused with a typed reason.
        let (code, body) = self_custody(
            &h,
            &url,
            &other,
            json!({"kind": "add_record", "patient": other_did, "category": "DocumentReference", "cid": cid, "content_hash": receipt["content_hash"], "size": receipt["stored_bytes"]}),
        )
        .await;
        assert_eq!((code, body["error"]["code"].as_str()), (422, Some("cid_taken")), "{body}");
        let (code, body) = self_custody(&h, &url, &patient, json!({"kind": "request_erasure", "target": {"type": "record", "record": record}})).await;
        assert_eq!(code, 200, "{body}");
        for _ in 0..100 {
            if !blob() && !envs() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert!(!blob(), "ciphertext still on disk after erasure");
    assert!(!envs(), "key envelopes still on disk after erasure");
    let back = root.path().join("back.txt");
    let (ok, out) = cli_raw(&[
        "blob",
        "get",
        &cid,
        "--out",
        back.to_str().unwrap(),
        "--data-dir",
        dir.to_str().unwrap(),
        "--password-file",
        pw_s,
    ]);
    assert!(!ok && out.contains("erased"), "{out}");
    assert!(!back.exists());
    node.stop();
}
