//! Merkle log: known answers, agreement with ct-merkle's reference tree for random
//! sizes, and refusal of wrong leaves, indices, sizes and tampered paths.

use ct_merkle::mem_backed_tree::MemoryBackedTree;
use medledger_core::{Digest32, NodeSigner, keys::generate_signing_key};
use medledger_merkle::checkpoint::{Checkpoint, SignedCheckpoint};
use medledger_merkle::verify::{verify_consistency, verify_inclusion};
use medledger_merkle::{
    Frontier, MemNodeStore, MerkleError, consistency_proof, hash, inclusion_proof, root_at,
};
use proptest::prelude::*;
use sha2::Sha256;

fn leaf(i: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..8].copy_from_slice(&i.to_le_bytes());
    out[31] = 0xa5;
    out
}

fn build(n: u64) -> (MemNodeStore, Frontier) {
    let mut store = MemNodeStore::default();
    let mut f = Frontier::new();
    for i in 0..n {
        f.push(&leaf(i), |idx, h| {
            assert!(store.0.insert(idx, h).is_none(), "node {idx} written twice");
        });
    }
    (store, f)
}

/// The RFC 6962 test vectors used by Certificate Transparency implementations.
#[test]
fn known_answer_roots() {
    let leaves: [&[u8]; 8] = [
        b"",
        &[0x00],
        &[0x10],
        &[0x20, 0x21],
        &[0x30, 0x31],
        &[0x40, 0x41, 0x42, 0x43],
        &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
        &[
            0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d,
            0x6e, 0x6f,
        ],
    ];
    let roots = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    assert_eq!(
        hash::empty_root().to_hex(),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let mut store = MemNodeStore::default();
    let mut f = Frontier::new();
    for (i, l) in leaves.iter().enumerate() {
        f.push(l, |idx, h| {
            store.0.insert(idx, h);
        });
        assert_eq!(f.root().to_hex(), roots[i], "size {}", i + 1);
        assert_eq!(
            root_at(&store, i as u64 + 1, f.size()).unwrap().to_hex(),
            roots[i]
        );
    }
    // Historical roots stay computable after the tree has grown.
    for (i, r) in roots.iter().enumerate() {
        assert_eq!(root_at(&store, i as u64 + 1, 8).unwrap().to_hex(), *r);
    }
}

fn reference(n: u64) -> MemoryBackedTree<Sha256, [u8; 32]> {
    let mut t = MemoryBackedTree::new();
    for i in 0..n {
        t.push(leaf(i));
    }
    t
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Our stored-node proofs equal ct-merkle's in-memory proofs byte for byte and
    /// verify, for random tree sizes and positions, against historical heads too.
    #[test]
    fn inclusion_matches_reference(n in 1u64..600, pick in any::<u64>(), grow in 0u64..300) {
        let (store, f) = build(n + grow);
        let idx = pick % n;
        let r = reference(n);
        let root = root_at(&store, n, f.size()).unwrap();
        prop_assert_eq!(root.0, <[u8; 32]>::from(*r.root().as_bytes()));
        let proof = inclusion_proof(&store, n, idx, f.size()).unwrap();
        let ours: Vec<u8> = proof.iter().flat_map(|d| d.0).collect();
        let reference_proof = r.prove_inclusion(idx as usize);
        prop_assert_eq!(&ours[..], reference_proof.as_bytes());
        verify_inclusion(&root, n, &leaf(idx), idx, &proof).unwrap();

        // Wrong leaf, wrong index, wrong size, tampered path: all refused.
        prop_assert!(verify_inclusion(&root, n, &leaf(idx + 1), idx, &proof).is_err());
        if n > 1 {
            let other = (idx + 1) % n;
            prop_assert!(verify_inclusion(&root, n, &leaf(idx), other, &proof).is_err());
        }
        // A head claiming a tree of twice the size needs a longer path.
        prop_assert!(verify_inclusion(&root, 2 * n, &leaf(idx), idx, &proof).is_err());
        prop_assert!(verify_inclusion(&root, n, &leaf(idx), n, &proof).is_err());
        if !proof.is_empty() {
            let mut bad = proof.clone();
            let k = (pick as usize) % bad.len();
            bad[k].0[(pick as usize >> 8) % 32] ^= 1;
            prop_assert!(verify_inclusion(&root, n, &leaf(idx), idx, &bad).is_err());
            let mut short = proof.clone();
            short.pop();
            prop_assert!(verify_inclusion(&root, n, &leaf(idx), idx, &short).is_err());
        }
        let mut long = proof.clone();
        long.push(Digest32([7; 32]));
        prop_assert!(verify_inclusion(&root, n, &leaf(idx), idx, &long).is_err());
    }

    #[test]
    fn consistency_matches_reference(old in 1u64..400, add in 0u64..400, pick in any::<u64>()) {
        let new = old + add;
        let (store, f) = build(new);
        let old_root = root_at(&store, old, f.size()).unwrap();
        let new_root = root_at(&store, new, f.size()).unwrap();
        let proof = consistency_proof(&store, old, new, f.size()).unwrap();
        let ours: Vec<u8> = proof.iter().flat_map(|d| d.0).collect();
        let reference_proof = reference(new).prove_consistency(add as usize);
        prop_assert_eq!(&ours[..], reference_proof.as_bytes());
        verify_consistency(&old_root, old, &new_root, new, &proof).unwrap();

        // A wrong old size, a wrong root or a tampered path are refused.
        if old > 1 {
            prop_assert!(verify_consistency(&old_root, old - 1, &new_root, new, &proof).is_err());
        }
        if add > 0 {
            prop_assert!(verify_consistency(&new_root, old, &new_root, new, &proof).is_err());
        }
        if !proof.is_empty() {
            let mut bad = proof.clone();
            let k = (pick as usize) % bad.len();
            bad[k].0[0] ^= 0x80;
            prop_assert!(verify_consistency(&old_root, old, &new_root, new, &bad).is_err());
        }
    }
}

#[test]
fn out_of_range_requests_are_errors_not_panics() {
    let (store, f) = build(10);
    assert!(matches!(
        inclusion_proof(&store, 10, 10, f.size()),
        Err(MerkleError::IndexOutOfRange { .. })
    ));
    assert!(matches!(
        inclusion_proof(&store, 11, 0, f.size()),
        Err(MerkleError::SizeOutOfRange { .. })
    ));
    assert!(matches!(
        consistency_proof(&store, 0, 5, f.size()),
        Err(MerkleError::BadSizes { .. })
    ));
    assert!(matches!(
        consistency_proof(&store, 6, 5, f.size()),
        Err(MerkleError::BadSizes { .. })
    ));
    let root = f.root();
    assert!(verify_inclusion(&root, 0, &leaf(0), 0, &[]).is_err());
    assert!(verify_consistency(&root, 0, &root, 10, &[]).is_err());
}

/// A forged proof in the style of immudb GO-2022-1117: present an inner node as a
/// leaf of a smaller tree. The leaf/node domain prefixes and exact-length checks
/// must refuse it.
#[test]
fn inner_node_cannot_pose_as_leaf() {
    let (store, f) = build(4);
    let root = f.root();
    // Node over leaves 0..2 (in-order index 1) with sibling node over leaves 2..4 (index 5).
    let left = store.0[&1];
    let right = store.0[&5];
    let mut fake_leaf = Vec::new();
    fake_leaf.extend_from_slice(&left.0);
    fake_leaf.extend_from_slice(&right.0);
    assert!(verify_inclusion(&root, 1, &fake_leaf, 0, &[]).is_err());
    assert!(verify_inclusion(&root, 2, &left.0, 0, &[right]).is_err());
    assert!(verify_inclusion(&root, 4, &left.0, 0, &[right]).is_err());
}

#[test]
fn checkpoint_round_trip_and_signature() {
    let signer = NodeSigner::new(generate_signing_key().unwrap());
    let other = NodeSigner::new(generate_signing_key().unwrap());
    let cp = Checkpoint {
        origin: "medledger/test".into(),
        size: 42,
        root: Digest32([3; 32]),
    };
    let note = cp.sign("medledger/test/node-1", &signer).to_note();
    assert!(note.starts_with("medledger/test\n42\n"));
    let parsed = SignedCheckpoint::parse(&note).unwrap();
    assert_eq!(parsed.verify(&signer.public()).unwrap(), &cp);
    assert!(parsed.verify(&other.public()).is_err());

    // Changing the size in the text breaks the signature.
    let forged = note.replacen("\n42\n", "\n43\n", 1);
    assert!(
        SignedCheckpoint::parse(&forged)
            .unwrap()
            .verify(&signer.public())
            .is_err()
    );
    assert!(SignedCheckpoint::parse("no blank line").is_err());
    assert!(SignedCheckpoint::parse("o\n01\nAAAA\n\n— k AAAA\n").is_err());

    // Regression (fuzz target `checkpoint_parse`, found by reading it): a note other
    // than the one signed parsed to the same checkpoint and so still verified.
    for variant in [
        note.replacen("\n42\n", "\n+42\n", 1),
        note.replace('\n', "\r\n"),
        note.trim_end_matches('\n').to_owned(),
        format!("{note}\n"),
    ] {
        assert!(SignedCheckpoint::parse(&variant).is_err(), "{variant:?}");
    }
}
