"""Generate the ChatModel CRD from spec.py, so the schema and the pydantic models cannot drift.

`python -m chatmodel_operator.crd` prints it; manifests/crds/chatmodels.chatmodel.dev.yaml is its output
(a test compares the two).
"""

from __future__ import annotations

import sys
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from chatmodel_operator import spec as s

# Derived object names append "-<10-char version>-train", which must stay within 63 characters.
NAME_RULE = {
    "rule": "self.metadata.name.size() <= 40",
    "message": "metadata.name must be at most 40 characters (derived object names append a version)",
}

_SCALARS: dict[type, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


STRING_CONSTRAINTS = (("pattern", "pattern"), ("min_length", "minLength"), ("max_length", "maxLength"))


def type_schema(tp: Any) -> dict[str, Any]:
    """OpenAPI v3 schema of one Python type used in spec.py."""
    tp = _strip_optional(tp)
    origin = get_origin(tp)
    if origin is Annotated:  # list items with their own constraints (StringConstraints)
        base, *metadata = get_args(tp)
        schema = type_schema(base)
        for m in metadata:
            for attr, key in STRING_CONSTRAINTS:
                if getattr(m, attr, None) is not None:
                    schema[key] = getattr(m, attr)
        return schema
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return model_schema(tp)
    if origin is Literal:
        values = list(get_args(tp))
        return {"type": _SCALARS[type(values[0])], "enum": values}
    if origin is list:
        return {"type": "array", "items": type_schema(get_args(tp)[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": type_schema(get_args(tp)[1])}
    if tp in _SCALARS:
        return {"type": _SCALARS[tp]}
    raise TypeError(f"no OpenAPI mapping for {tp!r}")


def _constraints(field: FieldInfo) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in field.metadata:
        if isinstance(m, at.Ge):
            out["minimum"] = m.ge
        elif isinstance(m, at.Le):
            out["maximum"] = m.le
        elif isinstance(m, at.Gt):
            out["minimum"], out["exclusiveMinimum"] = m.gt, True
        elif isinstance(m, at.Lt):
            out["maximum"], out["exclusiveMaximum"] = m.lt, True
        elif isinstance(m, at.MinLen):
            out["minLength"] = m.min_length
        elif isinstance(m, at.MaxLen):
            out["maxLength"] = m.max_length
        elif getattr(m, "pattern", None):
            out["pattern"] = m.pattern
    return out


def _without_empty(value: dict[str, Any]) -> dict[str, Any]:
    """Nested defaults minus empty lists and maps, which the CRD leaves absent elsewhere too."""
    out = {}
    for k, v in value.items():
        if isinstance(v, dict) and v:
            v = _without_empty(v)
        if v not in ({}, []):
            out[k] = v
    return out


def _default(field: FieldInfo, schema: dict[str, Any]) -> Any:
    """The CRD default, or None. An object's default is written out whole: the API server validates a
    default (CEL rules included) as it stands, without filling in the defaults nested inside it, so
    `default: {}` on an object whose rules read its fields is refused ("no such key")."""
    if field.default_factory is not None:
        made = field.get_default(call_default_factory=True, validated_data={})
        if isinstance(made, BaseModel):
            return _without_empty(made.model_dump(mode="json", by_alias=True, exclude_none=True))
        return None  # empty lists and maps: leave absent
    if field.default is None or field.is_required():
        return None
    return field.default if schema.get("type") != "number" else float(field.default)


def field_schema(field: FieldInfo) -> dict[str, Any]:
    schema = type_schema(field.annotation)
    schema["description"] = field.description or ""
    schema.update(_constraints(field))
    if schema.get("type") == "object" and "maxLength" in schema:  # pydantic's max_length on a dict
        schema["maxProperties"] = schema.pop("maxLength")
    if schema.get("type") == "array":
        if "maxLength" in schema:  # pydantic's max_length on a list
            schema["maxItems"] = schema.pop("maxLength")
        schema["items"].setdefault("description", "One item of the list.")
    default = _default(field, schema)
    if default is not None:
        schema["default"] = default
    return schema


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, field in model.model_fields.items():
        alias = field.alias or name
        properties[alias] = field_schema(field)
        if field.is_required():
            required.append(alias)
    out: dict[str, Any] = {
        "type": "object",
        "description": (model.__doc__ or "").strip().splitlines()[0],
        "properties": properties,
    }
    if required:
        out["required"] = required
    rules = getattr(model, "rules", ())
    if rules:
        out["x-kubernetes-validations"] = [{"rule": r.cel, "message": r.message} for r in rules]
    return out


def build_crd() -> dict[str, Any]:
    root = {
        "type": "object",
        "description": "A chat model: an optional fine-tune, then a versioned OpenAI-compatible endpoint.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "chatmodel.dev/v1alpha1"},
            "kind": {"type": "string", "description": "ChatModel"},
            "metadata": {"type": "object"},
            "spec": model_schema(s.ChatModelSpec),
            "status": model_schema(s.ChatModelStatus),
        },
        "x-kubernetes-validations": [NAME_RULE],
    }
    columns = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Version", "type": "string", "jsonPath": ".status.activeVersion"},
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{s.PLURAL}.{s.GROUP}", "labels": {"app.kubernetes.io/part-of": "chatmodel"}},
        "spec": {
            "group": s.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": s.KIND,
                "listKind": f"{s.KIND}List",
                "plural": s.PLURAL,
                "singular": s.KIND.lower(),
                "shortNames": [s.SHORT_NAME],
                "categories": ["all", "ai"],
            },
            "versions": [
                {
                    "name": s.VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.serving.replicas.min",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def render_crd() -> str:
    header = "# Generated by `python -m chatmodel_operator.crd` from spec.py. Do not edit by hand.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=110)


if __name__ == "__main__":
    sys.stdout.write(render_crd())
