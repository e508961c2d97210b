//! Criterion benches for transaction hashing, signing and (batch) verification.
use criterion::{Criterion, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use medledger_core::tx::{TX_VERSION, verify_signatures};
use medledger_core::{AccountId, ChainId, Digest32, Payload, SignedTx, TxBody};
use std::hint::black_box;

fn body(key: &SigningKey, nonce: u64) -> TxBody {
    TxBody {
        version: TX_VERSION,
        chain_id: ChainId::new("bench").expect("chain"),
        signer: AccountId(key.verifying_key().to_bytes()),
        nonce,
        payload: Payload::Anchor {
            digest: Digest32([7; 32]),
        },
    }
}

fn bench(c: &mut Criterion) {
    let key = SigningKey::from_bytes(&[5; 32]);
    let chain = ChainId::new("bench").expect("chain");
    c.bench_function("tx/hash", |b| {
        let t = body(&key, 1);
        b.iter(|| black_box(&t).hash())
    });
    c.bench_function("tx/sign", |b| {
        b.iter(|| body(&key, black_box(1)).sign(&key))
    });
    let tx = body(&key, 1).sign(&key);
    let bytes = tx.to_bytes();
    c.bench_function("tx/decode_check_verify", |b| {
        b.iter(|| SignedTx::check_bytes(black_box(&bytes), &chain).expect("valid"))
    });
    let txs: Vec<SignedTx> = (1..=256).map(|n| body(&key, n).sign(&key)).collect();
    let pairs: Vec<_> = txs.iter().map(|t| (t, t.body.hash())).collect();
    c.bench_function("tx/verify_batch_256", |b| {
        b.iter(|| verify_signatures(black_box(&pairs)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
