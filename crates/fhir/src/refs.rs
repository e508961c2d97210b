//! References inside a resource: finding them, checking their form, rewriting them.

use serde_json::Value;

/// What a `Reference.reference` string points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// `Type/id` on this server (optionally `Type/id/_history/n`).
    Local { rtype: &'a str, id: &'a str },
    /// `urn:uuid:…` / `urn:oid:…`: an entry of the same Bundle.
    Urn(&'a str),
    /// `#id`: a contained resource.
    Contained(&'a str),
    /// An absolute URL elsewhere; kept as it is.
    External(&'a str),
    /// `Type?query`: a conditional reference (not supported).
    Conditional(&'a str),
}

pub fn is_resource_type(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_uppercase()) && c.all(|c| c.is_ascii_alphanumeric())
}

/// A FHIR `id`: 1–64 of `[A-Za-z0-9\-.]`.
pub fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

pub fn parse(r: &str) -> Option<Target<'_>> {
    if let Some(rest) = r.strip_prefix('#') {
        return Some(Target::Contained(rest));
    }
    if r.starts_with("urn:uuid:") || r.starts_with("urn:oid:") {
        return Some(Target::Urn(r));
    }
    if r.starts_with("http://") || r.starts_with("https://") {
        return Some(Target::External(r));
    }
    if let Some((t, _)) = r.split_once('?') {
        return is_resource_type(t).then_some(Target::Conditional(r));
    }
    let mut parts = r.split('/');
    let (rtype, id) = (parts.next()?, parts.next()?);
    match (parts.next(), parts.next(), parts.next()) {
        (None, None, None) => {}
        (Some("_history"), Some(v), None) if is_id(v) => {}
        _ => return None,
    }
    (is_resource_type(rtype) && is_id(id)).then_some(Target::Local { rtype, id })
}

/// Calls `f` on every `reference` string in `v` (any depth, contained resources too)
/// with the JSON path to it.
pub fn visit(v: &Value, f: &mut impl FnMut(&str, &str)) {
    fn walk(v: &Value, path: &mut String, f: &mut impl FnMut(&str, &str)) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                    if k == "reference"
                        && let Value::String(s) = x
                    {
                        f(path, s);
                    } else {
                        walk(x, path, f);
                    }
                    path.truncate(len);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, path, f)),
            _ => {}
        }
    }
    walk(v, &mut String::new(), f)
}

/// Replaces every `reference` string for which `f` returns a new value.
pub fn rewrite(v: &mut Value, f: &mut impl FnMut(&str) -> Option<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == "reference"
                    && let Value::String(s) = x
                {
                    if let Some(n) = f(s) {
                        *s = n;
                    }
                } else {
                    rewrite(x, f);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite(x, f)),
        _ => {}
    }
}

/// The local `Patient/{id}` references of a resource (its patient compartment links).
pub fn patients(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    visit(v, &mut |_, r| {
        if let Some(Target::Local {
            rtype: "Patient",
            id,
        }) = parse(r)
            && !out.iter().any(|o: &String| o == id)
        {
            out.push(id.to_owned());
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn forms() {
        assert_eq!(
            parse("Patient/abc"),
            Some(Target::Local {
                rtype: "Patient",
                id: "abc"
            })
        );
        assert!(matches!(
            parse("Patient/a/_history/2"),
            Some(Target::Local { .. })
        ));
        assert!(matches!(parse("urn:uuid:1-2"), Some(Target::Urn(_))));
        assert!(matches!(parse("#x"), Some(Target::Contained("x"))));
        assert!(matches!(
            parse("Practitioner?identifier=a|b"),
            Some(Target::Conditional(_))
        ));
        for bad in ["patient/a", "Patient/", "Patient/a b", "Patient/a/b", "x"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn rewrite_and_compartment() {
        let mut v = json!({"subject": {"reference": "urn:uuid:1"},
            "x": [{"reference": "Patient/p1"}, {"reference": "Patient/p1"}]});
        rewrite(&mut v, &mut |r| {
            (r == "urn:uuid:1").then(|| "Patient/p2".to_owned())
        });
        assert_eq!(v["subject"]["reference"], "Patient/p2");
        assert_eq!(patients(&v), vec!["p2", "p1"]);
    }
}
