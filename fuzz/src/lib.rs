//! Shared by the fuzz targets: fixed keys, and seed inputs built with the project's own
//! encoders, so the seeds stay valid when a format changes.
//!
//! Each target calls [`write_seeds`] from its libFuzzer `init` block. When the
//! environment variable `MEDLEDGER_FUZZ_SEEDS` names a directory, the seeds are written
//! there (as `seed-<name>`) before libFuzzer reads its corpus directories; `run.sh`
//! points it at the target's corpus. Without the variable nothing is written.

use medledger_core::{ChainId, NodeSigner};

/// The chain id the tx target checks against (seeds are signed for it).
pub const CHAIN: &str = "medledger-fuzz";
/// The key blobs are opened with (seeds are sealed under it).
pub const BLOB_KEY: [u8; 32] = [7; 32];
/// The password keystores are opened with (the seed keystore is sealed under it).
pub const KEYSTORE_PASSWORD: &[u8] = b"password";

pub fn chain() -> ChainId {
    ChainId::new(CHAIN).expect("valid chain id")
}

/// The node key that signs the checkpoint seeds; the target verifies against it.
pub fn checkpoint_signer() -> NodeSigner {
    NodeSigner::new(ed25519_dalek::SigningKey::from_bytes(&[0x42; 32]))
}

/// Writes `seeds()` into `$MEDLEDGER_FUZZ_SEEDS` if that is set.
pub fn write_seeds(seeds: impl FnOnce() -> Vec<(&'static str, Vec<u8>)>) {
    let Some(dir) = std::env::var_os("MEDLEDGER_FUZZ_SEEDS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).expect("create seed directory");
    for (name, bytes) in seeds() {
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
    }
}

pub mod seeds {
    use super::*;
    use medledger_core::{
        AccessReport, AccountId, Category, Cid, Digest32, OrgId, Payload, Purpose, RecordId,
        RecordWrite, Role, Scope, TxBody,
    };
    use medledger_merkle::Checkpoint;
    use medledger_store::format::{ChunkSealer, Header};

    /// Signed transactions (valid signatures, for [`CHAIN`]) of several payload kinds.
    pub fn tx() -> Vec<(&'static str, Vec<u8>)> {
        let key = ed25519_dalek::SigningKey::from_bytes(&[0x11; 32]);
        let signer = AccountId(key.verifying_key().to_bytes());
        let d = |b: u8| Digest32([b; 32]);
        let payloads = [
            ("anchor", Payload::Anchor { digest: d(9) }),
            (
                "register",
                Payload::Register {
                    org: OrgId::new("st-mary").unwrap(),
                    role: Role::Doctor,
                    encryption_key: d(3),
                },
            ),
            (
                "add-record",
                Payload::AddRecord {
                    patient: signer,
                    category: Category::new("Observation").unwrap(),
                    cid: Cid::of(b"content"),
                    content_hash: d(4),
                    size: 1234,
                },
            ),
            (
                "grant-consent",
                Payload::GrantConsent {
                    grantee: medledger_core::Grantee::Org(OrgId::new("st-mary").unwrap()),
                    scope: Scope::Categories(vec![Category::new("Condition").unwrap()]),
                    purpose: Purpose::Treatment,
                    start_ms: 1,
                    expiry_ms: 2,
                },
            ),
            (
                "report-access",
                Payload::ReportAccess {
                    reports: vec![AccessReport {
                        accessor: signer,
                        record: RecordId(d(5)),
                        purpose: Purpose::Research,
                        time_ms: 7,
                        allowed: false,
                        reason: "no_grant".into(),
                    }],
                },
            ),
            (
                "write-records",
                Payload::WriteRecords {
                    items: vec![
                        RecordWrite::Add {
                            patient: signer,
                            category: Category::new("Patient").unwrap(),
                            cid: Cid::of(b"a"),
                            content_hash: d(6),
                            size: 1,
                        },
                        RecordWrite::Amend {
                            record: RecordId(d(8)),
                            cid: Cid::of(b"b"),
                            content_hash: d(7),
                            size: 2,
                        },
                    ],
                },
            ),
        ];
        payloads
            .into_iter()
            .enumerate()
            .map(|(i, (name, payload))| {
                let tx = TxBody {
                    version: medledger_core::tx::TX_VERSION,
                    chain_id: chain(),
                    signer,
                    nonce: i as u64 + 1,
                    payload,
                }
                .sign(&key);
                (name, tx.to_bytes())
            })
            .collect()
    }

    /// Signed notes: one signature, two signatures, size 0.
    pub fn checkpoint() -> Vec<(&'static str, Vec<u8>)> {
        let signer = checkpoint_signer();
        let other = NodeSigner::new(ed25519_dalek::SigningKey::from_bytes(&[0x43; 32]));
        let cp = Checkpoint {
            origin: format!("medledger/{CHAIN}"),
            size: 12345,
            root: Digest32([0xab; 32]),
        };
        let one = cp.sign("node-1", &signer);
        let mut two = one.clone();
        two.signatures
            .extend(cp.sign("node-2", &other).signatures);
        let empty = Checkpoint {
            origin: format!("medledger/{CHAIN}"),
            size: 0,
            root: Digest32([0; 32]),
        }
        .sign("node-1", &signer);
        vec![
            ("one-sig", one.to_note().into_bytes()),
            ("two-sigs", two.to_note().into_bytes()),
            ("size-0", empty.to_note().into_bytes()),
        ]
    }

    /// Blobs sealed under [`BLOB_KEY`] with small chunk sizes, so a few hundred bytes
    /// span several chunks.
    pub fn blob() -> Vec<(&'static str, Vec<u8>)> {
        let seal = |chunk_size: u32, content: &[u8]| {
            let header = Header {
                chunk_size,
                nonce_prefix: [1, 2, 3, 4, 5, 6, 7],
            };
            let mut out = header.encode().to_vec();
            let mut sealer = ChunkSealer::new(&BLOB_KEY, &header);
            let mut chunks = content.chunks(chunk_size as usize).peekable();
            loop {
                let c = chunks.next().unwrap_or(&[]);
                let mut buf = c.to_vec();
                if chunks.peek().is_none() {
                    sealer.seal_last(&mut buf).unwrap();
                    out.extend_from_slice(&buf);
                    break;
                }
                sealer.seal_next(&mut buf).unwrap();
                out.extend_from_slice(&buf);
            }
            out
        };
        let text: Vec<u8> = (0..100u8).collect();
        vec![
            ("empty", seal(16, b"")),
            ("one-chunk", seal(64, b"hello, record store")),
            ("several-chunks", seal(16, &text)),
            ("exact-multiple", seal(10, &text)),
            ("default-chunk", seal(medledger_store::format::DEFAULT_CHUNK, b"small")),
        ]
    }

    /// A keystore sealed under [`KEYSTORE_PASSWORD`] with KDF parameters small enough
    /// to pass the target's clamp unchanged (so it opens), plus one with the node's
    /// default (OWASP) parameters.
    pub fn keystore() -> Vec<(&'static str, Vec<u8>)> {
        use base64::Engine;
        use base64::engine::general_purpose::STANDARD as B64;
        use chacha20poly1305::aead::{Aead, KeyInit, Payload as AeadPayload};
        let seal = |memory_kib: u32, iterations: u32| {
            let signing = [0x21u8; 32];
            let enc_secret = [0x22u8; 32];
            let account =
                AccountId(ed25519_dalek::SigningKey::from_bytes(&signing).verifying_key().to_bytes());
            let salt = [0x33u8; 16];
            let params = argon2::Params::new(memory_kib, iterations, 1, Some(32)).unwrap();
            let mut key = [0u8; 32];
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into(KEYSTORE_PASSWORD, &salt, &mut key)
                .unwrap();
            let nonce = [0x44u8; 24];
            let mut plain = signing.to_vec();
            plain.extend_from_slice(&enc_secret);
            let aad = account.to_did();
            let ct = chacha20poly1305::XChaCha20Poly1305::new(&key.into())
                .encrypt(
                    &nonce.into(),
                    AeadPayload {
                        msg: &plain,
                        aad: aad.as_bytes(),
                    },
                )
                .unwrap();
            let file = serde_json::json!({
                "version": 1,
                "account": aad,
                "encryption_key": Digest32([0x55; 32]),
                "kdf": {
                    "algorithm": "argon2id",
                    "memory_kib": memory_kib,
                    "iterations": iterations,
                    "parallelism": 1,
                    "salt": B64.encode(salt),
                },
                "cipher": "xchacha20poly1305",
                "nonce": B64.encode(nonce),
                "ciphertext": B64.encode(ct),
            });
            serde_json::to_vec_pretty(&file).unwrap()
        };
        vec![("opens", seal(64, 1)), ("owasp-params", seal(19 * 1024, 2))]
    }
}
