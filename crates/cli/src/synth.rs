//! Synthetic health data for the CLI's own tools (`bench fhir`, `demo`): made-up
//! syllable names (never a real person), identifiers in `urn:medledger:bench`, and
//! vital-sign Observations, all from a small deterministic generator so that a seed
//! always gives the same people.

use serde_json::{Value, json};

/// LOINC vital signs the synthetic observations cycle through: code, display, unit.
pub const VITALS: [(&str, &str, &str, f64); 5] = [
    ("29463-7", "Body weight", "kg", 70.0),
    ("8302-2", "Body height", "cm", 170.0),
    ("8867-4", "Heart rate", "/min", 70.0),
    ("9279-1", "Respiratory rate", "/min", 16.0),
    ("8310-5", "Body temperature", "Cel", 37.0),
];

/// A small deterministic generator (splitmix64): synthetic data and read order only,
/// never keys.
pub struct Mix(pub u64);

impl Mix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A made-up name from syllables: clearly synthetic, searchable, never a real person.
pub fn synthetic_name(g: &mut Mix) -> String {
    const S: [&str; 12] = [
        "ka", "lo", "mi", "ren", "to", "va", "zu", "bel", "dor", "fen", "qui", "sar",
    ];
    let mut n: String = (0..3).map(|_| S[g.below(S.len())]).collect();
    n[..1].make_ascii_uppercase();
    n
}

pub fn patient(i: usize, g: &mut Mix) -> Value {
    let gender = ["female", "male", "other"][g.below(3)];
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:medledger:bench", "value": format!("bench-{i}")}],
        "name": [{"family": synthetic_name(g), "given": [synthetic_name(g)]}],
        "gender": gender,
        "birthDate": format!("{}-{:02}-{:02}", 1930 + g.below(90), 1 + g.below(12), 1 + g.below(28)),
    })
}

pub fn observation(patient: &str, k: usize, g: &mut Mix) -> Value {
    let (code, display, unit, base) = VITALS[k % VITALS.len()];
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": format!("20{:02}-{:02}-{:02}T10:00:00Z", 10 + g.below(16), 1 + g.below(12), 1 + g.below(28)),
        "valueQuantity": {"value": base + (g.below(200) as f64 - 100.0) / 10.0, "unit": unit,
                          "system": "http://unitsofmeasure.org", "code": unit},
    })
}
