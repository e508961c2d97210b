//! FHIR search URLs: `medledger_fhir::search::parse_query(rtype, &[(String, String)])`,
//! and the date parsers under it, `date::parse` and `date::parse_search` (prefixes).
//!
//! Input: `Type?k=v&k=v...` (text before the first `?` is the resource type; without a
//! `?` the type is Observation). Pairs are split on `&` and the first `=`; no
//! percent-decoding (the server hands `parse_query` decoded strings, which may be any
//! UTF-8; invalid UTF-8 is replaced).
//!
//! Oracles: every parsed range is non-empty (`lo < hi`); `_count` is capped; a value
//! without a prefix means `eq`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medledger_fhir::date::{self, Prefix};
use medledger_fhir::search;

const PREFIXES: [Prefix; 8] = [
    Prefix::Eq,
    Prefix::Ne,
    Prefix::Gt,
    Prefix::Lt,
    Prefix::Ge,
    Prefix::Le,
    Prefix::Sa,
    Prefix::Eb,
];

fn check_date(v: &str) {
    if let Some(r) = date::parse(v) {
        assert!(r.lo < r.hi, "empty range {r:?} from {v:?}");
        let _ = date::instant(r.lo.max(0) as u64);
    }
    if let Some((p, r)) = date::parse_search(v) {
        assert!(r.lo < r.hi, "empty range {r:?} from {v:?}");
        for q in PREFIXES {
            let _ = date::matches(q, r, r);
        }
        let _ = p;
    }
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    check_date(&s);
    let (rtype, query) = s.split_once('?').unwrap_or(("Observation", &s));
    let pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    for (_, v) in &pairs {
        check_date(v);
    }
    if let Ok(q) = search::parse_query(rtype, &pairs) {
        assert!(q.count <= search::MAX_COUNT);
        for (_, _, r) in &q.dates {
            assert!(r.lo < r.hi);
        }
    }
});
