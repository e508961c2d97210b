//! Every resource in the shared Synthea bundles passes validation as it would inside
//! a transaction Bundle (urn:uuid references allowed), and yields index entries.

use medledger_fhir::{search, validate};
use std::path::PathBuf;

fn samples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fhir-samples/synthea-r4")
}

#[test]
fn synthea_resources_validate() {
    let mut files: Vec<_> = std::fs::read_dir(samples())
        .expect("shared FHIR samples")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 13);
    let (mut n, mut dated) = (0, 0);
    for f in files {
        let b: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        for e in b["entry"].as_array().unwrap() {
            let r = &e["resource"];
            let t = validate(r, None, true).unwrap_or_else(|i| panic!("{}: {i:?}", f.display()));
            if !search::extract(&t, r).dates.is_empty() {
                dated += 1;
            }
            n += 1;
        }
    }
    assert_eq!(n, 5298);
    assert!(dated > 3000, "{dated}");
}
