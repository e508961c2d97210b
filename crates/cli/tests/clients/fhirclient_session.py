"""A session of the PyPI `fhirclient` (SMART on FHIR's Python client, R4 models)
against a running medledger node: create, read, search and page through patients
and observations, through the library's own server and search classes only.

Environment: FHIR_BASE (https://127.0.0.1:PORT/fhir), FHIR_TOKEN (API token),
FHIR_CA (the node's self-signed certificate). Prints one JSON line of what it did.
"""

import json
import os
import ssl

import requests.adapters

from fhirclient import server as fserver
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient


class TrustNodeCert(requests.adapters.HTTPAdapter):
    """Trusts exactly the node's self-signed certificate. It is a leaf, not a CA,
    so OpenSSL needs partial-chain verification to take it as the trust anchor."""

    def init_poolmanager(self, *args, **kwargs):
        ctx = ssl.create_default_context(cafile=os.environ["FHIR_CA"])
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        kwargs["ssl_context"] = ctx
        return super().init_poolmanager(*args, **kwargs)


srv = fserver.FHIRServer(None, base_uri=os.environ["FHIR_BASE"])
srv.session.mount("https://", TrustNodeCert())
srv.session.headers["Authorization"] = "Bearer " + os.environ["FHIR_TOKEN"]

# The server describes itself (the client parses the CapabilityStatement).
cap = srv.capabilityStatement
assert cap.fhirVersion == "4.0.1", cap.fhirVersion

created_patients = []
for i, (family, given, gender) in enumerate(
    [("Zorbel", "Quin", "female"), ("Zorbel", "Tavo", "male"), ("Miraq", "Lenn", "other")]
):
    p = Patient(
        {
            "resourceType": "Patient",
            "name": [{"family": family, "given": [given]}],
            "gender": gender,
            "birthDate": "19%02d-0%d-1%d" % (60 + i, i + 1, i),
            "identifier": [{"system": "urn:example:fhirclient-test", "value": "fc-%d" % i}],
        }
    )
    answer = p.create(srv)
    created = Patient(answer)
    assert created.id and created.meta.versionId == "1", answer
    created_patients.append(created.id)

# Read back through the model class.
first = Patient.read(created_patients[0], srv)
assert first.name[0].family == "Zorbel" and first.gender == "female"

# Seven body-weight observations for the first patient.
observations = []
for k in range(7):
    o = Observation(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body weight"}]},
            "subject": {"reference": "Patient/" + created_patients[0]},
            "effectiveDateTime": "2025-0%d-01" % (k + 1),
            "valueQuantity": {"value": 60 + k, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
        }
    )
    observations.append(Observation(o.create(srv)).id)
one = Observation.read(observations[3], srv)
assert one.valueQuantity.value == 63, one.as_json()

# Search with paging: the library follows the Bundle's next links itself.
search = Observation.where(struct={"patient": created_patients[0], "code": "http://loinc.org|29463-7", "_count": "3"})
pages = list(search.perform_iter(srv))
paged = [e.resource.id for b in pages for e in (b.entry or [])]
assert len(pages) == 3, len(pages)
assert sorted(paged) == sorted(observations), (paged, observations)

# Search patients by name and by date.
zorbels = Patient.where(struct={"family": "zorbel"}).perform_resources(srv)
assert sorted(p.id for p in zorbels) == sorted(created_patients[:2])
older = Patient.where(struct={"birthdate": "lt1961-06-01", "identifier": "urn:example:fhirclient-test|fc-0"}).perform_resources(srv)
assert [p.id for p in older] == [created_patients[0]]
since = Observation.where(struct={"patient": created_patients[0], "date": "ge2025-05-01"}).perform_resources(srv)
assert len(since) == 3, [o.effectiveDateTime.isostring for o in since]

print(json.dumps({"patients": created_patients, "observations": observations, "pages": len(pages)}))
