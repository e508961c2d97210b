//! A FHIR resource as a person reads it: a few labelled lines, never raw JSON.

use serde_json::Value;

fn text_of(cc: &Value) -> Option<String> {
    cc["text"].as_str().map(str::to_owned).or_else(|| {
        cc["coding"].as_array().and_then(|c| {
            c.iter().find_map(|c| {
                c["display"]
                    .as_str()
                    .or_else(|| c["code"].as_str())
                    .map(str::to_owned)
            })
        })
    })
}

fn quantity(q: &Value) -> Option<String> {
    let v = q["value"].as_f64()?;
    let unit = q["unit"]
        .as_str()
        .or_else(|| q["code"].as_str())
        .unwrap_or("");
    Some(format!("{v} {unit}").trim().to_owned())
}

fn value_of(r: &Value) -> Option<String> {
    if let Some(q) = r.get("valueQuantity") {
        return quantity(q);
    }
    if let Some(s) = r["valueString"].as_str() {
        return Some(s.to_owned());
    }
    if let Some(cc) = r.get("valueCodeableConcept") {
        return text_of(cc);
    }
    r.get("component").and_then(Value::as_array).map(|cs| {
        cs.iter()
            .filter_map(|c| {
                Some(format!(
                    "{}: {}",
                    text_of(&c["code"])?,
                    c.get("valueQuantity").and_then(quantity)?
                ))
            })
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// A person's name as written in a Patient resource.
pub fn name(r: &Value) -> String {
    r["name"]
        .as_array()
        .and_then(|n| n.first())
        .map(|n| {
            let given: Vec<&str> = n["given"]
                .as_array()
                .map(|g| g.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let family = n["family"].as_str().unwrap_or("");
            format!("{} {family}", given.join(" ")).trim().to_owned()
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "(no name)".to_owned())
}

/// What the resource is about, in a few words (a list's first column).
pub fn title(r: &Value) -> String {
    let t = r["resourceType"].as_str().unwrap_or("Record");
    match t {
        "Patient" => format!("Patient: {}", name(r)),
        _ => ["code", "type", "vaccineCode", "medicationCodeableConcept"]
            .iter()
            .find_map(|k| r.get(*k).and_then(text_of))
            .or_else(|| r["description"].as_str().map(str::to_owned))
            .map(|what| format!("{t}: {what}"))
            .unwrap_or_else(|| t.to_owned()),
    }
}

/// Labelled lines of a resource.
pub fn lines(r: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            out.push((k.to_owned(), v));
        }
    };
    let s = |k: &str| r[k].as_str().map(str::to_owned);
    match r["resourceType"].as_str().unwrap_or("") {
        "Patient" => {
            put("Name", Some(name(r)));
            put("Gender", s("gender"));
            put("Birth date", s("birthDate"));
            if let Some(a) = r["address"].as_array().and_then(|a| a.first()) {
                let mut parts: Vec<String> = a["line"]
                    .as_array()
                    .map(|l| {
                        l.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                for k in ["city", "state", "postalCode", "country"] {
                    if let Some(v) = a[k].as_str() {
                        parts.push(v.to_owned());
                    }
                }
                put("Address", Some(parts.join(", ")));
            }
            for t in r["telecom"].as_array().into_iter().flatten() {
                let label = match t["system"].as_str() {
                    Some("phone") => "Phone",
                    Some("email") => "E-mail",
                    _ => "Contact",
                };
                put(label, t["value"].as_str().map(str::to_owned));
            }
        }
        "DocumentReference" => {
            put("Document", s("description").or_else(|| text_of(&r["type"])));
            put("Status", s("status"));
            put("Date", s("date"));
            if let Some(a) = r["content"].as_array().and_then(|c| c.first()) {
                put("File", a["attachment"]["title"].as_str().map(str::to_owned));
                put(
                    "Type",
                    a["attachment"]["contentType"].as_str().map(str::to_owned),
                );
            }
        }
        _ => {
            put("What", text_of(&r["code"]).or_else(|| text_of(&r["type"])));
            put("Value", value_of(r));
            put("Status", s("status"));
            put(
                "When",
                s("effectiveDateTime")
                    .or_else(|| s("onsetDateTime"))
                    .or_else(|| s("recordedDate"))
                    .or_else(|| s("date"))
                    .or_else(|| s("issued"))
                    .or_else(|| r["period"]["start"].as_str().map(str::to_owned)),
            );
            put("Clinical status", r.get("clinicalStatus").and_then(text_of));
        }
    }
    out
}

/// The date a record is about (for sorting and trends): effective/onset/recorded.
pub fn date(r: &Value) -> Option<String> {
    [
        "effectiveDateTime",
        "onsetDateTime",
        "recordedDate",
        "date",
        "issued",
        "birthDate",
    ]
    .iter()
    .find_map(|k| r[*k].as_str().map(str::to_owned))
}

/// The numeric value and unit of a quantity-valued observation.
pub fn number(r: &Value) -> Option<(f64, String)> {
    let q = r.get("valueQuantity")?;
    Some((
        q["value"].as_f64()?,
        q["unit"].as_str().unwrap_or("").to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn observations_and_patients_read_as_text() {
        let o = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}]},
            "valueQuantity": {"value": 71.5, "unit": "kg"}, "effectiveDateTime": "2024-02-01"});
        assert_eq!(title(&o), "Observation: Body weight");
        assert!(lines(&o).contains(&("Value".into(), "71.5 kg".into())));
        let p = json!({"resourceType": "Patient", "name": [{"family": "Kalomi", "given": ["Ren"]}],
            "address": [{"line": ["1 Main St"], "city": "Springfield"}]});
        assert_eq!(title(&p), "Patient: Ren Kalomi");
        assert!(lines(&p).contains(&("Address".into(), "1 Main St, Springfield".into())));
    }
}
