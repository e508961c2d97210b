//! The record-store blob format (crates/store/src/format.rs): `Header::decode(&[u8])`
//! and `StreamOpener::new(key)` + `feed` + `finish`, which is how the store opens a
//! blob (`open_whole` feeds it whole, `get_large` in pieces). `open_whole` itself is
//! private and checks the CID first; the fuzzer goes straight to the opener.
//!
//! Oracles: a decoded header re-encodes to the input's first HEADER_LEN bytes; feeding
//! the blob whole or in pieces gives the same plaintext or the same error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medledger_fuzz::BLOB_KEY;
use medledger_store::format::{HEADER_LEN, Header, StreamOpener};

fn open(data: &[u8], piece: usize) -> Result<Vec<u8>, String> {
    let mut opener = StreamOpener::new(BLOB_KEY);
    let mut plain = Vec::new();
    let mut out = |p: &[u8]| {
        plain.extend_from_slice(p);
        Ok(())
    };
    for c in data.chunks(piece) {
        opener.feed(c, &mut out).map_err(|e| e.to_string())?;
    }
    opener.finish(&mut out).map_err(|e| e.to_string())?;
    Ok(plain)
}

fuzz_target!(
    init: medledger_fuzz::write_seeds(medledger_fuzz::seeds::blob),
    |data: &[u8]| {
        if let Ok(h) = Header::decode(data) {
            assert_eq!(&h.encode()[..], &data[..HEADER_LEN]);
            let _ = h.record_len();
        }
        let whole = open(data, data.len().max(1));
        let pieces = open(data, 1 + data.len() % 23);
        assert_eq!(whole, pieces, "whole and piecewise feeding disagree");
    }
);
