"""What the API server would do with a ChatModel, without one: apply the CRD's defaults, check the
structural schema (jsonschema, unknown fields refused as `kubectl apply` does), then the CEL rules."""

from __future__ import annotations

import copy
from typing import Any, cast

import cel
import jsonschema

from chatmodel_operator.crd import build_crd


def root_schema() -> dict[str, Any]:
    return cast(dict[str, Any], build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(sub, value[key])
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Refuse unknown fields, as server-side strict field validation does."""
    out = {k: (_strict(v) if isinstance(v, dict) else v) for k, v in schema.items()}
    if "properties" in out:
        out["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        out.setdefault("additionalProperties", False)
    return out


def _cel_errors(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        if not cel.evaluate(rule["rule"], {"self": value}):
            errors.append(f"{path}: {rule['message']}")
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += _cel_errors(sub, value[key], f"{path}.{key}" if path else key)
    elif isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errors += _cel_errors(schema["items"], v, f"{path}[{i}]")
    return errors


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<root>"


def validate(manifest: dict[str, Any]) -> list[str]:
    """Error messages, each starting with the path of the field at fault; [] when the API would accept it."""
    schema = root_schema()
    obj = apply_defaults(schema, copy.deepcopy(manifest))
    strict = _strict(schema)
    strict["properties"]["metadata"] = {"type": "object"}  # metadata is the API server's, not ours
    validator = jsonschema.Draft4Validator(strict)
    errors = [f"{_path(e)}: {e.message}" for e in validator.iter_errors(obj)]
    if errors:
        return errors  # CEL only runs on a structurally valid object
    return _cel_errors(schema, obj, "")
