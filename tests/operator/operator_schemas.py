"""Validation of rendered objects: built-in kinds with kubernetes-validate (a recent version, strict), CRD
kinds (KEDA, Gateway API) against the published CRD schemas vendored in tests/operator/schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cel
import jsonschema
import kubernetes_validate
import yaml

K8S_VERSION = "1.37.0"
SCHEMAS = Path(__file__).parent / "schemas"


def crd_schema(file: str, version: str) -> dict[str, Any]:
    crd = yaml.safe_load((SCHEMAS / file).read_text())
    return next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]


CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): crd_schema("keda.sh_scaledobjects.yaml", "v1alpha1"),
    ("inference.networking.k8s.io/v1", "InferencePool"): crd_schema(
        "inference.networking.k8s.io_inferencepools.yaml", "v1"
    ),
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): crd_schema(
        "gateway.networking.k8s.io_httproutes.yaml", "v1"
    ),
}


def _cel_errors(schema: dict[str, Any], value: Any) -> list[str]:
    """The CRD's x-kubernetes-validations, where they only use what the cel package evaluates."""
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        try:
            ok = cel.evaluate(rule["rule"], {"self": value})
        except Exception:
            continue  # Kubernetes CEL extensions (e.g. isURL) the package lacks: the structural check stands
        if not ok:
            errors.append(rule["message"])
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += _cel_errors(sub, value[key])
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            errors += _cel_errors(schema["items"], item)
    return errors


def validate(obj: dict[str, Any]) -> None:
    schema = CRDS.get((obj["apiVersion"], obj["kind"]))
    if schema is None:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        return
    jsonschema.validate(obj, schema)
    assert _cel_errors(schema, obj) == []
