//! Backups, proven by restoring them: a backup taken while FHIR creates and audited
//! reads go on, then the data directory destroyed and the backup restored onto a new
//! one; and damaged backups (a flipped byte, a missing or truncated file, the wrong
//! key) refused by `verify` and `restore` with a message naming what is wrong.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::fhir::{Fhir, search_ids};
use common::signin::*;
use common::*;

/// A new age identity file in `root`; returns (identity file, public recipient).
fn keygen(root: &Path, name: &str) -> (PathBuf, String) {
    let id = root.join(name);
    let out = succeed(
        Command::new(BIN)
            .args(["backup", "keygen", "--out"])
            .arg(&id),
    );
    let public = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(public.starts_with("age1"), "{public}");
    (id, public)
}

/// Runs `medledger backup …`; (success, stdout, stderr).
fn backup(args: &[&OsStr]) -> (bool, String, String) {
    // Credentials for the local S3 server of the bucket test (moto takes any).
    let out = Command::new(BIN)
        .arg("backup")
        .args(args)
        .env("MEDLEDGER_S3_ACCESS_KEY_ID", "testing")
        .env("MEDLEDGER_S3_SECRET_ACCESS_KEY", "testing")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `medledger backup create --data-dir DIR --out OUT`.
fn create_backup(dir: &OsStr, out: &OsStr) -> (bool, String, String) {
    backup(&[os("create"), os("--data-dir"), dir, os("--out"), out])
}

/// `medledger backup verify --identity IDENTITY SRC`.
fn verify_backup(identity: &OsStr, src: &OsStr) -> (bool, String, String) {
    backup(&[os("verify"), os("--identity"), identity, src])
}

/// `medledger backup restore --identity IDENTITY SRC --data-dir TARGET`.
fn restore_backup(identity: &OsStr, src: &OsStr, target: &OsStr) -> (bool, String, String) {
    backup(&[
        os("restore"),
        os("--identity"),
        identity,
        src,
        os("--data-dir"),
        target,
    ])
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// The JSON line a backup command prints last.
fn json_line(stdout: &str) -> Value {
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

fn obs(pid: &str, value: f64) -> Value {
    json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": format!("Patient/{pid}")},
        "effectiveDateTime": "2026-11-25T10:00:00Z",
        "valueQuantity": {"value": value, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}})
}

/// Creates Observations until told to stop; every acknowledged one is recorded with
/// the resource the node answered.
async fn writer(
    f: Fhir,
    pid: String,
    n: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, Value>>>,
) {
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let (st, o) = f
            .post("/Observation", &obs(&pid, (n * 100_000 + i) as f64))
            .await;
        assert_eq!(st, 201, "{o}");
        acked
            .lock()
            .unwrap()
            .insert(o["id"].as_str().unwrap().to_owned(), o);
        i += 1;
    }
}

/// Audited reads of what was created so far, until told to stop.
async fn reader(
    f: Fhir,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, Value>>>,
) -> usize {
    let mut reads = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = acked.lock().unwrap().keys().nth(reads * 7 % 50).cloned();
        if let Some(id) = id {
            let (st, _) = f.get(&format!("/Observation/{id}")).await;
            assert_eq!(st, 200);
            reads += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    reads
}

/// Who grants consent under load: a self-custody patient signing `grant_consent`
/// transactions to the doctor; every acknowledged one is recorded by its hash.
struct Granter {
    h: reqwest::Client,
    url: String,
    patient: ed25519_dalek::SigningKey,
    doctor: String,
    granted: Arc<Mutex<Vec<String>>>,
}

async fn granter(g: Arc<Granter>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let (code, body) = self_custody(
            &g.h,
            &g.url,
            &g.patient,
            json!({"kind": "grant_consent", "grantee": {"type": "account", "id": g.doctor},
                   "scope": {"type": "all"}, "purpose": "treatment", "start_ms": 0,
                   "expiry_ms": now + 3_600_000}),
        )
        .await;
        assert_eq!(code, 200, "{body}");
        g.granted
            .lock()
            .unwrap()
            .push(body["hash"].as_str().unwrap().to_owned());
    }
}

/// A doctor of `general` signed in through the API (their FHIR client), the signed-in
/// consortium admin, and a Patient the doctor created.
async fn doctor_with_patient(node: &Node, dir: &Path, family: &str) -> (Fhir, Signed, String) {
    client(node, dir).await;
    let h = http(node, dir);
    let admin = admin_signed_in(&h, dir, node).await;
    let (token, _) = staff_token(
        &h,
        dir,
        &admin,
        "Dana Doctor",
        "dana@hospital.example",
        "doctor",
    )
    .await;
    let f = Fhir::new(&h, token);
    let (st, p) = f
        .post(
            "/Patient",
            &json!({"resourceType": "Patient", "name": [{"family": family, "given": ["Synthia"]}]}),
        )
        .await;
    assert_eq!(st, 201, "{p}");
    (f, admin, p["id"].as_str().unwrap().to_owned())
}

/// The node's `/metrics` text.
async fn metrics(h: &Http, node: &Node) -> String {
    h.c.get(format!("{}/metrics", node.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Successful backups so far, from the node's `/metrics`.
async fn backups_taken(h: &Http, node: &Node) -> u64 {
    metrics(h, node)
        .await
        .lines()
        .find(|l| l.starts_with("medledger_backups_total") && l.contains("\"ok\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0)
}

/// Runs load until `n` more resources are acknowledged, takes a backup while the load
/// goes on, and returns the backup's JSON line and how many creates were acknowledged
/// while it ran.
async fn backup_under_load(
    f: &dyn Fn() -> Fhir,
    pid: &str,
    dir: &Path,
    dest: &Path,
    acked: &Arc<Mutex<BTreeMap<String, Value>>>,
    grants: &Arc<Granter>,
    n: usize,
) -> (Value, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let granting = tokio::spawn(granter(grants.clone(), stop.clone()));
    let mut writers = Vec::new();
    for w in 0..4 {
        writers.push(tokio::spawn(writer(
            f(),
            pid.to_owned(),
            w,
            stop.clone(),
            acked.clone(),
        )));
    }
    let readers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(reader(f(), stop.clone(), acked.clone())))
        .collect();
    let start = acked.lock().unwrap().len();
    while acked.lock().unwrap().len() < start + n {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = acked.lock().unwrap().len();
    let (dir, dest) = (dir.to_owned(), dest.to_owned());
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || create_backup(dir.as_os_str(), dest.as_os_str()))
            .await
            .unwrap();
    let during = acked.lock().unwrap().len() - before;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let mut reads = 0;
    for r in readers {
        reads += r.await.unwrap();
    }
    granting.await.unwrap();
    assert!(reads > 0, "no audited reads ran");
    assert!(ok, "{err}");
    (json_line(&out), during)
}

#[test]
fn a_backup_under_load_restores_every_acknowledged_record_after_the_disk_is_lost() {
    let root = tempfile::tempdir().unwrap();
    let (identity, recipient) = keygen(root.path(), "backup-identity.txt");
    let dir = init_with(root.path(), &["--backup-recipient", &recipient]);
    let dest = root.path().join("backups");
    let rt = rt();
    let node = start(&dir);
    let acked: Arc<Mutex<BTreeMap<String, Value>>> = Arc::default();
    let pw = root.path().join("pw");
    let (token, pid, secret, grants) = rt.block_on(async {
        client(&node, &dir).await;
        let h = http(&node, &dir);
        let admin = admin_signed_in(&h, &dir, &node).await;
        // A doctor with a second factor whose secret the test keeps, to sign in after.
        let (st, v, _) = h
            .post("/auth/register", json!({"name": "Dana Doctor", "email": "dana@hospital.example",
                "password": STRONG, "org": "general", "role": "doctor"}), None)
            .await;
        assert_eq!(st, 201, "{v}");
        let account = v["account"].clone();
        verify(&h, &dir, "dana@hospital.example").await;
        let (st, _, _) = h.post("/auth/approve", json!({"account": account}), Some(&admin)).await;
        assert_eq!(st, 204);
        let (s, _) = h.login("dana@hospital.example", STRONG, None).await.unwrap();
        let secret = enable_mfa(&h, &s).await;
        let (st, v, _) = h.post("/auth/tokens", json!({"ttl_s": 86400}), Some(&s)).await;
        assert_eq!(st, 201, "{v}");
        let token = v["token"].as_str().unwrap().to_owned();
        let f = Fhir { c: h.c.clone(), url: node.url.clone(), token: token.clone() };
        let (st, p) = f
            .post("/Patient", &json!({"resourceType": "Patient", "name": [{"family": "Restorova", "given": ["Synthia"]}]}))
            .await;
        assert_eq!(st, 201, "{p}");
        // A patient with their own keys, who grants the doctor consent under load.
        let patient = ed25519_dalek::SigningKey::from_bytes(&[51; 32]);
        let pdid = medledger_core::AccountId(patient.verifying_key().to_bytes()).to_did();
        let (code, body) = self_custody(&h.c, &node.url, &patient,
            json!({"kind": "register", "org": "general", "role": "patient", "encryption_key": hex::encode([7u8; 32])})).await;
        assert_eq!(code, 200, "{body}");
        let (ok, out) = submit_json(&dir, &node, pw.to_str().unwrap(),
            &format!(r#"{{"kind":"approve_registration","account":"{pdid}"}}"#));
        assert!(ok, "{out}");
        let grants = Arc::new(Granter {
            h: h.c.clone(),
            url: node.url.clone(),
            patient,
            doctor: account.as_str().unwrap().to_owned(),
            granted: Arc::default(),
        });
        (token, p["id"].as_str().unwrap().to_owned(), secret, grants)
    });

    // Two backups, each taken while creates and audited reads go on; the second copies
    // only what is new.
    let (first, second, during) = rt.block_on(async {
        let h = http(&node, &dir);
        let f = || Fhir::new(&h, token.clone());
        let (first, d1) = backup_under_load(&f, &pid, &dir, &dest, &acked, &grants, 300).await;
        let (second, d2) = backup_under_load(&f, &pid, &dir, &dest, &acked, &grants, 100).await;
        (first, second, d1 + d2)
    });
    assert!(
        during > 0,
        "no create was acknowledged while a backup ran: writes were paused"
    );
    assert!(
        second["height"].as_u64() > first["height"].as_u64(),
        "{first} {second}"
    );
    let new = second["blobs_new"].as_u64().unwrap();
    assert!(
        new > 0 && new < second["blobs"].as_u64().unwrap() / 2,
        "the second backup copied {new} of {} blobs: {second}",
        second["blobs"]
    );
    let height = second["height"].as_u64().unwrap();

    // Where each acknowledged create committed, from the original node.
    let heights: BTreeMap<String, u64> = rt.block_on(async {
        let h = http(&node, &dir);
        let mut out = BTreeMap::new();
        let ids: Vec<String> = acked.lock().unwrap().keys().cloned().collect();
        for id in ids {
            let (st, v) = h.get_as_admin(&dir, &format!("/v1/tx/{id}")).await;
            assert_eq!(st, 200, "{v}");
            out.insert(id, v["height"].as_u64().unwrap());
        }
        out
    });
    // And where each acknowledged grant did.
    let granted: Vec<(String, u64)> = rt.block_on(async {
        let h = http(&node, &dir);
        let hashes = grants.granted.lock().unwrap().clone();
        let mut out = Vec::new();
        for hash in hashes {
            let (st, v) = h.get_as_admin(&dir, &format!("/v1/tx/{hash}")).await;
            assert_eq!(st, 200, "{v}");
            out.push((hash, v["height"].as_u64().unwrap()));
        }
        out
    });
    assert!(
        granted.iter().filter(|(_, h)| *h <= height).count() >= 2,
        "grants did not run under load: {granted:?}"
    );
    let covered = heights.values().filter(|h| **h <= height).count();
    let after = heights.len() - covered;
    assert!(
        covered >= 400,
        "{covered} records at or below the backup's height"
    );

    // The disk is lost.
    drop(node);
    std::fs::remove_dir_all(&dir).unwrap();

    let (ok, out, err) = verify_backup(identity.as_os_str(), dest.as_os_str());
    assert!(ok, "{err}");
    let v = json_line(&out);
    assert_eq!(v["height"].as_u64(), Some(height), "{v}");
    assert!(out.contains("backup OK"), "{out}");

    let (ok, out, err) = restore_backup(identity.as_os_str(), dest.as_os_str(), dir.as_os_str());
    assert!(ok, "{err}");
    assert_eq!(json_line(&out)["height"].as_u64(), Some(height));
    let v = medledger(&["verify"], &dir);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));

    let node = start(&dir);
    rt.block_on(async {
        client(&node, &dir).await;
        let h = http(&node, &dir);
        // Sign-in works for an account created before the backup (password and second
        // factor), and its API token still opens the FHIR API.
        let (s, v) = h
            .login("dana@hospital.example", STRONG, Some(&code_at(&secret, 30)))
            .await
            .unwrap_or_else(|e| panic!("sign-in after restore: {e:?}"));
        assert_ne!(v["mfa_setup_required"], true);
        drop(s);
        let f = Fhir::new(&h, token.clone());
        let acked = acked.lock().unwrap().clone();
        for (id, written) in &acked {
            let (st, got) = f.get(&format!("/Observation/{id}")).await;
            if heights[id] <= height {
                assert_eq!(st, 200, "{id} (height {}) lost: {got}", heights[id]);
                assert_eq!(&got, written, "{id} reads back different content");
            } else {
                assert_eq!(st, 404, "{id} committed after the backup yet is there");
            }
        }
        // Every grant acknowledged at or below the backup's height is on the restored
        // ledger, none after it.
        for (hash, at) in &granted {
            let (st, v) = h.get_as_admin(&dir, &format!("/v1/tx/{hash}")).await;
            if *at <= height {
                assert_eq!(st, 200, "grant {hash} (height {at}) lost: {v}");
                assert_eq!(v["height"].as_u64(), Some(*at));
            } else {
                assert_eq!(
                    st, 404,
                    "grant {hash} committed after the backup yet is there"
                );
            }
        }
        // Search knows exactly the restored records.
        let found = search_ids(
            &f,
            &format!("/Observation?patient=Patient/{pid}&_count=500"),
        )
        .await;
        for id in &found {
            assert!(heights.get(id).is_some_and(|h| *h <= height), "{id} found");
        }
        let found = found.len();
        assert_eq!(
            found, covered,
            "search finds {found} of {covered} restored records ({after} were after the backup)"
        );
        // The restored node goes on writing.
        let (st, o) = f.post("/Observation", &obs(&pid, 1.0)).await;
        assert_eq!(st, 201, "{o}");
    });
    node.stop();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn flip_byte(path: &Path, at: usize) {
    let mut b = std::fs::read(path).unwrap();
    b[at] ^= 0x01;
    std::fs::write(path, b).unwrap();
}

#[test]
fn damaged_backups_are_refused_by_verify_and_restore_naming_what_is_wrong() {
    let root = tempfile::tempdir().unwrap();
    let (identity, recipient) = keygen(root.path(), "id.txt");
    let (stranger, _) = keygen(root.path(), "someone-else.txt");
    // A node with no recipients cannot take a backup, and says how to set them.
    let bare = root.path().join("bare");
    std::fs::create_dir(&bare).unwrap();
    let bare_dir = init(&bare);
    let (ok, _, err) = create_backup(bare_dir.as_os_str(), root.path().join("x").as_os_str());
    assert!(!ok && err.contains("no backup recipients"), "{err}");
    // Nor into its own data directory.
    let dir = init_with(root.path(), &["--backup-recipient", &recipient]);
    let (ok, _, err) = create_backup(dir.as_os_str(), dir.join("b").as_os_str());
    assert!(
        !ok && err.contains("must not be inside the data directory"),
        "{err}"
    );

    let node = start(&dir);
    let rt = rt();
    rt.block_on(async {
        let (f, _, pid) = doctor_with_patient(&node, &dir, "Damaged").await;
        let pid = pid.as_str();
        for i in 0..20 {
            let (st, o) = f.post("/Observation", &obs(pid, i as f64)).await;
            assert_eq!(st, 201, "{o}");
        }
    });
    node.stop();
    // The node is stopped: the CLI takes the backup itself.
    let good = root.path().join("good");
    let (ok, out, err) = create_backup(dir.as_os_str(), good.as_os_str());
    assert!(ok, "{err}");
    let name = json_line(&out)["backup"].as_str().unwrap().to_owned();
    let (ok, _, err) = verify_backup(identity.as_os_str(), good.as_os_str());
    assert!(ok, "{err}");

    type Damage = Box<dyn Fn(&Path)>;
    let missing = format!("blobs/{name}.age is missing");
    let n = name.clone();
    let cases: Vec<(&str, Damage, &Path, &str)> = vec![
        (
            "flipped byte in the state file",
            Box::new(move |d: &Path| flip_byte(&d.join(&n).join("state.age"), 5000)),
            &identity,
            "state.age does not match its SHA-256",
        ),
        (
            "missing blob file",
            Box::new({
                let n = name.clone();
                move |d: &Path| {
                    std::fs::remove_file(d.join("blobs").join(format!("{n}.age"))).unwrap()
                }
            }),
            &identity,
            &missing,
        ),
        (
            "truncated blob file",
            Box::new({
                let n = name.clone();
                move |d: &Path| {
                    let p = d.join("blobs").join(format!("{n}.age"));
                    let len = std::fs::metadata(&p).unwrap().len();
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .unwrap()
                        .set_len(len - 100)
                        .unwrap();
                }
            }),
            &identity,
            "is truncated",
        ),
        (
            "manifest edited",
            Box::new({
                let n = name.clone();
                move |d: &Path| {
                    let p = d.join(&n).join("manifest.json");
                    let mut m: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
                    m["height"] = json!(m["height"].as_u64().unwrap() + 1);
                    std::fs::write(&p, serde_json::to_vec(&m).unwrap()).unwrap();
                }
            }),
            &identity,
            "signature does not check",
        ),
        (
            "missing manifest",
            Box::new({
                let n = name.clone();
                move |d: &Path| std::fs::remove_file(d.join(&n).join("manifest.json")).unwrap()
            }),
            &identity,
            "holds no backup",
        ),
        (
            "wrong key",
            Box::new(|_: &Path| {}),
            &stranger,
            "none of the identities opens",
        ),
    ];
    for (i, (what, damage, key, expect)) in cases.iter().enumerate() {
        let copy = root.path().join(format!("damaged-{i}"));
        copy_dir(&good, &copy);
        damage(&copy);
        let (ok, _, err) = verify_backup(key.as_os_str(), copy.as_os_str());
        assert!(!ok, "{what}: verify passed");
        assert!(err.contains(expect), "{what}: verify said {err}");
        let target = root.path().join(format!("restored-{i}"));
        let (ok, _, err) = restore_backup(key.as_os_str(), copy.as_os_str(), target.as_os_str());
        assert!(!ok, "{what}: restore passed");
        assert!(err.contains(expect), "{what}: restore said {err}");
        // What a refused restore left (if anything) is never served.
        if target.join("genesis.json").exists() {
            let out = Command::new(BIN)
                .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
                .arg(&target)
                .output()
                .unwrap();
            assert!(
                !out.status.success(),
                "{what}: a node started on a refused restore"
            );
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("did not finish"), "{what}: serve said {err}");
        }
    }
    // A backup of another chain (here: one that claims another genesis) is refused when
    // the operator names theirs; named correctly, it passes.
    let genesis: Value =
        serde_json::from_slice(&std::fs::read(good.join(&name).join("manifest.json")).unwrap())
            .unwrap();
    let genesis = genesis["genesis_hash"].as_str().unwrap();
    let (ok, _, err) = backup(&[
        os("verify"),
        os("--identity"),
        identity.as_os_str(),
        os("--genesis"),
        os(&"ab".repeat(32)),
        good.as_os_str(),
    ]);
    assert!(!ok && err.contains("not the expected"), "{err}");
    let (ok, _, err) = backup(&[
        os("verify"),
        os("--identity"),
        identity.as_os_str(),
        os("--genesis"),
        os(genesis),
        good.as_os_str(),
    ]);
    assert!(ok, "{err}");
    // A backup directory renamed (an older manifest copied over a newer one's place).
    let renamed = root.path().join("renamed");
    copy_dir(&good, &renamed);
    std::fs::rename(renamed.join(&name), renamed.join("backup-9999999999999")).unwrap();
    let (ok, _, err) = verify_backup(identity.as_os_str(), renamed.as_os_str());
    assert!(!ok && err.contains("but it lies in"), "{err}");
    // Undamaged, the same backup restores and verifies.
    let target = root.path().join("restored-good");
    let (ok, _, err) = restore_backup(identity.as_os_str(), good.as_os_str(), target.as_os_str());
    assert!(ok, "{err}");
    assert!(!target.join("restore-incomplete").exists());
    let v = medledger(&["verify"], &target);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    // Restoring over a directory that holds anything is refused.
    let (ok, _, err) = restore_backup(identity.as_os_str(), good.as_os_str(), target.as_os_str());
    assert!(!ok && err.contains("is not empty"), "{err}");
}

/// A record erased after the backup does not come back with it: the erasure is in
/// the journal (on another disk) before it is acknowledged, and the restore shreds it.
#[test]
fn a_record_erased_after_the_backup_stays_erased_after_a_restore() {
    let root = tempfile::tempdir().unwrap();
    let (identity, recipient) = keygen(root.path(), "id.txt");
    let dir = init_with(root.path(), &["--backup-recipient", &recipient]);
    let pw = root.path().join("pw");
    let pw = pw.to_str().unwrap();
    let other_disk = root.path().join("other-disk");
    std::fs::create_dir(&other_disk).unwrap();
    let journal = other_disk.join("erasures.jsonl");
    let j = journal.to_str().unwrap();
    // A journal on the data directory's own disk would be lost with it.
    let inside = dir.join("erasures.jsonl");
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--erasure-journal"])
        .arg(&inside)
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("inside the data directory"));

    let node = start_with(&dir, &["--erasure-journal", j]);
    let rt = rt();
    let h = medledger_node::client::http_client(Some(&dir.join("tls/cert.pem"))).unwrap();
    rt.block_on(client(&node, &dir));
    let admin_did = admin(&dir).account().to_did();
    let (ok, out) = submit_json(
        &dir,
        &node,
        pw,
        &format!(r#"{{"kind":"add_org","org":"general","admin":"{admin_did}"}}"#),
    );
    assert!(ok, "{out}");
    let patient = ed25519_dalek::SigningKey::from_bytes(&[41; 32]);
    let did = medledger_core::AccountId(patient.verifying_key().to_bytes()).to_did();
    let (code, body) = rt.block_on(self_custody(&h, &node.url, &patient,
        json!({"kind": "register", "org": "general", "role": "patient", "encryption_key": hex::encode([7u8; 32])})));
    assert_eq!(code, 200, "{body}");
    let (ok, out) = submit_json(
        &dir,
        &node,
        pw,
        &format!(r#"{{"kind":"approve_registration","account":"{did}"}}"#),
    );
    assert!(ok, "{out}");
    // Two records with synthetic content in the node's record store.
    let mut records = Vec::new();
    for i in 0..2 {
        let file = root.path().join(format!("note-{i}.txt"));
        std::fs::write(
            &file,
            format!("synthetic clinical note {i} for the restore test"),
        )
        .unwrap();
        let (ok, out) = cli_raw(&[
            "blob",
            "put",
            file.to_str().unwrap(),
            "--data-dir",
            dir.to_str().unwrap(),
            "--password-file",
            pw,
        ]);
        assert!(ok, "{out}");
        let receipt: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        let (code, body) = rt.block_on(self_custody(&h, &node.url, &patient,
            json!({"kind": "add_record", "patient": did, "category": "DocumentReference", "cid": receipt["cid"],
                   "content_hash": receipt["content_hash"], "size": receipt["stored_bytes"]})));
        assert_eq!(code, 200, "{body}");
        records.push((
            body["hash"].as_str().unwrap().to_owned(),
            receipt["cid"]
                .as_str()
                .unwrap()
                .parse::<medledger_core::Cid>()
                .unwrap(),
        ));
    }
    let dest = root.path().join("backups");
    let (ok, _, err) = create_backup(dir.as_os_str(), dest.as_os_str());
    assert!(ok, "{err}");

    // After the backup, the patient erases the first record. Once acknowledged, the
    // journal already names it.
    let (erased, erased_cid) = records[0].clone();
    let (kept, kept_cid) = records[1].clone();
    let (code, body) = rt.block_on(self_custody(
        &h,
        &node.url,
        &patient,
        json!({"kind": "request_erasure", "target": {"type": "record", "record": erased}}),
    ));
    assert_eq!(code, 200, "{body}");
    let text = std::fs::read_to_string(&journal).unwrap();
    assert!(
        text.contains(&erased) && text.contains(&erased_cid.to_string()),
        "journal: {text}"
    );
    assert!(
        !text.contains(&kept),
        "journal names a record nobody erased"
    );

    // The disk is lost.
    drop(node);
    std::fs::remove_dir_all(&dir).unwrap();
    let present = |d: &Path, c: &medledger_core::Cid| {
        medledger_store::find_stored(&d.join("blobs"), c)
            .unwrap()
            .is_some()
            || medledger_store::find_envelopes(&d.join("blobs"), c)
                .unwrap()
                .is_some()
    };
    // Without the journal the backup would bring the erased record back.
    let without = root.path().join("without-journal");
    let (ok, _, err) = restore_backup(identity.as_os_str(), dest.as_os_str(), without.as_os_str());
    assert!(ok, "{err}");
    assert!(
        present(&without, &erased_cid),
        "the backup did not hold the record"
    );

    let (ok, out, err) = backup(&[
        os("restore"),
        os("--identity"),
        identity.as_os_str(),
        dest.as_os_str(),
        os("--data-dir"),
        dir.as_os_str(),
        os("--erasure-journal"),
        journal.as_os_str(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(json_line(&out)["shredded"].as_u64(), Some(1), "{out}");
    assert!(
        !present(&dir, &erased_cid),
        "the erased record's blob came back"
    );
    assert!(present(&dir, &kept_cid));

    // The restored node serves the kept record and not the erased one.
    let node = start_with(&dir, &["--erasure-journal", j]);
    rt.block_on(client(&node, &dir));
    let get = |cid: &medledger_core::Cid| {
        let back = root.path().join(format!("back-{cid}"));
        cli_raw(&[
            "blob",
            "get",
            &cid.to_string(),
            "--out",
            back.to_str().unwrap(),
            "--data-dir",
            dir.to_str().unwrap(),
            "--password-file",
            pw,
        ])
    };
    let (ok, out) = get(&erased_cid);
    assert!(!ok && out.contains("erased"), "{out}");
    let (ok, out) = get(&kept_cid);
    assert!(ok, "{out}");
    node.stop();
    // A start with the journal on a node restored without it shreds before serving.
    let node = start_with(&without, &["--erasure-journal", j]);
    node.stop();
    assert!(
        !present(&without, &erased_cid),
        "a start with the journal did not shred"
    );
}

/// `serve --backup-every`: backups are taken on their own, old ones are pruned with
/// the blob files no kept backup needs, and `/metrics` and the admin's page show the
/// last successful one.
#[test]
fn scheduled_backups_are_taken_pruned_and_shown() {
    let root = tempfile::tempdir().unwrap();
    let (identity, recipient) = keygen(root.path(), "id.txt");
    let dir = init_with(root.path(), &["--backup-recipient", &recipient]);
    let dest = root.path().join("scheduled");
    let d = dest.to_str().unwrap();
    // A schedule that could never succeed is refused before the node serves.
    let out = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--backup-every",
            "1s",
            "--backup-to",
        ])
        .arg(dir.join("inside"))
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must not be inside the data directory"));

    let node = start_with(
        &dir,
        &[
            "--backup-to",
            d,
            "--backup-every",
            "1s",
            "--backup-keep",
            "2",
        ],
    );
    let rt = rt();
    let (manifests, metrics, page) = rt.block_on(async {
        let (f, admin, pid) = doctor_with_patient(&node, &dir, "Scheduled").await;
        let h = http(&node, &dir);
        // Writes between backups, so each has something new; wait for four of them.
        let mut taken = 0;
        for i in 0..600 {
            let (st, o) = f.post("/Observation", &obs(&pid, i as f64)).await;
            assert_eq!(st, 201, "{o}");
            tokio::time::sleep(Duration::from_millis(20)).await;
            taken = backups_taken(&h, &node).await;
            if taken >= 4 {
                break;
            }
        }
        assert!(taken >= 4, "only {taken} scheduled backups");
        // The portal's admin page shows the last one.
        let page =
            h.c.get(format!("{}/admin", node.url))
                .header("cookie", &admin.cookie)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
        let metrics = metrics(&h, &node).await;
        (medledger_node::backup::list(&dest).unwrap(), metrics, page)
    });
    node.stop();
    // Pruned to the newest two (a third may have been written after the last prune).
    assert!((2..=3).contains(&manifests.len()), "{manifests:?}");
    let newest: Value = serde_json::from_slice(
        &std::fs::read(dest.join(manifests.last().unwrap()).join("manifest.json")).unwrap(),
    )
    .unwrap();
    let height = newest["height"].as_u64().unwrap();
    let gauge = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    assert!(gauge("medledger_backup_last_height") as u64 >= height.saturating_sub(1000));
    assert!(gauge("medledger_backup_last_success_timestamp_seconds") > 1.7e9);
    assert!(
        page.contains("Last successful backup"),
        "admin page: no backup status"
    );
    assert!(
        page.contains("Scheduled every 1s, keeping the newest 2"),
        "admin page"
    );
    // Every blob file a kept backup lists is there; no other blob file is.
    let mut listed = std::collections::BTreeSet::new();
    for n in &manifests {
        let m: Value =
            serde_json::from_slice(&std::fs::read(dest.join(n).join("manifest.json")).unwrap())
                .unwrap();
        for f in m["files"].as_array().unwrap() {
            let p = f["path"].as_str().unwrap();
            assert!(dest.join(p).exists(), "{p} pruned but still needed");
            if p.starts_with("blobs/") {
                listed.insert(p.to_owned());
            }
        }
    }
    for e in std::fs::read_dir(dest.join("blobs")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".age") {
            assert!(
                listed.contains(&format!("blobs/{name}")),
                "{name} kept but no backup needs it"
            );
        }
    }
    // And the newest scheduled backup restores.
    let target = root.path().join("restored");
    let (ok, _, err) = restore_backup(identity.as_os_str(), dest.as_os_str(), target.as_os_str());
    assert!(ok, "{err}");
}

/// The same to and from an S3-compatible bucket (a local `moto` server): the second
/// backup copies only what is new, and a node whose disk is lost is restored from the
/// bucket alone.
#[test]
fn backups_in_a_bucket_are_incremental_and_restore_a_lost_node() {
    let (_moto, endpoint) = start_moto();
    let rt = rt();
    rt.block_on(async {
        medledger_node::install_crypto_provider();
        let r = reqwest::Client::new()
            .put(format!("{endpoint}/hospital-backups"))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    });
    let bucket = format!("s3://hospital-backups/node-1?endpoint={endpoint}");
    let root = tempfile::tempdir().unwrap();
    let (identity, recipient) = keygen(root.path(), "id.txt");
    let dir = init_with(root.path(), &["--backup-recipient", &recipient]);
    let node = start(&dir);
    let (token, written) = rt.block_on(async {
        let (f, _, pid) = doctor_with_patient(&node, &dir, "Bucketova").await;
        let token = f.token.clone();
        let mut written = Vec::new();
        for i in 0..20 {
            let (st, o) = f.post("/Observation", &obs(&pid, i as f64)).await;
            assert_eq!(st, 201, "{o}");
            written.push(o);
        }
        (token, (pid, written))
    });
    let (ok, out, err) = create_backup(dir.as_os_str(), os(&bucket));
    assert!(ok, "{err}");
    let first = json_line(&out);
    let mut written = written;
    rt.block_on(async {
        let h = http(&node, &dir);
        let f = Fhir::new(&h, token.clone());
        for i in 0..5 {
            let (st, o) = f
                .post("/Observation", &obs(&written.0, 100.0 + i as f64))
                .await;
            assert_eq!(st, 201, "{o}");
            written.1.push(o);
        }
    });
    let (ok, out, err) = create_backup(dir.as_os_str(), os(&bucket));
    assert!(ok, "{err}");
    let second = json_line(&out);
    assert_eq!(second["blobs_new"].as_u64(), Some(5), "{first} {second}");
    assert_eq!(
        second["blobs"].as_u64(),
        Some(first["blobs"].as_u64().unwrap() + 5)
    );

    drop(node);
    std::fs::remove_dir_all(&dir).unwrap();
    let (ok, out, err) = verify_backup(identity.as_os_str(), os(&bucket));
    assert!(ok, "{err}");
    assert_eq!(json_line(&out)["height"], second["height"]);
    let (ok, _, err) = restore_backup(identity.as_os_str(), os(&bucket), dir.as_os_str());
    assert!(ok, "{err}");
    let node = start(&dir);
    rt.block_on(async {
        client(&node, &dir).await;
        let h = http(&node, &dir);
        let f = Fhir::new(&h, token);
        for o in &written.1 {
            let (st, got) = f
                .get(&format!("/Observation/{}", o["id"].as_str().unwrap()))
                .await;
            assert_eq!(st, 200, "{got}");
            assert_eq!(&got, o);
        }
    });
    node.stop();

    // Scheduled backups into a bucket, with retention there.
    let scheduled = format!("s3://hospital-backups/scheduled?endpoint={endpoint}");
    let node = start_with_env(
        &dir,
        &[
            "--backup-to",
            &scheduled,
            "--backup-every",
            "1s",
            "--backup-keep",
            "2",
        ],
        &[
            ("MEDLEDGER_S3_ACCESS_KEY_ID", "testing"),
            ("MEDLEDGER_S3_SECRET_ACCESS_KEY", "testing"),
        ],
    );
    let listing = rt.block_on(async {
        client(&node, &dir).await;
        let h = http(&node, &dir);
        let mut taken = 0;
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            taken = backups_taken(&h, &node).await;
            if taken >= 4 {
                break;
            }
        }
        assert!(taken >= 4, "only {taken} scheduled backups into the bucket");
        reqwest::Client::new()
            .get(format!(
                "{endpoint}/hospital-backups?list-type=2&prefix=scheduled/"
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    node.stop();
    let manifests = listing.matches("/manifest.json</Key>").count();
    assert!(
        (2..=3).contains(&manifests),
        "{manifests} backups kept in the bucket: {listing}"
    );
    let (ok, _, err) = verify_backup(identity.as_os_str(), os(&scheduled));
    assert!(ok, "{err}");

    // A bucket that holds no backup says so.
    let empty = format!("s3://hospital-backups/nothing-here?endpoint={endpoint}");
    let (ok, _, err) = verify_backup(identity.as_os_str(), os(&empty));
    assert!(!ok && err.contains("holds no backup"), "{err}");
}
