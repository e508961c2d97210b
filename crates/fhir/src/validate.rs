//! Validation on write: the R4 structure of the resource type (unknown elements,
//! wrong types and missing required elements are errors, via `fhirbolt`'s strict R4
//! models), required code bindings that are cheap to check, `id` syntax and the form
//! of every reference.

use crate::outcome::{Issue, IssueCode};
use crate::refs;
use fhirbolt::serde::{DeserializationConfig, DeserializationMode};
use serde_json::Value;

/// Every resource type of FHIR R4 (4.0.1).
pub const R4_TYPES: &[&str] = &[
    "Account",
    "ActivityDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "Binary",
    "BiologicallyDerivedProduct",
    "BodyStructure",
    "Bundle",
    "CapabilityStatement",
    "CarePlan",
    "CareTeam",
    "CatalogEntry",
    "ChargeItem",
    "ChargeItemDefinition",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "CodeSystem",
    "Communication",
    "CommunicationRequest",
    "CompartmentDefinition",
    "Composition",
    "ConceptMap",
    "Condition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceDefinition",
    "DeviceMetric",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "EffectEvidenceSynthesis",
    "Encounter",
    "Endpoint",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "EpisodeOfCare",
    "EventDefinition",
    "Evidence",
    "EvidenceVariable",
    "ExampleScenario",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "GraphDefinition",
    "Group",
    "GuidanceResponse",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "ImplementationGuide",
    "InsurancePlan",
    "Invoice",
    "Library",
    "Linkage",
    "List",
    "Location",
    "Measure",
    "MeasureReport",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationKnowledge",
    "MedicationRequest",
    "MedicationStatement",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "MessageDefinition",
    "MessageHeader",
    "MolecularSequence",
    "NamingSystem",
    "NutritionOrder",
    "Observation",
    "ObservationDefinition",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "Parameters",
    "Patient",
    "PaymentNotice",
    "PaymentReconciliation",
    "Person",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchDefinition",
    "ResearchElementDefinition",
    "ResearchStudy",
    "ResearchSubject",
    "RiskAssessment",
    "RiskEvidenceSynthesis",
    "Schedule",
    "SearchParameter",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "SpecimenDefinition",
    "StructureDefinition",
    "StructureMap",
    "Subscription",
    "Substance",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "TerminologyCapabilities",
    "TestReport",
    "TestScript",
    "ValueSet",
    "VerificationResult",
    "VisionPrescription",
];

pub fn is_r4_type(t: &str) -> bool {
    R4_TYPES.binary_search(&t).is_ok()
}

/// Required bindings (R4 `required` strength) checked on write: type, element, codes.
const BINDINGS: &[(&str, &str, &[&str])] = &[
    ("Patient", "gender", &["male", "female", "other", "unknown"]),
    (
        "Observation",
        "status",
        &[
            "registered",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "cancelled",
            "entered-in-error",
            "unknown",
        ],
    ),
    (
        "Encounter",
        "status",
        &[
            "planned",
            "arrived",
            "triaged",
            "in-progress",
            "onleave",
            "finished",
            "cancelled",
            "entered-in-error",
            "unknown",
        ],
    ),
    (
        "MedicationRequest",
        "status",
        &[
            "active",
            "on-hold",
            "cancelled",
            "completed",
            "entered-in-error",
            "stopped",
            "draft",
            "unknown",
        ],
    ),
    (
        "MedicationRequest",
        "intent",
        &[
            "proposal",
            "plan",
            "order",
            "original-order",
            "reflex-order",
            "filler-order",
            "instance-order",
            "option",
        ],
    ),
    (
        "Procedure",
        "status",
        &[
            "preparation",
            "in-progress",
            "not-done",
            "on-hold",
            "stopped",
            "completed",
            "entered-in-error",
            "unknown",
        ],
    ),
    (
        "Immunization",
        "status",
        &["completed", "entered-in-error", "not-done"],
    ),
    (
        "DiagnosticReport",
        "status",
        &[
            "registered",
            "partial",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "appended",
            "cancelled",
            "entered-in-error",
            "unknown",
        ],
    ),
    (
        "DocumentReference",
        "status",
        &["current", "superseded", "entered-in-error"],
    ),
    (
        "AllergyIntolerance",
        "criticality",
        &["low", "high", "unable-to-assess"],
    ),
    ("AllergyIntolerance", "type", &["allergy", "intolerance"]),
    (
        "Consent",
        "status",
        &[
            "draft",
            "proposed",
            "active",
            "rejected",
            "inactive",
            "entered-in-error",
        ],
    ),
    (
        "Claim",
        "status",
        &["active", "cancelled", "draft", "entered-in-error"],
    ),
    (
        "Claim",
        "use",
        &["claim", "preauthorization", "predetermination"],
    ),
    (
        "ExplanationOfBenefit",
        "status",
        &["active", "cancelled", "draft", "entered-in-error"],
    ),
    (
        "ExplanationOfBenefit",
        "outcome",
        &["queued", "complete", "error", "partial"],
    ),
    (
        "CarePlan",
        "status",
        &[
            "draft",
            "active",
            "on-hold",
            "revoked",
            "completed",
            "entered-in-error",
            "unknown",
        ],
    ),
    (
        "CareTeam",
        "status",
        &[
            "proposed",
            "active",
            "suspended",
            "inactive",
            "entered-in-error",
        ],
    ),
    (
        "Goal",
        "lifecycleStatus",
        &[
            "proposed",
            "planned",
            "accepted",
            "active",
            "on-hold",
            "completed",
            "cancelled",
            "entered-in-error",
            "rejected",
        ],
    ),
    (
        "ImagingStudy",
        "status",
        &[
            "registered",
            "available",
            "cancelled",
            "entered-in-error",
            "unknown",
        ],
    ),
];

/// Checks `v` as a resource to store; returns its type. `expect` is the type named by
/// the URL, if any. `bundled` allows `urn:` references (inside a Bundle, before they
/// are rewritten to server ids).
pub fn validate(v: &Value, expect: Option<&str>, bundled: bool) -> Result<String, Vec<Issue>> {
    let invalid = |code, msg: String| vec![Issue::new(code, msg)];
    let Some(obj) = v.as_object() else {
        return Err(invalid(
            IssueCode::Structure,
            "the body is not a JSON object".into(),
        ));
    };
    let Some(rtype) = obj.get("resourceType").and_then(Value::as_str) else {
        return Err(invalid(
            IssueCode::Required,
            "resourceType is missing".into(),
        ));
    };
    if !is_r4_type(rtype) {
        return Err(invalid(
            IssueCode::NotSupported,
            format!("{rtype} is not a FHIR R4 resource type"),
        ));
    }
    if let Some(e) = expect
        && e != rtype
    {
        return Err(invalid(
            IssueCode::Invalid,
            format!("the body is a {rtype} but the URL names {e}"),
        ));
    }
    let mut issues = Vec::new();
    let strict = DeserializationConfig {
        mode: DeserializationMode::Strict,
    };
    if let Err(e) =
        fhirbolt::json::from_json_value::<fhirbolt::model::r4::Resource>(v.clone(), Some(strict))
    {
        issues.push(Issue::new(IssueCode::Structure, structure_message(&e.to_string())).at(rtype));
    }
    if let Some(id) = obj.get("id")
        && !id.as_str().is_some_and(refs::is_id)
    {
        issues.push(
            Issue::new(IssueCode::Value, "id is not a valid FHIR id").at(format!("{rtype}.id")),
        );
    }
    for (t, field, codes) in BINDINGS {
        if *t != rtype {
            continue;
        }
        if let Some(x) = obj.get(*field)
            && !x.as_str().is_some_and(|c| codes.contains(&c))
        {
            issues.push(
                Issue::new(
                    IssueCode::Value,
                    format!("{field} must be one of: {}", codes.join(", ")),
                )
                .at(format!("{rtype}.{field}")),
            );
        }
    }
    check_dates(rtype, v, &mut issues);
    refs::visit(v, &mut |path, r| {
        let ok = match refs::parse(r) {
            Some(refs::Target::Urn(_)) => bundled,
            Some(refs::Target::Conditional(_)) | None => false,
            Some(_) => true,
        };
        if !ok {
            issues.push(
                Issue::new(
                    IssueCode::Value,
                    "reference must be Type/id, #contained, an absolute URL, or (inside a Bundle) urn:uuid:",
                )
                .at(format!("{rtype}.{path}")),
            );
        }
    });
    if issues.is_empty() {
        Ok(rtype.to_owned())
    } else {
        Err(issues)
    }
}

/// The R4 models take any string for a date; searchable date elements must parse,
/// because the index ranges over them.
fn check_dates(rtype: &str, v: &Value, issues: &mut Vec<Issue>) {
    let Some(params) = crate::search::params(rtype) else {
        return;
    };
    for p in params
        .iter()
        .filter(|p| p.kind == crate::search::Kind::Date)
    {
        for path in p.paths {
            let bad = match v.get(*path) {
                Some(Value::String(s)) => crate::date::parse(s).is_none(),
                Some(Value::Object(o)) => ["start", "end"].iter().any(|k| {
                    o.get(*k)
                        .is_some_and(|x| x.as_str().is_none_or(|s| crate::date::parse(s).is_none()))
                }),
                _ => false,
            };
            if bad {
                issues.push(
                    Issue::new(IssueCode::Value, "not a valid FHIR date/dateTime")
                        .at(format!("{rtype}.{path}")),
                );
            }
        }
    }
}

/// `fhirbolt` messages name elements and expected types; values are cut off so a
/// rejected resource's content never reaches an OperationOutcome or a log.
fn structure_message(e: &str) -> String {
    let cut = e
        .find(": \"")
        .or_else(|| e.find("string \""))
        .unwrap_or(e.len());
    let mut m = e[..cut].chars().take(400).collect::<String>();
    if m.is_empty() {
        m = "the resource does not match its R4 structure".into();
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_are_sorted_for_lookup() {
        assert!(R4_TYPES.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(R4_TYPES.len(), 146);
        assert!(is_r4_type("ExplanationOfBenefit") && !is_r4_type("Patients"));
    }

    #[test]
    fn accepts_a_valid_observation() {
        let o = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "subject": {"reference": "Patient/p1"},
            "valueQuantity": {"value": 72.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}});
        assert_eq!(
            validate(&o, Some("Observation"), false).unwrap(),
            "Observation"
        );
    }

    #[test]
    fn rejects_with_located_issues() {
        let cases = [
            (json!([1]), IssueCode::Structure),
            (json!({"id": "x"}), IssueCode::Required),
            (json!({"resourceType": "Nope"}), IssueCode::NotSupported),
            (
                json!({"resourceType": "Observation", "code": {}}),
                IssueCode::Structure,
            ),
            (
                json!({"resourceType": "Patient", "gender": "m"}),
                IssueCode::Value,
            ),
            (
                json!({"resourceType": "Patient", "foo": 1}),
                IssueCode::Structure,
            ),
            (
                json!({"resourceType": "Patient", "id": "a b"}),
                IssueCode::Value,
            ),
            (
                json!({"resourceType": "Patient", "generalPractitioner": [{"reference": "urn:uuid:1"}]}),
                IssueCode::Value,
            ),
            (
                json!({"resourceType": "Patient", "birthDate": 1990}),
                IssueCode::Structure,
            ),
        ];
        for (v, code) in cases {
            let e = validate(&v, None, false).unwrap_err();
            assert!(e.iter().any(|i| i.code == code), "{v}: {e:?}");
        }
        assert!(
            validate(
                &json!({"resourceType": "Patient"}),
                Some("Observation"),
                false
            )
            .is_err()
        );
    }

    #[test]
    fn messages_do_not_echo_values() {
        let v = json!({"resourceType": "Patient", "birthDate": "Zyxwvut-secret"});
        let e = validate(&v, None, false).unwrap_err();
        assert!(e.iter().any(|i| i.code == IssueCode::Value));
        for i in e {
            assert!(!i.diagnostics.contains("Zyxwvut"), "{}", i.diagnostics);
        }
    }
}
