//! Helpers shared by the end-to-end tests: the real binary, a data dir, a node on
//! 127.0.0.1 with a free port, and a client that trusts its self-signed certificate.
#![allow(dead_code)]

pub mod fhir;
pub mod signin;

use medledger_core::tx::TX_VERSION;
use medledger_core::{ChainId, Payload, TxBody};
use medledger_node::client::Client;
use medledger_node::keystore::{AccountKeys, KeystoreFile};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_medledger");

pub fn medledger(args: &[&str], dir: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("run medledger")
}

/// Runs a command that must succeed; its stderr is the failure message.
pub fn succeed(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs the binary; whether it succeeded, and its stdout and stderr together.
pub fn cli_raw(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

pub fn init(root: &Path) -> PathBuf {
    init_with(root, &[])
}

/// As [`init`], with extra `init` flags (contract parameters).
pub fn init_with(root: &Path, extra: &[&str]) -> PathBuf {
    let dir = root.join("data");
    let pw = root.join("pw");
    std::fs::write(&pw, "a long enough test password").unwrap();
    succeed(
        Command::new(BIN)
            .args(["init", "--chain-id", "e2e-chain", "--password-file"])
            .arg(&pw)
            .args(extra)
            .arg("--data-dir")
            .arg(&dir),
    );
    dir
}

pub struct Node {
    pub child: Child,
    pub url: String,
}

impl Node {
    /// Graceful stop (SIGTERM): the node flushes its ledger file before exiting.
    pub fn stop(mut self) {
        let st = Command::new("kill")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(st.success());
        let code = self.child.wait().unwrap();
        assert!(code.success(), "node exited with {code}");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(dir: &Path) -> Node {
    start_with(dir, &[])
}

/// Starts a node with extra `serve` flags.
pub fn start_with(dir: &Path, extra: &[&str]) -> Node {
    start_with_env(dir, extra, &[])
}

/// Starts a node with extra `serve` flags and environment variables.
pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Node {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra)
        .arg("--data-dir")
        .arg(dir)
        .envs(env.iter().copied())
        .env("MEDLEDGER_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(url.starts_with("https://"), "node did not start: {line:?}");
    Node { child, url }
}

/// A client for the node, signing its requests as the consortium admin (who oversees
/// the ledger: `/v1` queries answer only identified callers).
pub async fn client(node: &Node, dir: &Path) -> Client {
    let c = Client::new(&node.url, Some(&dir.join("tls/cert.pem")))
        .unwrap()
        .signed_by(admin(dir));
    c.wait_ready(Duration::from_secs(30)).await.unwrap();
    c
}

pub fn admin(dir: &Path) -> AccountKeys {
    KeystoreFile::read(&dir.join("admin.keystore.json"))
        .unwrap()
        .open(b"a long enough test password")
        .unwrap()
}

/// The `Authorization` value of a GET of `path` signed by the consortium admin, who
/// oversees the ledger (the `/v1` queries answer only identified callers).
pub fn admin_auth(dir: &Path, path: &str) -> String {
    medledger_node::client::request_authorization(&admin(dir), "GET", path)
}

pub fn sign(keys: &AccountKeys, chain: &str, nonce: u64, payload: Payload) -> Vec<u8> {
    TxBody {
        version: TX_VERSION,
        chain_id: ChainId::new(chain).unwrap(),
        signer: keys.account(),
        nonce,
        payload,
    }
    .sign(&keys.signing)
    .to_bytes()
}

/// A multi-threaded runtime for tests that drive the node with async clients.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Submits a JSON payload signed by the consortium admin through the CLI.
pub fn submit_json(dir: &Path, node: &Node, pw: &str, payload: &str) -> (bool, String) {
    let d = dir.to_str().unwrap();
    cli_raw(&[
        "tx",
        "submit",
        "--node",
        &node.url,
        "--data-dir",
        d,
        "--password-file",
        pw,
        "json",
        payload,
    ])
}

/// prepare → sign locally → submit, as a client holding its own key would.
pub async fn self_custody(
    h: &reqwest::Client,
    url: &str,
    key: &ed25519_dalek::SigningKey,
    payload: serde_json::Value,
) -> (u16, serde_json::Value) {
    use base64::Engine as _;
    use ed25519_dalek::Signer as _;
    let did = medledger_core::AccountId(key.verifying_key().to_bytes()).to_did();
    let prep: serde_json::Value = h
        .post(format!("{url}/v1/tx/prepare"))
        .json(&serde_json::json!({ "signer": did, "payload": payload }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hash =
        medledger_core::Digest32::from_hex(prep["hash"].as_str().expect("prepared")).unwrap();
    let mut tx = base64::engine::general_purpose::STANDARD
        .decode(prep["body"].as_str().unwrap())
        .unwrap();
    tx.extend_from_slice(&key.sign(&hash.0).to_bytes());
    let r = h
        .post(format!("{url}/v1/tx"))
        .json(&serde_json::json!({ "tx": base64::engine::general_purpose::STANDARD.encode(tx) }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// A local S3-compatible server (PyPI `moto`) on 127.0.0.1, stopped when dropped.
pub struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `moto_server` on a free port; its URL.
pub fn start_moto() -> (Moto, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server (pip install 'moto[server]') must be installed");
    let guard = Moto(child);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (guard, format!("http://127.0.0.1:{port}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("moto_server did not start");
}
