"""Property tests over the whole ChatModel spec, generated from the CRD's own schema:
- every spec the CRD accepts (structure and CEL rules) is accepted by the operator's model too, and renders
  objects that pass their schemas (kubernetes-validate, strict; the published models for the other kinds)
  and, for pods, the restricted Pod Security Standard;
- a spec with one field broken (wrong type, out of range, outside its enum or pattern, an unknown field) is
  refused by the CRD and by the operator's model, each naming that field.
CHATMODEL_PROPERTY_EXAMPLES sets how many specs each test draws (default 300)."""

from __future__ import annotations

import copy
import os
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from chatmodel_operator.builders import all_objects
from chatmodel_operator.config import Config
from chatmodel_operator.spec import ChatModel
from tests.operator.crd_strategies import values
from tests.operator.operator_crdcheck import root_schema, validate
from tests.operator.operator_pss import pod_spec_of, violations
from tests.operator.operator_schemas import validate as schema_validate

EXAMPLES = int(os.environ.get("CHATMODEL_PROPERTY_EXAMPLES", "300"))
SPEC = root_schema()["properties"]["spec"]
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,  # the same specs every run; `make fuzz` draws more
    suppress_health_check=list(HealthCheck),
    phases=[Phase.generate, Phase.shrink],
)


def manifest(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "chatmodel.dev/v1alpha1",
        "kind": "ChatModel",
        "metadata": {"name": "bot", "namespace": "team", "uid": "u-1"},
        "spec": spec,
    }


@SETTINGS
@given(spec=values(SPEC))
def test_every_spec_the_crd_accepts_renders_valid_restricted_objects(spec: dict[str, Any]) -> None:
    doc = manifest(spec)
    errors = validate(doc)
    if errors:  # a structurally valid spec refused by a CEL rule: the rule's message names the fields
        assert all(re.search(r"spec\.[a-zA-Z]+", e.split(": ", 1)[1]) for e in errors), errors
        with pytest.raises(ValidationError):  # `chatmodel run` has no API server: the model holds the rules
            ChatModel.model_validate(doc)
        return
    cm = ChatModel.model_validate(doc)  # what the API server stores, the operator can read
    for obj in all_objects(cm, Config()):
        schema_validate(obj)
        pod = pod_spec_of(obj)
        if pod is not None:
            assert violations(pod) == [], obj["kind"]


def bad_values(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values the field's schema refuses (and that pydantic's lax mode does not coerce either)."""
    kind = schema.get("type")
    bad: list[Any] = []
    if "enum" in schema:
        bad.append("not-one-of-them")
    if kind == "string":
        bad.append(7)
        if "pattern" in schema:
            bad.append("Not Valid!")
        if "maxLength" in schema:
            bad.append("a" * (schema["maxLength"] + 1))
    elif kind in ("integer", "number"):
        bad.append("many")
        if kind == "integer":
            bad.append(1.5)
        if "minimum" in schema:
            bad.append(schema["minimum"] - (0 if schema.get("exclusiveMinimum") else 1))
        if "maximum" in schema:
            bad.append(schema["maximum"] + 1)
    elif kind == "boolean":
        bad.append("maybe")
    elif kind == "object":
        bad.append("an object, not a string")
        if "properties" in schema:
            bad.append({"noSuchField": 1})
    elif kind == "array":
        bad.append("a list, not a string")
        if "maxItems" in schema:
            bad.append([None] * (schema["maxItems"] + 1))
    return st.sampled_from(bad)


@st.composite
def broken(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """An accepted spec with one field (at any depth) set to a value its schema refuses, and that field's
    path. The field names the object whose unknown key it is, for an unknown field."""
    spec = draw(values(SPEC))
    assume(validate(manifest(spec)) == [])
    spec = copy.deepcopy(spec)
    schema, node, path = SPEC, spec, ["spec"]
    while True:
        name = draw(st.sampled_from(sorted(schema["properties"])))
        sub = schema["properties"][name]
        if sub.get("type") == "object" and "properties" in sub and draw(st.integers(0, 3)) > 0:
            child = node.get(name)
            if not isinstance(child, dict):
                child = node[name] = {}
            schema, node, path = sub, child, [*path, name]
            continue
        node[name] = draw(bad_values(sub))
        return spec, ".".join([*path, name])


@SETTINGS
@given(case=broken())
def test_every_spec_the_crd_refuses_is_refused_naming_the_field(case: tuple[dict[str, Any], str]) -> None:
    spec, field = case
    doc = manifest(spec)
    errors = validate(doc)
    assert any(e.startswith(field) or f" {field}" in e for e in errors), (field, errors)
    try:
        ChatModel.model_validate(doc)
    except ValidationError as e:
        assert field in str(e), (field, str(e))
    else:
        raise AssertionError(f"the operator's model accepted {field} = {spec}")
