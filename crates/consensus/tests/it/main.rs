//! openraft's own storage conformance suite, run against our redb log store and the
//! ledger-backed state machine.

use ed25519_dalek::SigningKey;
use medledger_consensus::{LogStore, StateMachine, TypeConfig};
use medledger_core::genesis::{GENESIS_VERSION, GenesisNode};
use medledger_core::{AccountId, ChainId, Digest32, Genesis, NodeSigner};
use medledger_ledger::Ledger;
use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        // Every node of a cluster shares one genesis: fixed keys, so snapshots built by
        // one store install into another.
        let node = NodeSigner::new(SigningKey::from_bytes(&[1; 32]));
        let admin = SigningKey::from_bytes(&[2; 32]);
        let genesis = Genesis {
            version: GENESIS_VERSION,
            chain_id: ChainId::new("suite").expect("chain"),
            created_ms: 0,
            admin: AccountId(admin.verifying_key().to_bytes()),
            admin_encryption_key: Digest32([0; 32]),
            nodes: vec![GenesisNode {
                id: 0,
                key: node.public(),
            }],
            params: medledger_core::ContractParams::defaults(AccountId(
                admin.verifying_key().to_bytes(),
            )),
        };
        let ledger =
            Ledger::open(&dir.path().join("ledger.redb"), genesis, node, 0).expect("ledger");
        let log = LogStore::open(&dir.path().join("raft.redb")).expect("log");
        Ok((dir, log, StateMachine::new(ledger)))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}
