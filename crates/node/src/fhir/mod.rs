//! The FHIR R4 service: resources as encrypted records on the ledger.
//!
//! Every write validates, seals the resource into the record store (readable by the
//! patient, the author and this node's custodian key) and registers it with a
//! transaction signed by the caller's own key; every read decides through the
//! ledger's `can`, is reported to the audit trail, and only then decrypts. FHIR ids
//! are ledger record ids, `versionId` is the ledger version, `lastUpdated` the time of
//! the block that registered it.
//!
//! Patients created through FHIR get a ledger account whose keys this node keeps in
//! custody (sealed) until the person claims it; at creation the patient's account
//! grants the creating organisation treatment access (consent to treatment at
//! intake). Resources outside any patient compartment (Organization, Practitioner,
//! Location, …) belong to the organisation's *directory subject*, an account created
//! the same way that grants its organisation treatment and operations access.

mod catchup;
pub mod index;
mod service;

pub use catchup::{CatchUpReport, follow, reindex};
pub use service::{Fhir, FhirError, Stored, searchset};
