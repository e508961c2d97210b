//! Criterion benches for the Merkle log: appends, roots and proofs.
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use medledger_merkle::{Frontier, MemNodeStore, inclusion_proof, verify::verify_inclusion};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let mut store = MemNodeStore::default();
    let mut f = Frontier::new();
    for i in 0u64..(1 << 16) {
        f.push(&i.to_le_bytes(), |k, v| {
            store.0.insert(k, v);
        });
    }
    c.bench_function("merkle/append_leaf", |b| {
        let mut f = f.clone();
        b.iter(|| f.push(black_box(&[7u8; 32]), |_, _| {}))
    });
    let mut g = c.benchmark_group("merkle/inclusion");
    for size in [1u64 << 10, 1 << 16] {
        let root = medledger_merkle::root_at(&store, size, f.size()).expect("root");
        let proof = inclusion_proof(&store, size, size / 3, f.size()).expect("proof");
        g.bench_with_input(BenchmarkId::new("prove", size), &size, |b, &s| {
            b.iter(|| inclusion_proof(&store, s, s / 3, f.size()).expect("proof"))
        });
        g.bench_with_input(BenchmarkId::new("verify", size), &size, |b, &s| {
            b.iter(|| {
                verify_inclusion(&root, s, &(s / 3).to_le_bytes(), s / 3, &proof).expect("ok")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
