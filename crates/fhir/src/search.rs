//! The search parameters this server supports, how their values are extracted from a
//! resource for indexing, and how a search URL is parsed.
//!
//! Extraction yields plain strings; the node turns each into a keyed token before it
//! touches disk, so the index never holds a name, code or identifier in the clear.

use crate::date::{self, Prefix, Range};
use crate::outcome::{Issue, IssueCode};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Codes and identifiers: `[system]|[code]`, `|[code]` or `[code]`.
    Token,
    /// Names: case-insensitive, matching the start of any part.
    Str,
    Date,
    /// A reference to the patient whose compartment the resource is in.
    Patient,
}

#[derive(Debug)]
pub struct Param {
    pub name: &'static str,
    pub kind: Kind,
    /// Element paths (dots step into objects and through arrays).
    pub paths: &'static [&'static str],
}

const fn p(name: &'static str, kind: Kind, paths: &'static [&'static str]) -> Param {
    Param { name, kind, paths }
}

const IDENT: Param = p("identifier", Kind::Token, &["identifier"]);
const PATIENT: Param = p("patient", Kind::Patient, &[]);
const SUBJECT: Param = p("subject", Kind::Patient, &[]);

/// The resource types with search, and their parameters (besides `_id`).
pub const SEARCHABLE: &[(&str, &[Param])] = &[
    (
        "AllergyIntolerance",
        &[
            IDENT,
            PATIENT,
            p("code", Kind::Token, &["code"]),
            p("date", Kind::Date, &["recordedDate"]),
        ],
    ),
    (
        "Condition",
        &[
            IDENT,
            PATIENT,
            SUBJECT,
            p("code", Kind::Token, &["code"]),
            p("onset-date", Kind::Date, &["onsetDateTime", "onsetPeriod"]),
            p("recorded-date", Kind::Date, &["recordedDate"]),
        ],
    ),
    (
        "DiagnosticReport",
        &[
            IDENT,
            PATIENT,
            SUBJECT,
            p("code", Kind::Token, &["code"]),
            p(
                "date",
                Kind::Date,
                &["effectiveDateTime", "effectivePeriod"],
            ),
        ],
    ),
    (
        "DocumentReference",
        &[
            IDENT,
            PATIENT,
            SUBJECT,
            p("type", Kind::Token, &["type"]),
            p("code", Kind::Token, &["type"]),
            p("date", Kind::Date, &["date"]),
        ],
    ),
    (
        "Encounter",
        &[
            IDENT,
            PATIENT,
            SUBJECT,
            p("type", Kind::Token, &["type"]),
            p("code", Kind::Token, &["type"]),
            p("date", Kind::Date, &["period"]),
        ],
    ),
    (
        "Immunization",
        &[
            IDENT,
            PATIENT,
            p("vaccine-code", Kind::Token, &["vaccineCode"]),
            p("code", Kind::Token, &["vaccineCode"]),
            p("date", Kind::Date, &["occurrenceDateTime"]),
        ],
    ),
    (
        "MedicationRequest",
        &[
            IDENT,
            PATIENT,
            SUBJECT,
            p("code", Kind::Token, &["medicationCodeableConcept"]),
            p("authoredon", Kind::Date, &["authoredOn"]),
            p("date", Kind::Date, &["authoredOn"]),
        ],
    ),
    (
        "Observation",
        &[
            IDENT,
            PATIENT,
            SUBJECT,
            p("code", Kind::Token, &["code"]),
            p("category", Kind::Token, &["category"]),
            p(
                "date",
                Kind::Date,
                &["effectiveDateTime", "effectivePeriod", "effectiveInstant"],
            ),
        ],
    ),
    (
        "Patient",
        &[
            IDENT,
            p("name", Kind::Str, &["name"]),
            p("family", Kind::Str, &["name.family"]),
            p("given", Kind::Str, &["name.given"]),
            p("gender", Kind::Token, &["gender"]),
            p("birthdate", Kind::Date, &["birthDate"]),
        ],
    ),
    (
        "Procedure",
        &[
            IDENT,
            PATIENT,
            SUBJECT,
            p("code", Kind::Token, &["code"]),
            p(
                "date",
                Kind::Date,
                &["performedDateTime", "performedPeriod"],
            ),
        ],
    ),
];

pub fn params(rtype: &str) -> Option<&'static [Param]> {
    SEARCHABLE
        .iter()
        .find(|(t, _)| *t == rtype)
        .map(|(_, p)| *p)
}

/// Longest name prefix indexed (longer search values match on this prefix).
pub const MAX_PREFIX: usize = 24;

/// What a resource contributes to the index.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// `(param, normalized value)`: exact-match keys.
    pub tokens: Vec<(&'static str, String)>,
    pub dates: Vec<(&'static str, Range)>,
}

fn at<'a>(v: &'a Value, path: &str, out: &mut Vec<&'a Value>) {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let mut push = |x: &'a Value| match rest {
        Some(r) => at(x, r, out),
        None => out.push(x),
    };
    match v.get(head) {
        Some(Value::Array(a)) => a.iter().for_each(&mut push),
        Some(x) => push(x),
        None => {}
    }
}

fn norm(s: &str) -> String {
    s.trim().to_lowercase()
}

fn codes(v: &Value, out: &mut Vec<String>) {
    let mut pair = |system: Option<&str>, code: &str| {
        if let Some(s) = system {
            out.push(format!("{s}|{code}"));
        } else {
            out.push(format!("|{code}"));
        }
        out.push(code.to_owned());
    };
    match v {
        Value::String(code) => pair(None, code),
        Value::Object(o) => {
            if let Some(c) = o.get("coding").and_then(Value::as_array) {
                for x in c {
                    codes(x, out);
                }
            } else if let Some(code) = o.get("code").and_then(Value::as_str) {
                pair(o.get("system").and_then(Value::as_str), code);
            } else if let Some(val) = o.get("value").and_then(Value::as_str) {
                pair(o.get("system").and_then(Value::as_str), val);
            }
        }
        _ => {}
    }
}

fn name_parts(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.extend(s.split_whitespace().map(norm)),
        Value::Array(a) => a.iter().for_each(|x| name_parts(x, out)),
        Value::Object(o) => ["family", "given", "text", "prefix", "suffix"]
            .iter()
            .filter_map(|k| o.get(*k))
            .for_each(|x| name_parts(x, out)),
        _ => {}
    }
}

fn range(v: &Value) -> Option<Range> {
    match v {
        Value::String(s) => date::parse(s),
        Value::Object(o) => {
            let lo = o.get("start").and_then(Value::as_str).and_then(date::parse);
            let hi = o.get("end").and_then(Value::as_str).and_then(date::parse);
            (lo.is_some() || hi.is_some()).then(|| Range {
                lo: lo.map_or(i64::MIN, |r| r.lo),
                hi: hi.map_or(i64::MAX, |r| r.hi),
            })
        }
        _ => None,
    }
}

/// The index entries of `resource` (of a searchable type; others yield nothing).
pub fn extract(rtype: &str, resource: &Value) -> Extracted {
    let mut e = Extracted::default();
    for param in params(rtype).unwrap_or(&[]) {
        let mut found = Vec::new();
        for path in param.paths {
            at(resource, path, &mut found);
        }
        match param.kind {
            Kind::Token => {
                let mut out = Vec::new();
                found.iter().for_each(|v| codes(v, &mut out));
                out.sort();
                out.dedup();
                e.tokens.extend(out.into_iter().map(|t| (param.name, t)));
            }
            Kind::Str => {
                let mut parts = Vec::new();
                found.iter().for_each(|v| name_parts(v, &mut parts));
                let mut prefixes: Vec<String> = parts
                    .iter()
                    .flat_map(|w| {
                        let chars: Vec<char> = w.chars().take(MAX_PREFIX).collect();
                        (1..=chars.len()).map(move |n| chars[..n].iter().collect::<String>())
                    })
                    .collect();
                prefixes.sort();
                prefixes.dedup();
                e.tokens
                    .extend(prefixes.into_iter().map(|t| (param.name, t)));
            }
            Kind::Date => e.dates.extend(
                found
                    .iter()
                    .filter_map(|v| range(v))
                    .map(|r| (param.name, r)),
            ),
            Kind::Patient => {}
        }
    }
    e
}

/// A parsed search: every condition must hold (AND); each inner list is an OR.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Query {
    pub ids: Option<Vec<String>>,
    /// The patient (`Patient/{id}` or `{id}`) whose compartment to search.
    pub patient: Option<String>,
    pub tokens: Vec<Vec<(&'static str, String)>>,
    pub dates: Vec<(&'static str, Prefix, Range)>,
    pub count: usize,
    pub offset: usize,
}

pub const DEFAULT_COUNT: usize = 50;
pub const MAX_COUNT: usize = 1000;

/// Parameters that change nothing about the result set and are accepted anywhere.
const HARMLESS: &[&str] = &["_format", "_pretty"];

pub fn parse_query(rtype: &str, pairs: &[(String, String)]) -> Result<Query, Issue> {
    let Some(params) = params(rtype) else {
        return Err(Issue::new(
            IssueCode::NotSupported,
            format!("search is not supported on {rtype}"),
        ));
    };
    let bad = |name: &str, why: &str| {
        Issue::new(
            IssueCode::Invalid,
            format!("search parameter {name}: {why}"),
        )
    };
    let mut q = Query {
        count: DEFAULT_COUNT,
        ..Query::default()
    };
    for (k, v) in pairs {
        let (name, modifier) = match k.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (k.as_str(), None),
        };
        match name {
            "_count" => {
                q.count = v
                    .parse::<usize>()
                    .map_err(|_| bad(k, "not a number"))?
                    .min(MAX_COUNT);
                continue;
            }
            "_offset" => {
                q.offset = v.parse().map_err(|_| bad(k, "not a number"))?;
                continue;
            }
            "_id" => {
                let ids: Vec<String> = v.split(',').map(str::to_owned).collect();
                q.ids = Some(match q.ids.take() {
                    Some(prev) => prev.into_iter().filter(|i| ids.contains(i)).collect(),
                    None => ids,
                });
                continue;
            }
            n if HARMLESS.contains(&n) => continue,
            _ => {}
        }
        let Some(param) = params.iter().find(|p| p.name == name) else {
            return Err(Issue::new(
                IssueCode::NotSupported,
                format!("search parameter {name} is not supported on {rtype}"),
            ));
        };
        if v.is_empty() {
            return Err(bad(k, "empty value"));
        }
        match (param.kind, modifier) {
            (Kind::Patient, None) => {
                let id = v.strip_prefix("Patient/").unwrap_or(v);
                if q.patient.as_deref().is_some_and(|p| p != id) {
                    q.ids = Some(Vec::new());
                }
                q.patient = Some(id.to_owned());
            }
            (Kind::Token, None) => q
                .tokens
                .push(v.split(',').map(|t| (param.name, t.to_owned())).collect()),
            (Kind::Str, None) => q.tokens.push(
                v.split(',')
                    .map(|t| (param.name, norm(t).chars().take(MAX_PREFIX).collect()))
                    .collect(),
            ),
            (Kind::Date, None) => {
                let (prefix, r) = date::parse_search(v)
                    .ok_or_else(|| bad(k, "not a date (prefixes: eq ne gt lt ge le sa eb)"))?;
                q.dates.push((param.name, prefix, r));
            }
            (_, Some(m)) => return Err(bad(k, &format!("modifier :{m} is not supported"))),
        }
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pairs(s: &[(&str, &str)]) -> Vec<(String, String)> {
        s.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn extracts_codes_names_and_dates() {
        let o = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]},
            "effectivePeriod": {"start": "2020-01-01"}});
        let e = extract("Observation", &o);
        assert!(
            e.tokens
                .contains(&("code", "http://loinc.org|8302-2".into()))
        );
        assert!(e.tokens.contains(&("code", "8302-2".into())));
        assert_eq!(e.dates.len(), 1);
        assert_eq!(e.dates[0].1.hi, i64::MAX);
        let p = json!({"resourceType": "Patient", "name": [{"family": "Qa", "given": ["Zed Ed"]}], "gender": "other"});
        let e = extract("Patient", &p);
        for t in ["q", "qa", "z", "ze", "zed", "ed"] {
            assert!(e.tokens.contains(&("name", t.into())), "{t}");
        }
        assert!(e.tokens.contains(&("family", "qa".into())));
        assert!(!e.tokens.contains(&("family", "zed".into())));
        assert!(e.tokens.contains(&("gender", "other".into())));
    }

    #[test]
    fn parses_queries_and_refuses_what_it_cannot_do() {
        let q = parse_query(
            "Observation",
            &pairs(&[
                ("patient", "Patient/x"),
                ("code", "a|b,c"),
                ("date", "ge2020"),
                ("_count", "5"),
            ]),
        )
        .unwrap();
        assert_eq!(q.patient.as_deref(), Some("x"));
        assert_eq!(
            q.tokens,
            vec![vec![("code", "a|b".to_string()), ("code", "c".to_string())]]
        );
        assert_eq!(q.dates[0].1, Prefix::Ge);
        assert_eq!(q.count, 5);
        assert!(parse_query("Observation", &pairs(&[("name", "x")])).is_err());
        assert!(parse_query("Observation", &pairs(&[("date", "yesterday")])).is_err());
        assert!(parse_query("Observation", &pairs(&[("code:text", "x")])).is_err());
        assert!(parse_query("Observation", &pairs(&[("_count", "-1")])).is_err());
        assert!(parse_query("Claim", &pairs(&[])).is_err());
        let q = parse_query("Patient", &pairs(&[("name", "  ZED ")])).unwrap();
        assert_eq!(q.tokens, vec![vec![("name", "zed".to_string())]]);
    }
}
