//! Keystore files, as `/auth/enroll` receives them from unauthenticated clients and
//! the CLI reads them: `serde_json::from_slice::<medledger_keystore::KeystoreFile>`
//! then `KeystoreFile::open(b"password")`.
//!
//! KDF cost: `open` runs Argon2id with the parameters in the file, up to the node's
//! bounds (64 MiB, t = 4, p = 4), which is a third of a second per input. Parameters *within*
//! the bounds are therefore clamped before `open` (memory ≤ 64 KiB, iterations ≤ 2;
//! values that Argon2 itself refuses, like t = 0 or m < 8p, are left as they are);
//! parameters beyond the bounds are passed unchanged so the bounds check is fuzzed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medledger_keystore::{
    KeystoreFile, MAX_KDF_ITERATIONS, MAX_KDF_MEMORY_KIB, MAX_KDF_PARALLELISM,
};

fuzz_target!(
    init: medledger_fuzz::write_seeds(medledger_fuzz::seeds::keystore),
    |data: &[u8]| {
        let Ok(mut ks) = serde_json::from_slice::<KeystoreFile>(data) else {
            return;
        };
        let _ = serde_json::to_vec(&ks);
        let k = &mut ks.kdf;
        if k.memory_kib <= MAX_KDF_MEMORY_KIB
            && k.iterations <= MAX_KDF_ITERATIONS
            && k.parallelism <= MAX_KDF_PARALLELISM
        {
            k.memory_kib = k.memory_kib.min(64);
            k.iterations = k.iterations.min(2);
        }
        if let Ok(keys) = ks.open(medledger_fuzz::KEYSTORE_PASSWORD) {
            assert_eq!(keys.account(), ks.account);
        }
    }
);
