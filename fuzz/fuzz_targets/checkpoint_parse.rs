//! Signed tree heads (C2SP signed-note text): `SignedCheckpoint::parse(&str)`, then
//! `to_note`, `Checkpoint::body` and `SignedCheckpoint::verify` against the key that
//! signed the seeds.
//!
//! Oracle: what parses re-serializes (`to_note`) to text that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medledger_merkle::SignedCheckpoint;

fuzz_target!(
    init: medledger_fuzz::write_seeds(medledger_fuzz::seeds::checkpoint),
    |data: &[u8]| {
        let Ok(note) = std::str::from_utf8(data) else {
            return;
        };
        let Ok(cp) = SignedCheckpoint::parse(note) else {
            return;
        };
        let text = cp.to_note();
        let again = SignedCheckpoint::parse(&text).expect("to_note output parses");
        assert_eq!(again, cp, "parse/to_note round trip changed the checkpoint");
        let key = medledger_fuzz::checkpoint_signer().public();
        let _ = cp.verify(&key);
    }
);
