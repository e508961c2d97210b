//! FHIR resources that are the ledger itself rather than stored records:
//!
//! - **Consent** = a consent grant. Creating one sends `grant_consent` signed by the
//!   patient; setting `status` to `inactive` sends `revoke_consent`; reads render the
//!   grant as the ledger holds it now (revoked or expired grants read `inactive`).
//!   Nothing of a Consent is kept outside the ledger, so elements the grant cannot
//!   carry are refused rather than dropped.
//! - **AuditEvent** = one entry of the ledger's audit trail (id = its sequence number).
//! - **Provenance** `tx-…` = the transaction that wrote record versions: its signer
//!   as author, its block time, and its signature. Provenance resources a client
//!   sends (Synthea's, for instance) are ordinary records with ordinary ids.

use super::{Fhir, FhirError, Page, can_as, internal, record_id, searchset};
use crate::access::Viewer;
use crate::auth::Principal;
use crate::reporter::now_ms;
use medledger_core::{
    AccountId, Category, GrantId, Grantee, OrgId, Payload, Purpose, RecordId, RecordWrite, Role,
    Scope, TxHash,
};
use medledger_fhir::date;
use medledger_fhir::outcome::IssueCode;
use medledger_ledger::contracts::query::{self, AuditFilter};
use medledger_ledger::contracts::state::{AuditEntry, GrantState};
use serde_json::{Value, json};

const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const ORG_SYSTEM: &str = "urn:medledger:org";
const ACCOUNT_SYSTEM: &str = "urn:medledger:account";
const RESOURCE_TYPES: &str = "http://hl7.org/fhir/resource-types";
/// Largest audit page one search may ask for.
const MAX_AUDIT_PAGE: usize = 1000;

fn purpose_code(p: Purpose) -> &'static str {
    match p {
        Purpose::Treatment => "TREAT",
        Purpose::Payment => "HPAYMT",
        Purpose::Operations => "HOPERAT",
        Purpose::Research => "HRESCH",
        Purpose::Emergency => "ETREAT",
    }
}

fn purpose_from(code: &str) -> Option<Purpose> {
    Purpose::ALL.into_iter().find(|p| purpose_code(*p) == code)
}

fn invalid(msg: impl Into<String>) -> FhirError {
    FhirError::invalid(IssueCode::Invalid, msg)
}

fn identifier(system: &str, value: String) -> Value {
    json!({"identifier": {"system": system, "value": value}})
}

fn account_ref(a: &AccountId) -> Value {
    identifier(ACCOUNT_SYSTEM, a.to_did())
}

/// `tx-` + the transaction hash in lower-case base32 (a FHIR id is at most 64
/// characters; hex would need 67).
fn provenance_id(tx: &TxHash) -> String {
    format!(
        "tx-{}",
        data_encoding::BASE32_NOPAD
            .encode(&tx.0.0)
            .to_ascii_lowercase()
    )
}

fn provenance_tx(id: &str) -> Option<TxHash> {
    let b32 = id.strip_prefix("tx-")?.to_ascii_uppercase();
    let bytes = data_encoding::BASE32_NOPAD.decode(b32.as_bytes()).ok()?;
    Some(TxHash(medledger_core::Digest32(bytes.try_into().ok()?)))
}

/// A grant as the ledger asked for it: grantee, scope, purpose, period.
struct GrantRequest {
    grantee: Grantee,
    scope: Scope,
    purpose: Purpose,
    start_ms: u64,
    expiry_ms: u64,
}

/// The one element of a list that must hold exactly one.
fn only<'a>(v: &'a Value, what: &str) -> Result<&'a Value, FhirError> {
    match v.as_array().map(Vec::as_slice) {
        Some([one]) => Ok(one),
        _ => Err(invalid(format!("{what}: give exactly one"))),
    }
}

fn date_ms(v: &Value, what: &str, end: bool) -> Result<Option<u64>, FhirError> {
    let Some(s) = v.as_str() else {
        return Ok(None);
    };
    let r = date::parse(s).ok_or_else(|| invalid(format!("{what} is not a FHIR date")))?;
    // A day given as the end includes the whole day.
    let ms = if end { r.hi } else { r.lo };
    u64::try_from(ms)
        .map(Some)
        .map_err(|_| invalid(format!("{what} is before 1970")))
}

impl Fhir {
    // ---- Consent -----------------------------------------------------------------

    /// The patient account a `Patient/{id}` reference names.
    async fn patient_account(&self, reference: &str) -> Result<AccountId, FhirError> {
        let id = reference
            .strip_prefix("Patient/")
            .and_then(record_id)
            .ok_or_else(|| invalid("Consent.patient must reference Patient/{id}"))?;
        match self.lookup(|st| query::record(st, &id))? {
            Some(v) if v.state.category.as_str() == "Patient" => Ok(v.state.patient),
            _ => Err(FhirError::NotFound("no such Patient".into())),
        }
    }

    /// The patient account a `patient` search value (`{id}` or `Patient/{id}`) names.
    async fn patient_param(&self, v: &str) -> Result<AccountId, FhirError> {
        if v.contains('/') {
            self.patient_account(v).await
        } else {
            self.patient_account(&format!("Patient/{v}")).await
        }
    }

    /// The id of the Patient resource of a patient account (its first), if any.
    async fn patient_resource(&self, account: AccountId) -> Result<Option<RecordId>, FhirError> {
        self.view(move |st| {
            for r in query::patient_records(st, &account, None, usize::MAX)? {
                if query::record(st, &r)?.is_some_and(|v| v.state.category.as_str() == "Patient") {
                    return Ok(Some(r));
                }
            }
            Ok(None)
        })
        .await
    }

    async fn grant_request(&self, c: &Value) -> Result<GrantRequest, FhirError> {
        const KEPT: [&str; 12] = [
            "resourceType",
            "id",
            "meta",
            "text",
            "status",
            "scope",
            "category",
            "patient",
            "dateTime",
            "policy",
            "policyRule",
            "provision",
        ];
        if let Some(extra) = c
            .as_object()
            .and_then(|o| o.keys().find(|k| !KEPT.contains(&k.as_str())))
        {
            return Err(FhirError::invalid(
                IssueCode::NotSupported,
                format!("Consent.{extra} is not kept: a Consent is a ledger grant"),
            ));
        }
        if c["status"] != "active" {
            return Err(invalid("a new Consent must have status active"));
        }
        let p = &c["provision"];
        if !p.is_object() {
            return Err(invalid(
                "Consent.provision is required: it says who may see what, why and until when",
            ));
        }
        for k in p.as_object().into_iter().flat_map(|o| o.keys()) {
            if !["type", "period", "actor", "purpose", "class", "data"].contains(&k.as_str()) {
                return Err(FhirError::invalid(
                    IssueCode::NotSupported,
                    format!("Consent.provision.{k} is not supported"),
                ));
            }
        }
        if !p["type"].is_null() && p["type"] != "permit" {
            return Err(FhirError::invalid(
                IssueCode::NotSupported,
                "only permit provisions: a grant allows, it never denies",
            ));
        }
        let start_ms =
            date_ms(&p["period"]["start"], "provision.period.start", false)?.unwrap_or_else(now_ms);
        let expiry_ms = date_ms(&p["period"]["end"], "provision.period.end", true)?
            .ok_or_else(|| invalid("provision.period.end is required: every grant expires"))?;
        let actor = &only(&p["actor"], "provision.actor")?["reference"]["identifier"];
        let value = actor["value"].as_str().unwrap_or_default();
        let grantee = match actor["system"].as_str() {
            Some(ORG_SYSTEM) => Grantee::Org(
                OrgId::new(value)
                    .map_err(|_| invalid("provision.actor: not an organisation id"))?,
            ),
            Some(ACCOUNT_SYSTEM) => Grantee::Account(
                value
                    .parse::<AccountId>()
                    .map_err(|_| invalid("provision.actor: not an account id"))?,
            ),
            _ => {
                return Err(invalid(format!(
                    "provision.actor.reference must be an identifier in {ORG_SYSTEM} or {ACCOUNT_SYSTEM}"
                )));
            }
        };
        let purpose = only(&p["purpose"], "provision.purpose")?;
        let purpose = (purpose["system"] == ACT_REASON)
            .then(|| purpose["code"].as_str().and_then(purpose_from))
            .flatten()
            .filter(|p| *p != Purpose::Emergency)
            .ok_or_else(|| {
                invalid(format!(
                    "provision.purpose: one of TREAT, HPAYMT, HOPERAT, HRESCH in {ACT_REASON}"
                ))
            })?;
        let scope = match (p["class"].as_array(), p["data"].as_array()) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "give provision.class (resource types) or provision.data (resources), not both",
                ));
            }
            (Some(classes), None) => Scope::Categories(
                classes
                    .iter()
                    .map(|c| {
                        (c["system"] == RESOURCE_TYPES)
                            .then(|| c["code"].as_str())
                            .flatten()
                            .filter(|t| medledger_fhir::validate::is_r4_type(t))
                            .and_then(|t| Category::new(t).ok())
                            .ok_or_else(|| {
                                invalid(format!(
                                    "provision.class: resource types in {RESOURCE_TYPES}"
                                ))
                            })
                    })
                    .collect::<Result<_, _>>()?,
            ),
            (None, Some(data)) => Scope::Records(
                data.iter()
                    .map(|d| {
                        d["reference"]["reference"]
                            .as_str()
                            .and_then(|r| r.split_once('/'))
                            .and_then(|(_, id)| record_id(id))
                            .ok_or_else(|| invalid("provision.data: references Type/{id}"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            (None, None) => Scope::All,
        };
        Ok(GrantRequest {
            grantee,
            scope,
            purpose,
            start_ms,
            expiry_ms,
        })
    }

    /// A new Consent: validated, then granted on the ledger by the patient.
    pub async fn create_consent(&self, who: &Principal, c: Value) -> Result<Value, FhirError> {
        medledger_fhir::validate(&c, Some("Consent"), false).map_err(FhirError::Invalid)?;
        let reference = c["patient"]["reference"].as_str().unwrap_or_default();
        let patient = self.patient_account(reference).await?;
        if who.role != Role::Patient || who.account != patient {
            return Err(FhirError::Forbidden(
                "only the patient grants consent to their records".into(),
            ));
        }
        let g = self.grant_request(&c).await?;
        let hash = self
            .submit(
                &who.keys,
                Payload::GrantConsent {
                    grantee: g.grantee,
                    scope: g.scope,
                    purpose: g.purpose,
                    start_ms: g.start_ms,
                    expiry_ms: g.expiry_ms,
                },
            )
            .await?;
        self.read_consent(who, &GrantId::from_tx(&hash).to_string())
            .await
    }

    /// The grant behind a Consent id, if the caller may see it.
    async fn visible_grant(
        &self,
        who: &Principal,
        id: &str,
    ) -> Result<(GrantId, GrantState), FhirError> {
        let gid: GrantId = id
            .parse()
            .map_err(|_| FhirError::NotFound("no such Consent".into()))?;
        let g = self
            .lookup(|st| query::grant(st, &gid))?
            .ok_or_else(|| FhirError::NotFound("no such Consent".into()))?;
        // Only the patient, the grantee or an auditor sees a consent; to anyone else
        // it does not exist.
        if !self.viewer(who)?.sees_grant(&g) {
            return Err(FhirError::NotFound("no such Consent".into()));
        }
        Ok((gid, g))
    }

    pub async fn read_consent(&self, who: &Principal, id: &str) -> Result<Value, FhirError> {
        let (gid, g) = self.visible_grant(who, id).await?;
        self.render_consent(gid, &g).await
    }

    /// An update may only set `status` to `inactive`, which revokes the grant.
    pub async fn update_consent(
        &self,
        who: &Principal,
        id: &str,
        c: Value,
    ) -> Result<Value, FhirError> {
        medledger_fhir::validate(&c, Some("Consent"), false).map_err(FhirError::Invalid)?;
        let (gid, g) = self.visible_grant(who, id).await?;
        if who.account != g.patient {
            return Err(FhirError::Forbidden(
                "only the patient who granted it revokes a consent".into(),
            ));
        }
        if c["status"] != "inactive" {
            return Err(FhirError::invalid(
                IssueCode::NotSupported,
                "a grant cannot be changed: set status to inactive to revoke it, and create a new Consent",
            ));
        }
        self.submit(&who.keys, Payload::RevokeConsent { grant: gid })
            .await?;
        self.read_consent(who, id).await
    }

    /// Consents of one patient (`patient=`), or of the caller if they are a patient.
    pub async fn search_consents(
        &self,
        who: &Principal,
        pairs: &[(String, String)],
    ) -> Result<Vec<Value>, FhirError> {
        let mut patient = None;
        for (k, v) in pairs {
            match k.as_str() {
                "patient" => patient = Some(self.patient_param(v).await?),
                "_count" | "_offset" => {}
                _ => {
                    return Err(FhirError::invalid(
                        IssueCode::NotSupported,
                        format!("Consent search supports patient only, not {k}"),
                    ));
                }
            }
        }
        let patient = match (patient, who.role) {
            (Some(p), _) => p,
            (None, Role::Patient) => who.account,
            (None, _) => return Err(invalid("Consent search needs patient=")),
        };
        let grants = self.view(move |st| query::grants(st, &patient)).await?;
        let v = self.viewer(who)?;
        let mut out = Vec::new();
        for g in grants {
            if v.sees_grant(&g.state) {
                out.push(self.render_consent(g.id, &g.state).await?);
            }
        }
        Ok(out)
    }

    async fn render_consent(&self, id: GrantId, g: &GrantState) -> Result<Value, FhirError> {
        let tx = TxHash(id.0);
        let granted_ms = self.tx_time(tx).await?;
        let now = now_ms();
        let inactive = g.revoked_ms.is_some() || now >= g.expiry_ms;
        let patient = match self.patient_resource(g.patient).await? {
            Some(r) => json!({"reference": format!("Patient/{r}")}),
            None => account_ref(&g.patient),
        };
        let actor_ref = match &g.grantee {
            Grantee::Org(o) => identifier(ORG_SYSTEM, o.as_str().to_owned()),
            Grantee::Account(a) => account_ref(a),
        };
        let mut provision = json!({
            "type": "permit",
            "period": {"start": date::instant(g.start_ms), "end": date::instant(g.expiry_ms)},
            "actor": [{
                "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
                "reference": actor_ref,
            }],
            "purpose": [{"system": ACT_REASON, "code": purpose_code(g.purpose)}],
        });
        match &g.scope {
            Scope::All => {}
            Scope::Categories(c) => {
                provision["class"] = c
                    .iter()
                    .map(|c| json!({"system": RESOURCE_TYPES, "code": c.as_str()}))
                    .collect();
            }
            Scope::Records(rs) => {
                let refs = self.lookup(|st| {
                    rs.iter()
                        .map(|r| {
                            Ok(query::record(st, r)?
                                .map(|v| format!("{}/{r}", v.state.category.as_str())))
                        })
                        .collect::<medledger_ledger::Result<Vec<_>>>()
                })?;
                provision["data"] = refs
                    .into_iter()
                    .flatten()
                    .map(|r| json!({"meaning": "instance", "reference": {"reference": r}}))
                    .collect();
            }
        }
        Ok(json!({
            "resourceType": "Consent",
            "id": id.to_string(),
            "meta": {
                "versionId": if g.revoked_ms.is_some() { "2" } else { "1" },
                "lastUpdated": date::instant(g.revoked_ms.unwrap_or(granted_ms)),
            },
            "status": if inactive { "inactive" } else { "active" },
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}],
            "patient": patient,
            "dateTime": date::instant(granted_ms),
            "policy": [{"uri": "urn:medledger:consent-grant"}],
            "provision": provision,
        }))
    }

    /// The time of the block that holds a transaction.
    async fn tx_time(&self, tx: TxHash) -> Result<u64, FhirError> {
        let ledger = self.ledger.clone();
        tokio::task::spawn_blocking(move || -> medledger_ledger::Result<Option<u64>> {
            Ok(ledger.tx_in_block(&tx)?.map(|(_, _, time)| time))
        })
        .await
        .map_err(internal)?
        .map_err(internal)?
        .ok_or_else(|| internal("transaction not found"))
    }

    // ---- AuditEvent ---------------------------------------------------------------

    pub async fn read_audit_event(&self, who: &Principal, id: &str) -> Result<Value, FhirError> {
        let seq: u64 = id
            .parse()
            .map_err(|_| FhirError::NotFound("no such AuditEvent".into()))?;
        let e = self
            .lookup(|st| query::audit_entry(st, seq))?
            .ok_or_else(|| FhirError::NotFound("no such AuditEvent".into()))?;
        // Visible to its patient, its accessor and auditors; absent to anyone else.
        if !self.viewer(who)?.sees_audit(&e) {
            return Err(FhirError::NotFound("no such AuditEvent".into()));
        }
        self.render_audit(&e).await
    }

    /// Audit entries by `patient`, `entity` or `date` (the ledger's audit indexes),
    /// limited to what the caller may see; by default the caller's own trail.
    pub async fn search_audit_events(
        &self,
        who: &Principal,
        pairs: &[(String, String)],
        base: &str,
    ) -> Result<Value, FhirError> {
        let (mut filter, mut from, mut to) = (None, 0u64, u64::MAX);
        let (mut count, mut offset) = (medledger_fhir::search::DEFAULT_COUNT, 0usize);
        for (k, v) in pairs {
            match k.as_str() {
                "patient" => filter = Some(AuditFilter::Patient(self.patient_param(v).await?)),
                "entity" => {
                    let id =
                        v.rsplit('/').next().and_then(record_id).ok_or_else(|| {
                            invalid("entity must reference a resource: Type/{id}")
                        })?;
                    filter = Some(AuditFilter::Record(id));
                }
                "date" => {
                    let (prefix, r) = date::parse_search(v)
                        .ok_or_else(|| invalid("date: a FHIR date with an optional prefix"))?;
                    let (lo, hi) = (r.lo.max(0) as u64, r.hi.max(0) as u64);
                    match prefix {
                        date::Prefix::Ge | date::Prefix::Sa | date::Prefix::Gt => {
                            from = from.max(if prefix == date::Prefix::Ge {
                                lo
                            } else {
                                hi + 1
                            })
                        }
                        date::Prefix::Le | date::Prefix::Eb | date::Prefix::Lt => {
                            to = to.min(if prefix == date::Prefix::Le {
                                hi + 1
                            } else {
                                lo
                            })
                        }
                        date::Prefix::Eq => {
                            from = from.max(lo);
                            to = to.min(hi + 1);
                        }
                        date::Prefix::Ne => {
                            return Err(FhirError::invalid(
                                IssueCode::NotSupported,
                                "date=ne is not supported for AuditEvent",
                            ));
                        }
                    }
                }
                "_count" => {
                    count = v
                        .parse::<usize>()
                        .ok()
                        .filter(|c| (1..=MAX_AUDIT_PAGE).contains(c))
                        .ok_or_else(|| invalid(format!("_count: 1 to {MAX_AUDIT_PAGE}")))?
                }
                "_offset" => {
                    offset = v
                        .parse::<usize>()
                        .ok()
                        .filter(|o| *o <= 100 * MAX_AUDIT_PAGE)
                        .ok_or_else(|| invalid("_offset: a whole number"))?
                }
                _ => {
                    return Err(FhirError::invalid(
                        IssueCode::NotSupported,
                        format!("AuditEvent search supports patient, entity, date; not {k}"),
                    ));
                }
            }
        }
        let filter = match filter {
            Some(f) => f,
            // A time range walks the time index only for those who see all of it;
            // anyone else walks their own trail and keeps the range.
            None if who.role == Role::Auditor => AuditFilter::Time {
                from_ms: from,
                to_ms: to,
            },
            None if who.role == Role::Patient => AuditFilter::Patient(who.account),
            None => AuditFilter::Accessor(who.account),
        };
        if from >= to {
            return Ok(searchset(base, "AuditEvent", pairs, Vec::new(), None));
        }
        // Walk the index in pages until a page of visible entries (plus one to know
        // whether there is more) is found.
        let (w, want) = (self.viewer(who)?, offset + count + 1);
        let entries = self
            .view(move |st| {
                let mut out = Vec::new();
                let mut after = None;
                loop {
                    let page = query::audit(st, &filter, after, 256)?;
                    let Some(last) = page.last() else {
                        return Ok(out);
                    };
                    after = Some(last.seq);
                    out.extend(
                        page.into_iter()
                            .filter(|e| w.sees_audit(e) && e.time_ms >= from && e.time_ms < to),
                    );
                    if out.len() >= want {
                        return Ok(out);
                    }
                }
            })
            .await?;
        let more = entries.len() > offset + count;
        let mut out = Vec::new();
        for e in entries.iter().skip(offset).take(count) {
            out.push(self.render_audit(e).await?);
        }
        let page = Page {
            count,
            offset,
            more,
        };
        Ok(searchset(base, "AuditEvent", pairs, out, Some(page)))
    }

    async fn render_audit(&self, e: &AuditEntry) -> Result<Value, FhirError> {
        let entity = match e.record {
            Some(r) => {
                let cat = self
                    .lookup(|st| query::record(st, &r))?
                    .map(|v| v.state.category.as_str().to_owned());
                match cat {
                    Some(c) => json!({"what": {"reference": format!("{c}/{r}")}}),
                    None => json!({"what": identifier("urn:medledger:record", r.to_string())}),
                }
            }
            None => json!({"what": e.patient.as_ref().map(account_ref).unwrap_or(Value::Null)}),
        };
        let mut event = json!({
            "resourceType": "AuditEvent",
            "id": e.seq.to_string(),
            "meta": {"versionId": "1", "lastUpdated": date::instant(e.time_ms)},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"},
            "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read", "display": "read"}],
            "action": if e.break_glass { "E" } else { "R" },
            "recorded": date::instant(e.time_ms),
            "outcome": if e.allowed { "0" } else { "4" },
            "outcomeDesc": e.reason,
            "purposeOfEvent": [{"coding": [{"system": ACT_REASON, "code": purpose_code(e.purpose)}]}],
            "agent": [{"who": account_ref(&e.accessor), "requestor": true}],
            "source": {"observer": account_ref(&e.reporter)},
        });
        if !entity["what"].is_null() {
            event["entity"] = json!([entity]);
        }
        Ok(event)
    }

    // ---- Provenance ---------------------------------------------------------------

    /// The ledger's record of who wrote which versions in one transaction.
    pub async fn read_provenance(&self, who: &Principal, id: &str) -> Result<Value, FhirError> {
        let tx =
            provenance_tx(id).ok_or_else(|| FhirError::NotFound("no such Provenance".into()))?;
        let ledger = self.ledger.clone();
        let found = tokio::task::spawn_blocking(move || -> medledger_ledger::Result<_> {
            let Some((_, signed, time)) = ledger.tx_in_block(&tx)? else {
                return Ok(None);
            };
            let candidates: Vec<RecordId> = match &signed.body.payload {
                Payload::AddRecord { .. } => vec![RecordId::from_tx(&tx)],
                Payload::AmendRecord { record, .. } => vec![*record],
                Payload::WriteRecords { items } => items
                    .iter()
                    .enumerate()
                    .map(|(i, w)| match w {
                        RecordWrite::Add { .. } => {
                            RecordId::in_batch(&signed.body.signer, signed.body.nonce, i as u32)
                        }
                        RecordWrite::Amend { record, .. } => *record,
                    })
                    .collect(),
                _ => return Ok(None),
            };
            let st = ledger.state()?;
            let mut targets = Vec::new();
            for r in candidates {
                if let Some(v) = query::record(&st, &r)? {
                    for h in v.history.iter().filter(|h| h.tx == tx) {
                        targets.push((r, v.state.category.clone(), v.state.patient, h.version));
                    }
                }
            }
            Ok(Some((signed, time, targets)))
        })
        .await
        .map_err(internal)?
        .map_err(internal)?
        .ok_or_else(|| FhirError::NotFound("no such Provenance".into()))?;
        let (signed, time, targets) = found;
        let author = signed.body.signer;
        let mut visible = Vec::new();
        for (r, cat, patient, version) in targets {
            if self.may_see_authorship(who, &author, &patient, r).await? {
                visible
                    .push(json!({"reference": format!("{}/{r}/_history/{version}", cat.as_str())}));
            }
        }
        // Authorship is visible to the author, the patient, auditors and those who
        // may read the record; absent to anyone else.
        if visible.is_empty() {
            return Err(FhirError::NotFound("no such Provenance".into()));
        }
        let signature = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            signed.signature.0,
        );
        Ok(json!({
            "resourceType": "Provenance",
            "id": provenance_id(&tx),
            "meta": {"versionId": "1", "lastUpdated": date::instant(time)},
            "target": visible,
            "recorded": date::instant(time),
            "agent": [{
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "author"}]},
                "who": account_ref(&author),
            }],
            "signature": [{
                "type": [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.1", "display": "Author's Signature"}],
                "when": date::instant(time),
                "who": account_ref(&author),
                "sigFormat": "application/octet-stream",
                "data": signature,
            }],
        }))
    }

    /// Provenance of every version of `target` (`Type/{id}`).
    pub async fn search_provenance(
        &self,
        who: &Principal,
        target: &str,
    ) -> Result<Vec<Value>, FhirError> {
        let r = target
            .rsplit('/')
            .next()
            .and_then(record_id)
            .ok_or_else(|| invalid("target must reference a resource: Type/{id}"))?;
        let Some(v) = self.lookup(|st| query::record(st, &r))? else {
            return Ok(Vec::new());
        };
        let mut txs: Vec<TxHash> = v.history.iter().map(|h| h.tx).collect();
        txs.dedup();
        let mut out = Vec::new();
        for tx in txs {
            match self.read_provenance(who, &provenance_id(&tx)).await {
                Ok(p) => out.push(p),
                Err(FhirError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The caller as the visibility rules see them ([`Viewer`]), so the FHIR views and
    /// `/v1` decide alike.
    fn viewer(&self, who: &Principal) -> Result<Viewer, FhirError> {
        self.lookup(|st| Viewer::of(st, who.account))
    }

    /// Authorship is not content: the author, the patient and auditors see it, and
    /// anyone the ledger would let read the record (decided, not audited: no content
    /// is read).
    async fn may_see_authorship(
        &self,
        who: &Principal,
        author: &AccountId,
        patient: &AccountId,
        record: RecordId,
    ) -> Result<bool, FhirError> {
        if who.account == *author || who.account == *patient || who.role == Role::Auditor {
            return Ok(true);
        }
        let at = now_ms();
        let d = self.lookup(|st| can_as(st, who, &record, at))?;
        Ok(d.is_ok_and(|(d, _)| d.allowed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provenance_ids_round_trip_and_fit_fhir() {
        let tx = TxHash(medledger_core::Digest32([0xab; 32]));
        let id = provenance_id(&tx);
        assert!(id.len() <= 64, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        assert_eq!(provenance_tx(&id), Some(tx));
        assert_eq!(provenance_tx("tx-notbase32!"), None);
        assert_eq!(provenance_tx(&"a".repeat(64)), None);
    }

    #[test]
    fn purposes_map_both_ways() {
        for p in Purpose::ALL {
            assert_eq!(purpose_from(purpose_code(p)), Some(p));
        }
        assert_eq!(purpose_from("NOPE"), None);
    }
}
