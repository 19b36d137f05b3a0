"""Hypothesis strategies for ChatModel specs, generated from the CRD's own schema (the one source of truth):
`accepted_by_crd` draws values of every field the schema describes, `violation` breaks one of them."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

TEXT = st.text(max_size=12)


def values(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Any value of the structural schema (CEL rules are checked by the caller)."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        if "properties" in schema:
            props = schema["properties"]
            required = set(schema.get("required", []))
            return st.fixed_dictionaries(
                {k: values(v) for k, v in props.items() if k in required},
                optional={k: values(v) for k, v in props.items() if k not in required},
            )
        inner = schema.get("additionalProperties")
        return st.dictionaries(TEXT, values(inner) if isinstance(inner, dict) else TEXT, max_size=3)
    if kind == "array":
        return st.lists(values(schema["items"]), max_size=min(schema.get("maxItems", 3), 3))
    if kind == "string":
        lo, hi = schema.get("minLength", 0), schema.get("maxLength", 40)
        if "pattern" in schema:
            strings = st.from_regex(schema["pattern"], fullmatch=True)
            return strings.filter(lambda s: lo <= len(s) <= hi)
        return st.text(min_size=lo, max_size=min(hi, 40))
    if kind == "integer":
        lo = schema.get("minimum")
        if lo is not None and schema.get("exclusiveMinimum"):
            lo += 1
        return st.integers(lo, schema.get("maximum"))
    if kind == "number":
        return st.floats(
            schema.get("minimum"),
            schema.get("maximum"),
            exclude_min=bool(schema.get("exclusiveMinimum")),
            allow_nan=False,
            allow_infinity=False,
        )
    if kind == "boolean":
        return st.booleans()
    raise ValueError(f"no strategy for schema {schema}")
