//! FHIR validation on write: `medledger_fhir::validate(&Value, Option<&str>, bool)` on
//! JSON parsed from the input, as `POST/PUT /fhir/{type}` and Bundle entries run it;
//! then the index extraction (`search::extract`), which parses the searchable dates of
//! the resource, the reference walk (`refs::visit` / `refs::parse` /
//! `refs::patients`), and `outcome::operation_outcome` on the issues.
//!
//! Oracles: naming the resource's own type as `expect` changes nothing; what is valid
//! outside a Bundle is valid inside one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medledger_fhir::{outcome, refs, search, validate};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let alone = validate(&v, None, false);
    let bundled = validate(&v, None, true);
    if alone.is_ok() {
        assert!(bundled.is_ok(), "valid alone but not inside a Bundle");
    }
    if let Some(t) = v.get("resourceType").and_then(Value::as_str) {
        let named = validate(&v, Some(t), false);
        assert_eq!(alone.is_ok(), named.is_ok());
        let _ = search::extract(t, &v);
    }
    let _ = validate(&v, Some("Patient"), false);
    for r in [&alone, &bundled] {
        match r {
            Ok(t) => {
                let _ = search::extract(t, &v);
            }
            Err(issues) => {
                let _ = outcome::operation_outcome(issues);
            }
        }
    }
    refs::visit(&v, &mut |_, r| {
        let _ = refs::parse(r);
    });
    let _ = refs::patients(&v);
});
