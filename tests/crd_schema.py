"""Validate a manifest against a vendored CustomResourceDefinition's schema (tests/schemas/).

`validate(manifest, crd_file)` checks a custom resource (PyTorchJob, Profile, ...) the way
`kubectl apply --validate=strict` has the API server check it: the CRD's openAPIV3Schema for
the manifest's version, and unknown fields refused wherever the schema lists the properties
(the server would drop them silently otherwise). `validate_definition` does the same against
one definition of a Swagger 2 file (Katib publishes its API types that way, its CRDs carry no
schema). The vendored files and their sources: tests/schemas/SOURCES.md.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMAS = Path(__file__).resolve().parent / "schemas"


def strict(schema: Any) -> Any:
    """A copy of an OpenAPI v3 schema as a JSON Schema that refuses unknown fields: objects
    with listed properties get additionalProperties false unless they keep unknown fields;
    `x-kubernetes-int-or-string` becomes "integer or string"."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items()}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("anyOf", None)
        out["type"] = ["integer", "string"]
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_schema(crd_file: str) -> tuple[dict, dict]:
    """(the CRD, its versions' schemas by version name)."""
    crd = yaml.safe_load((SCHEMAS / crd_file).read_text())
    versions = {v["name"]: v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"]}
    return crd, versions


def validate(manifest: dict, crd_file: str) -> None:
    """Raise jsonschema.ValidationError (or AssertionError for a kind or version the CRD does
    not define) unless `manifest` is a valid object of the CRD in tests/schemas/`crd_file`."""
    crd, versions = crd_schema(crd_file)
    group, _, version = manifest["apiVersion"].rpartition("/")
    assert group == crd["spec"]["group"], f"{manifest['apiVersion']}: not the group {crd['spec']['group']}"
    assert manifest["kind"] == crd["spec"]["names"]["kind"], manifest["kind"]
    assert version in versions, f"{manifest['apiVersion']}: the CRD serves {sorted(versions)}"
    schema = strict(versions[version])
    if "properties" in schema:
        # metadata is the API server's ObjectMeta (CRDs declare only `type: object`).
        schema["properties"]["metadata"] = {"type": "object"}
    jsonschema.Draft7Validator(schema).validate(manifest)


def validate_definition(obj: Any, swagger_file: str, definition: str) -> None:
    """Raise jsonschema.ValidationError unless `obj` is valid for `definition` of a Swagger 2
    file in tests/schemas/. References to definitions the file does not carry (Kubernetes'
    own types, e.g. v1.ObjectMeta, v1.Container) accept anything: check those parts with
    kubernetes_validate."""
    definitions = json.loads((SCHEMAS / swagger_file).read_text())["definitions"]

    def resolve(schema: Any) -> Any:
        if isinstance(schema, list):
            return [resolve(item) for item in schema]
        if not isinstance(schema, dict):
            return schema
        ref = schema.get("$ref", "")
        if ref and ref.removeprefix("#/definitions/") not in definitions:
            return {}
        return {key: resolve(value) for key, value in schema.items()}

    schema = {
        "$ref": f"#/definitions/{definition}",
        "definitions": strict(resolve(copy.deepcopy(definitions))),
    }
    jsonschema.Draft7Validator(schema).validate(obj)
