"""Checks real answers of a node against its own OpenAPI document.

Usage: openapi_conformance.py DOC.json ANSWERS.json

ANSWERS is a list of {"path": template, "method": "get", "status": 200, "body": ...}.
Each body is validated (JSON Schema 2020-12, `jsonschema`) against the schema the
document gives for that path, method and status; an undocumented status is a failure
too. Prints one line per answer and exits non-zero if any does not conform.
"""

import json
import sys

import jsonschema


def response_schema(doc, path, method, status):
    op = doc["paths"][path][method]
    resp = op["responses"].get(str(status))
    if resp is None:
        raise KeyError(f"status {status} is not documented")
    if "$ref" in resp:
        name = resp["$ref"].rsplit("/", 1)[-1]
        resp = doc["components"]["responses"][name]
    return resp["content"]["application/json"]["schema"]


def main():
    doc = json.load(open(sys.argv[1]))
    answers = json.load(open(sys.argv[2]))
    failed = 0
    for a in answers:
        label = f'{a["method"].upper()} {a["path"]} {a["status"]}'
        try:
            schema = dict(response_schema(doc, a["path"], a["method"], a["status"]))
            # Let "#/components/..." references resolve inside the document.
            schema["components"] = doc["components"]
            jsonschema.Draft202012Validator(schema).validate(a["body"])
            print(f"ok   {label}")
        except (KeyError, jsonschema.ValidationError) as e:
            failed += 1
            msg = e.message if isinstance(e, jsonschema.ValidationError) else str(e)
            print(f"FAIL {label}: {msg}")
    print(f"{len(answers) - failed} of {len(answers)} answers conform")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
