"""Validate Kubernetes objects against the API's own OpenAPI v3 schemas, as a strict API server would.

The schemas are `api/openapi-spec/v3/*.json` of the `k8s.io/kubernetes` Go module at `K8S_VERSION`, taken from the
Go module cache (scripts/setup.sh downloads the module through the Go module proxy); nothing is fetched here.

Owns: finding an object's schema by apiVersion/kind (`x-kubernetes-group-version-kind`) and checking the object:
types, required fields, enums, int-or-string, and unknown fields (an API server with fieldValidation=Strict, the
default of `kubectl apply` since 1.27, rejects them). Not checked: semantic rules the server applies in code
(name formats, immutability, cross-field validation) — the cluster e2e covers those with a real API server.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

K8S_VERSION = "v1.37.2"
MODULE = "k8s.io/kubernetes"


class SchemaMissing(RuntimeError):
    pass


def spec_dir() -> Path:
    """The v3 OpenAPI directory of k8s.io/kubernetes@K8S_VERSION in the Go module cache."""
    gomodcache = os.environ.get("GOMODCACHE", "")
    if not gomodcache:
        for go in ("go", "/usr/local/go/bin/go"):
            try:
                gomodcache = subprocess.run([go, "env", "GOMODCACHE"], capture_output=True, text=True,
                                            check=True, timeout=30).stdout.strip()
                break
            except (OSError, subprocess.CalledProcessError):
                continue
    gomodcache = gomodcache or os.path.expanduser("~/go/pkg/mod")
    directory = Path(gomodcache) / f"{MODULE}@{K8S_VERSION}" / "api" / "openapi-spec" / "v3"
    if not directory.is_dir():
        raise SchemaMissing(f"{directory} is missing: run scripts/setup.sh (it downloads {MODULE}@{K8S_VERSION})")
    return directory


@functools.cache
def _document(name: str) -> dict[str, Any]:
    return json.loads((spec_dir() / name).read_text())  # type: ignore[no-any-return]


def _document_for(api_version: str) -> dict[str, Any]:
    group, _, version = api_version.rpartition("/")
    name = f"apis__{group}__{version}_openapi.json" if group else f"api__{version}_openapi.json"
    try:
        return _document(name)
    except FileNotFoundError:
        raise AssertionError(f"apiVersion {api_version}: the API at {K8S_VERSION} has no such group/version") from None


def schema_for(obj: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    api_version, kind = str(obj.get("apiVersion", "")), str(obj.get("kind", ""))
    doc = _document_for(api_version)
    group, _, version = api_version.rpartition("/")
    for schema in doc["components"]["schemas"].values():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            if (gvk.get("group", ""), gvk["version"], gvk["kind"]) == (group, version, kind):
                return schema, doc
    raise AssertionError(f"{api_version} {kind}: no such kind in the API at {K8S_VERSION}")


def _resolve(schema: Mapping[str, Any], doc: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = doc["components"]["schemas"][name]
    return schema


def _check(value: Any, schema: Mapping[str, Any], doc: Mapping[str, Any], path: str, errors: list[str]) -> None:
    schema = _resolve(schema, doc)
    if value is None:
        return  # null is "unset" for the API server
    for part in schema.get("allOf", []):
        _check(value, part, doc, path, errors)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            tries = []
            for option in schema[key]:
                sub: list[str] = []
                _check(value, option, doc, path, sub)
                tries.append(sub)
            if all(tries):
                errors.append(f"{path}: matches none of {key}: {tries[0][0]}")
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            errors.append(f"{path}: must be an integer or a string, got {type(value).__name__}")
        return
    kind = schema.get("type")
    expected: dict[str, type | tuple[type, ...]] = {"object": dict, "array": list, "string": str, "boolean": bool,
                                                    "integer": int, "number": (int, float)}
    if kind in expected:
        ok = isinstance(value, expected[kind]) and not (kind in ("integer", "number") and isinstance(value, bool))
        if not ok:
            errors.append(f"{path}: must be {kind}, got {type(value).__name__} {value!r}"[:300])
            return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, dict) and (kind == "object" or "properties" in schema):
        for required in schema.get("required", []):
            if required not in value:
                errors.append(f"{path}: missing required field {required!r}")
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if key in properties:
                _check(item, properties[key], doc, f"{path}.{key}", errors)
            elif isinstance(extra, Mapping):
                _check(item, extra, doc, f"{path}.{key}", errors)
            elif properties or extra is False:
                errors.append(f"{path}: unknown field {key!r}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            _check(item, schema["items"], doc, f"{path}[{index}]", errors)


def validate(obj: Mapping[str, Any]) -> list[str]:
    """Every problem with `obj` (empty: valid), each naming the field path."""
    schema, doc = schema_for(obj)
    errors: list[str] = []
    name = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name', '?')}"
    _check(obj, schema, doc, name, errors)
    return errors
