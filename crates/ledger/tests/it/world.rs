//! A consortium on a real ledger (redb in a temp dir) for the contract tests: named
//! actors with their own keys and nonces, transactions applied one block at a time at
//! a chosen block time, and the whole state readable for no-change assertions.

use ed25519_dalek::SigningKey;
use medledger_core::genesis::{GENESIS_VERSION, GenesisNode};
use medledger_core::tx::TX_VERSION;
use medledger_core::*;
use medledger_ledger::contracts::query;
use medledger_ledger::store::Batch;
use medledger_ledger::{ApplyDurability, Ledger, StateRead};
use std::collections::{BTreeMap, HashMap};

pub const T0: u64 = 1_800_000_000_000;
pub const HOUR: u64 = 3_600_000;

pub struct World {
    _dir: tempfile::TempDir,
    pub ledger: Ledger,
    pub genesis: Genesis,
    keys: HashMap<String, SigningKey>,
    nonces: HashMap<AccountId, u64>,
    pub now: u64,
    seed: u8,
}

fn key_from(seed: u8, name: &str) -> SigningKey {
    // Deterministic keys so two worlds built alike are byte-identical.
    let mut b = [seed; 32];
    for (i, c) in name.bytes().enumerate() {
        b[i % 32] ^= c.wrapping_mul(31).wrapping_add(i as u8);
    }
    SigningKey::from_bytes(&b)
}

impl World {
    pub fn new(params: impl FnOnce(AccountId) -> ContractParams) -> World {
        Self::with_seed(7, params)
    }

    pub fn with_seed(seed: u8, params: impl FnOnce(AccountId) -> ContractParams) -> World {
        let dir = tempfile::tempdir().unwrap();
        let admin = key_from(seed, "admin");
        let node = key_from(seed, "node");
        let admin_id = AccountId(admin.verifying_key().to_bytes());
        let genesis = Genesis {
            version: GENESIS_VERSION,
            chain_id: ChainId::new("contracts").unwrap(),
            created_ms: T0 - HOUR,
            admin: admin_id,
            admin_encryption_key: Digest32([1; 32]),
            nodes: vec![GenesisNode {
                id: 1,
                key: NodeKey(node.verifying_key().to_bytes()),
            }],
            params: params(admin_id),
        };
        let ledger = Ledger::open(
            &dir.path().join("ledger.redb"),
            genesis.clone(),
            NodeSigner::new(node.clone()),
            1,
        )
        .unwrap();
        let mut keys = HashMap::new();
        keys.insert("admin".to_string(), admin);
        keys.insert("node".to_string(), node);
        World {
            _dir: dir,
            ledger,
            genesis,
            keys,
            nonces: HashMap::new(),
            now: T0,
            seed,
        }
    }

    pub fn key(&mut self, name: &str) -> SigningKey {
        let seed = self.seed;
        self.keys
            .entry(name.to_string())
            .or_insert_with(|| key_from(seed, name))
            .clone()
    }

    pub fn id(&mut self, name: &str) -> AccountId {
        AccountId(self.key(name).verifying_key().to_bytes())
    }

    /// Signs `payload` as `name` with its next nonce.
    pub fn sign(&mut self, name: &str, payload: Payload) -> (Vec<u8>, TxHash) {
        let key = self.key(name);
        let id = AccountId(key.verifying_key().to_bytes());
        let nonce = self.ledger_nonce(&id) + 1;
        let body = TxBody {
            version: TX_VERSION,
            chain_id: self.genesis.chain_id.clone(),
            signer: id,
            nonce,
            payload,
        };
        self.nonces.insert(id, nonce);
        let hash = body.hash();
        (body.sign(&key).to_bytes(), hash)
    }

    /// Forgets nonces handed out since the last apply (for txs that were never applied).
    pub fn forget_nonces(&mut self) {
        self.nonces.clear();
    }

    fn ledger_nonce(&self, id: &AccountId) -> u64 {
        self.nonces.get(id).copied().unwrap_or_else(|| {
            self.ledger
                .account(id)
                .unwrap()
                .map(|a| a.nonce)
                .unwrap_or(0)
        })
    }

    /// Applies txs as one block at `self.now`; returns one result per tx.
    pub fn apply(&mut self, txs: &[Vec<u8>]) -> Vec<Result<TxHash, RejectReason>> {
        let out = self
            .ledger
            .apply(
                &[Batch {
                    time_ms: self.now,
                    txs,
                }],
                &[],
                ApplyDurability::Deferred,
            )
            .unwrap()
            .remove(0);
        self.nonces.clear();
        out.txs
            .into_iter()
            .map(|o| o.result.map(|_| o.hash.unwrap()))
            .collect()
    }

    /// One transaction in its own block.
    pub fn submit(&mut self, name: &str, payload: Payload) -> Result<TxHash, RejectReason> {
        let (bytes, _) = self.sign(name, payload);
        self.apply(&[bytes]).remove(0)
    }

    #[track_caller]
    pub fn ok(&mut self, name: &str, payload: Payload) -> TxHash {
        let kind = payload.kind();
        match self.submit(name, payload) {
            Ok(h) => h,
            Err(e) => panic!("{name} {kind}: {e}"),
        }
    }

    /// Submits and expects a rejection with `code`; asserts nothing changed.
    #[track_caller]
    pub fn rejected(&mut self, name: &str, payload: Payload, code: &str) -> RejectReason {
        let before = self.dump();
        let tip = self.ledger.tip();
        let kind = payload.kind();
        let err = match self.submit(name, payload) {
            Ok(_) => panic!("{name} {kind}: accepted, expected {code}"),
            Err(e) => e,
        };
        assert_eq!(err.code(), code, "{name} {kind}: {err}");
        assert_eq!(self.ledger.tip(), tip, "{name} {kind}: a block was made");
        assert!(self.dump() == before, "{name} {kind}: state changed");
        err
    }

    /// The whole committed state.
    pub fn dump(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        self.ledger
            .state()
            .unwrap()
            .scan(b"")
            .unwrap()
            .into_iter()
            .collect()
    }

    pub fn can(
        &mut self,
        who: &str,
        record: &RecordId,
        purpose: Purpose,
    ) -> medledger_ledger::Decision {
        let id = self.id(who);
        medledger_ledger::contracts::can(
            &self.ledger.state().unwrap(),
            &id,
            record,
            purpose,
            self.now,
        )
        .unwrap()
    }

    pub fn balance(&mut self, who: &str) -> u64 {
        let id = self.id(who);
        query::account(&self.ledger.state().unwrap(), &id)
            .unwrap()
            .map(|a| a.balance)
            .unwrap_or(0)
    }

    /// Money conservation: every unit minted is in a balance, the fee pool or escrow.
    pub fn assert_conserved(&self) {
        let s = self.ledger.state().unwrap();
        let t = query::totals(&s).unwrap();
        let sum = query::balances_sum(&s).unwrap();
        assert_eq!(
            sum + t.fees as u128 + t.escrow as u128,
            t.supply as u128,
            "units created or destroyed: {t:?}, balances {sum}"
        );
    }
}

pub fn org() -> OrgId {
    OrgId::new("general").unwrap()
}

pub fn cid(n: u8) -> Cid {
    Cid::of(&[n; 8])
}

pub fn add_record(patient: AccountId, category: &str, n: u8) -> Payload {
    Payload::AddRecord {
        patient,
        category: Category::new(category).unwrap(),
        cid: cid(n),
        content_hash: Digest32([n; 32]),
        size: 100 + n as u64,
    }
}

pub const CLINICAL: [(&str, Role); 7] = [
    ("patient", Role::Patient),
    ("patient2", Role::Patient),
    ("doctor", Role::Doctor),
    ("nurse", Role::Nurse),
    ("researcher", Role::Researcher),
    ("insurer", Role::Insurer),
    ("auditor", Role::Auditor),
];

/// The standard consortium: org `general` with an admin, two patients and one of each
/// role, a pending registrant, an account with no role, and 100 units each. The
/// registration fee is 1, so the fee pool holds what approvals charged.
pub fn standard(fee: u64, retention: Vec<RetentionRule>) -> World {
    let mut w = World::new(|admin| ContractParams {
        registration_fee: fee,
        fee_owner: admin,
        break_glass_ms: 24 * HOUR,
        retention,
    });
    let orgadmin = w.id("orgadmin");
    w.ok(
        "admin",
        Payload::RegisterAccount {
            account: orgadmin,
            encryption_key: Digest32([3; 32]),
        },
    );
    w.ok(
        "admin",
        Payload::AddOrg {
            org: org(),
            admin: orgadmin,
        },
    );
    for (name, role) in CLINICAL {
        w.ok(
            name,
            Payload::Register {
                org: org(),
                role,
                encryption_key: Digest32([9; 32]),
            },
        );
        let id = w.id(name);
        if fee > 0 {
            w.ok(
                "admin",
                Payload::Mint {
                    to: id,
                    amount: fee,
                },
            );
        }
        // Auditors oversee the whole consortium: only its admin makes them.
        let approver = if role == Role::Auditor {
            "admin"
        } else {
            "orgadmin"
        };
        w.ok(approver, Payload::ApproveRegistration { account: id });
    }
    w.ok(
        "pending",
        Payload::Register {
            org: org(),
            role: Role::Doctor,
            encryption_key: Digest32([9; 32]),
        },
    );
    let outsider = w.id("outsider");
    w.ok(
        "admin",
        Payload::RegisterAccount {
            account: outsider,
            encryption_key: Digest32([4; 32]),
        },
    );
    for name in [
        "admin",
        "orgadmin",
        "patient",
        "patient2",
        "doctor",
        "nurse",
        "researcher",
        "insurer",
        "auditor",
        "pending",
        "outsider",
    ] {
        let id = w.id(name);
        w.ok(
            "admin",
            Payload::Mint {
                to: id,
                amount: 100,
            },
        );
    }
    w
}
