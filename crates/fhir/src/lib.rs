//! FHIR R4 (4.0.1) without I/O: structural validation of any resource type (the R4
//! models of `fhirbolt`, strict) plus the cheap value-set and reference rules; the
//! search parameters this server indexes and how values are extracted from a
//! resource; date ranges and prefixes; OperationOutcome and Bundle shapes.
//!
//! The node owns storage, consent and audit; this crate only knows FHIR.

pub mod date;
pub mod outcome;
pub mod refs;
pub mod search;
pub mod validate;

pub use outcome::{Issue, IssueCode};
pub use validate::validate;

/// The FHIR version this server speaks.
pub const FHIR_VERSION: &str = "4.0.1";
/// The media type of every FHIR response.
pub const FHIR_JSON: &str = "application/fhir+json";
