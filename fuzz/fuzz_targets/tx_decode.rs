//! Transaction decoding and the stateless checks, as `/v1/tx` and block admission run
//! them on bytes from the network: `SignedTx::decode`, `check_without_signature`,
//! `verify_signature` / `verify_signatures`, `SignedTx::check_bytes`; plus the JSON
//! form of a `SignedTx`.
//!
//! Oracles besides "no panic":
//! * borsh is canonical: a tx that decodes re-encodes to exactly the input bytes;
//! * the hash `check_without_signature` returns is `body.hash()`;
//! * the batch verifier (`verify_signatures`, used by admission and `verify`) and the
//!   strict one-by-one check (`verify_signature`, used by `check_bytes`) agree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medledger_core::SignedTx;
use medledger_core::tx::verify_signatures;

fuzz_target!(
    init: medledger_fuzz::write_seeds(medledger_fuzz::seeds::tx),
    |data: &[u8]| {
        let chain = medledger_fuzz::chain();
        if let Ok(tx) = SignedTx::decode(data) {
            assert_eq!(tx.to_bytes(), data, "decoding is not canonical");
            let _ = format!("{tx:?}");
            let _ = tx.body.payload.kind();
            let _ = serde_json::to_vec(&tx);
            // Once against the node's chain, once against the tx's own chain id so the
            // hashing and signature paths run for any decodable tx.
            let own = tx.body.chain_id.clone();
            for c in [&chain, &own] {
                if let Ok(hash) = tx.check_without_signature(c) {
                    assert_eq!(hash, tx.body.hash());
                    let strict = tx.verify_signature(&hash).is_ok();
                    let batch = verify_signatures(&[(&tx, hash)]);
                    assert_eq!(
                        batch,
                        vec![strict],
                        "batch and strict signature verification disagree"
                    );
                }
            }
        }
        let _ = SignedTx::check_bytes(data, &chain);
        if let Ok(tx) = serde_json::from_slice::<SignedTx>(data) {
            let _ = tx.check_without_signature(&chain);
            assert_eq!(SignedTx::decode(&tx.to_bytes()).ok(), Some(tx));
        }
    }
);
