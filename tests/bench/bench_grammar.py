"""Grammar-library benchmark for structured outputs: xgrammar (what engine/grammar.py uses) against
llguidance, on the built-in model's tokenizer, same inputs, same run. For each library:

  * tokenizer setup: xgrammar's TokenizerInfo + GrammarCompiler, llguidance's LLTokenizer; then the
    first grammar and its first mask (one-time work: llguidance builds its token tables there);
  * compile time (best of N) of ~30 JSON schemas of varied shape, two regexes, one EBNF and one Lark
    grammar, from the text to a matcher ready for its first mask; the cases a library refuses;
  * mask time per token: each accepted case's valid answer (a deterministic instance, serialised on one
    line as the server's grammar emits it) walked token by token, then its end token: the next-token
    bitmask filled and the matcher advanced, for one sequence, and for 32 sequences of mixed cases
    filled by each library's batched (multi-threaded) call, at 1 thread (what the engine's
    BatchGrammarMatcher() gets on a 2-core machine: "auto" is half the cores) and at one per core;
  * correctness: every token of a valid answer (and the end token after it) must be allowed by the mask;
    and enforcement: for the cases that carry an invalid answer, a library "lets it through" when its
    masks allow every one of its tokens and the end token.

Both use the server's JSON settings: no free whitespace, separators ", " and ": " (xgrammar's default
with any_whitespace=False), xgrammar's strict mode. Writes the `grammar` section of bench-results.json.

    python -m tests.bench.bench_grammar [--quick] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import torch

from chatmodel_serving.models import DEFAULT_SOURCE, resolve_source
from tests.bench.results import record

if TYPE_CHECKING:  # llguidance ships its own stubs (py.typed); JsonCompileOptions exists only there
    from llguidance import LLMatcher
    from llguidance._lib import JsonCompileOptions

BATCH = 32
SEPARATORS = (", ", ": ")  # xgrammar's separators with any_whitespace=False and no indent
FORMATS = {
    "email": "ada@example.com",
    "date": "2024-05-17",
    "date-time": "2024-05-17T12:30:00Z",
    "uuid": "123e4567-e89b-12d3-a456-426614174000",
    "ipv4": "192.168.0.1",
}
PATTERNS = {
    "^[0-9]{5}$": "94110",
    "^[A-Z]{3}-[0-9]{4}$": "ABC-1234",
    "^[0-9]{16}$": "4111111111111111",
    "^[a-z][a-z0-9_]{2,15}$": "user_42",
}


@dataclass
class Case:
    """One input: a JSON schema (spec is a dict) or a regex/EBNF/Lark text, with a valid answer (generated
    from the schema when None) and optionally an invalid one the grammar must block."""

    name: str
    kind: str  # json | regex | ebnf | lark
    spec: Any
    good: Any = None
    bad: Any = None
    quick: bool = False
    text: str = field(init=False, default="")
    bad_text: str | None = field(init=False, default=None)


def obj(props: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props, **extra}
    schema["required"] = list(props) if required is None else required
    return schema


STR, INT, NUM, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
NODE = obj({"value": INT, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 3}})
ARITH_EBNF = """root ::= expr
expr ::= term (("+" | "-") term)*
term ::= factor (("*" | "/") factor)*
factor ::= [0-9]+ | "(" expr ")"
"""
ARITH_LARK = """start: expr
expr: term (("+" | "-") term)*
term: factor (("*" | "/") factor)*
factor: NUMBER | "(" expr ")"
NUMBER: /[0-9]+/
"""


def cases() -> list[Case]:
    person = obj(
        {"name": {"type": "string", "maxLength": 40}, "age": {**INT, "minimum": 0, "maximum": 150}},
        ["name", "age"],
    )
    person["properties"]["email"] = {"type": "string", "format": "email"}
    address = obj({"street": STR, "city": STR, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}})
    deep: dict[str, Any] = obj({"e": STR})
    for key in "dcba":
        deep = obj({key: deep})
    return [
        Case("flat_person", "json", person, bad={"age": 3}, quick=True),
        Case(
            "enum_status",
            "json",
            obj({"status": {"enum": ["queued", "running", "done", "failed"]}, "code": {"enum": [200, 404]}}),
            bad={"status": "paused", "code": 200},
        ),
        Case(
            "array_bounds",
            "json",
            obj({"tags": {"type": "array", "items": {**STR, "maxLength": 12}, "minItems": 2, "maxItems": 4}}),
            bad={"tags": ["a", "b", "c", "d", "e"]},
            quick=True,
        ),
        Case("nested_address", "json", obj({"name": STR, "address": address}), quick=True),
        Case(
            "number_bounds",
            "json",
            obj(
                {
                    "price": {**NUM, "minimum": 0, "exclusiveMaximum": 10000},
                    "qty": {**INT, "minimum": 1, "maximum": 99},
                    "ratio": {**NUM, "minimum": 0, "maximum": 1},
                }
            ),
            bad={"price": 5.5, "qty": 100, "ratio": 0.5},
        ),
        Case(
            "string_pattern",
            "json",
            obj({"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"}}),
            bad={"sku": "abc-1234"},
        ),
        Case(
            "defs_ref",
            "json",
            {
                **obj({"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}}),
                "$defs": {"point": obj({"x": NUM, "y": NUM})},
            },
            quick=True,
        ),
        Case("recursive_tree", "json", {"$ref": "#/$defs/node", "$defs": {"node": NODE}}),
        Case(
            "nullable",
            "json",
            obj({"note": {"type": ["string", "null"]}, "n": {"type": ["integer", "null"]}}),
        ),
        Case(
            "anyof_shape",
            "json",
            obj(
                {
                    "shape": {
                        "anyOf": [
                            obj({"kind": {"const": "circle"}, "r": NUM}),
                            obj({"kind": {"const": "rect"}, "w": NUM, "h": NUM}),
                        ]
                    }
                }
            ),
        ),
        Case(
            "oneof_payment",
            "json",
            {
                "oneOf": [
                    obj({"type": {"const": "card"}, "number": {"type": "string", "pattern": "^[0-9]{16}$"}}),
                    obj({"type": {"const": "bank"}, "iban": STR}),
                ]
            },
        ),
        Case(
            "allof_merge",
            "json",
            {"type": "object", "allOf": [obj({"id": INT}), obj({"label": STR})]},
        ),
        Case(
            "closed_object",
            "json",
            obj({"version": {"const": "v1"}, "data": obj({"k": STR})}, additionalProperties=False),
            bad={"version": "v1", "data": {"k": "x"}, "extra": 1},
        ),
        Case("string_map", "json", {"type": "object", "additionalProperties": INT}),
        Case(
            "array_of_objects",
            "json",
            {"type": "array", "items": obj({"id": INT, "done": BOOL}), "minItems": 3, "maxItems": 3},
            quick=True,
        ),
        Case(
            "tuple_prefix",
            "json",
            {"type": "array", "prefixItems": [STR, INT, BOOL], "items": False},
        ),
        Case("deep_nesting", "json", deep),
        Case("wide_object", "json", obj({f"f{i:02d}": INT if i % 2 else STR for i in range(20)})),
        Case(
            "string_lengths",
            "json",
            obj({"code": {**STR, "minLength": 8, "maxLength": 8}, "desc": {**STR, "minLength": 3}}),
            bad={"code": "1234567", "desc": "abc"},
        ),
        Case(
            "formats",
            "json",
            obj({k.replace("-", "_"): {"type": "string", "format": k} for k in FORMATS if k != "email"}),
            bad={"date": "not-a-date", "date_time": "x", "uuid": "x", "ipv4": "x"},
        ),
        Case(
            "integer_multiple",
            "json",
            obj({"step": {**INT, "multipleOf": 5, "minimum": 10, "maximum": 100}}),
            bad={"step": 12},
        ),
        Case("enum_mixed", "json", obj({"v": {"enum": ["a", 1, None, True]}})),
        Case(
            "number_array",
            "json",
            obj({"xs": {"type": "array", "items": {**NUM, "minimum": -1, "maximum": 1}, "maxItems": 8}}),
        ),
        Case(
            "nested_arrays",
            "json",
            obj(
                {
                    "m": {
                        "type": "array",
                        "items": {"type": "array", "items": INT, "minItems": 2, "maxItems": 2},
                    }
                }
            ),
        ),
        Case(
            "optional_fields",
            "json",
            obj({"id": INT, "a": STR, "b": INT, "c": BOOL, "d": NUM, "e": STR}, ["id"]),
        ),
        Case(
            "tool_call",
            "json",
            obj(
                {
                    "name": {"enum": ["search", "lookup", "fetch"]},
                    "arguments": obj(
                        {"query": STR, "limit": {**INT, "minimum": 1, "maximum": 50}}, ["query"]
                    ),
                }
            ),
            quick=True,
        ),
        Case(
            "definitions_legacy",
            "json",
            {
                **obj({"items": {"type": "array", "items": {"$ref": "#/definitions/item"}}}),
                "definitions": {
                    "item": obj({"user": {"type": "string", "pattern": "^[a-z][a-z0-9_]{2,15}$"}})
                },
            },
        ),
        Case(
            "string_escapes",
            "json",
            obj({"text": STR}),
            good={"text": 'He said "hi"\n\ttabbed \\ back – ünïcode 日本'},
        ),
        Case(
            "min_max_properties",
            "json",
            {"type": "object", "additionalProperties": STR, "minProperties": 2, "maxProperties": 3},
            bad={"k0": "a", "k1": "b", "k2": "c", "k3": "d"},
        ),
        # Keywords engine/grammar.py refuses up front (xgrammar is said to ignore them): which library
        # compiles them, and which enforces them.
        Case(
            "unique_items",
            "json",
            {"type": "array", "items": INT, "uniqueItems": True},
            good=[1, 2],
            bad=[1, 1],
        ),
        Case("not_keyword", "json", obj({"s": {"type": "string", "not": {"const": "no"}}}), bad={"s": "no"}),
        Case(
            "contains",
            "json",
            {"type": "array", "items": INT, "contains": {"const": 5}},
            good=[1, 5],
            bad=[1, 2],
        ),
        Case(
            "regex_phone", "regex", r"\d{3}-\d{3}-\d{4}", good="555-123-4567", bad="555-1234-567", quick=True
        ),
        Case(
            "regex_email", "regex", r"[a-z]+@[a-z]+\.(com|org)", good="ada@example.org", bad="ada@example.net"
        ),
        Case("ebnf_arith", "ebnf", ARITH_EBNF, good="(1+2)*34-5/6", bad="(1+2", quick=True),
        Case("lark_arith", "lark", ARITH_LARK, good="(1+2)*34-5/6", bad="1++2", quick=True),
    ]


# ---- a valid instance of a schema, deterministically ---------------------------------------------------


def resolve(root: dict[str, Any], ref: str) -> Any:
    node: Any = root
    for part in ref.removeprefix("#").strip("/").split("/"):
        if part:
            node = node[part]
    return node


def number(schema: dict[str, Any], integer: bool) -> int | float:
    step = 1 if integer else 0.5
    lo: float | None = schema.get("minimum")
    hi: float | None = schema.get("maximum")
    if "exclusiveMinimum" in schema:
        lo = schema["exclusiveMinimum"] + step
    if "exclusiveMaximum" in schema:
        hi = schema["exclusiveMaximum"] - step
    if lo is None:
        value: float = (42 if integer else 3.25) if hi is None else hi - 1
    elif hi is None:
        value = lo + 7
    else:
        value = lo + (hi - lo) / 2
    if integer:
        value = math.floor(value)
        if "multipleOf" in schema:
            m = schema["multipleOf"]
            value = math.ceil(value / m) * m
            if hi is not None and value > hi:
                value -= m
        return int(value)
    return round(value, 2)


def example(schema: Any, root: dict[str, Any], depth: int = 0) -> Any:
    if schema is True or schema == {}:
        return "any"
    if "$ref" in schema:
        return example(resolve(root, schema["$ref"]), root, depth)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][-1]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return example(schema[key][0], root, depth)
    if "allOf" in schema:
        merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
        for part in schema["allOf"]:
            merged["properties"].update(part.get("properties", {}))
            merged["required"] += part.get("required", [])
        return example(merged, root, depth)
    kind = schema.get("type", "object")
    kind = kind[0] if isinstance(kind, list) else kind
    if kind == "object":
        props, required = schema.get("properties", {}), schema.get("required", [])
        optional = [k for k in props if k not in required]
        kept = [k for k in props if k in required or optional.index(k) % 2 == 0]
        out = {k: example(props[k], root, depth + 1) for k in kept}
        if not props and isinstance(schema.get("additionalProperties"), dict):
            for i in range(max(schema.get("minProperties", 0), 1)):
                out[f"k{i}"] = example(schema["additionalProperties"], root, depth + 1)
        return out
    if kind == "array":
        if "prefixItems" in schema:
            return [example(s, root, depth + 1) for s in schema["prefixItems"]]
        low, high = schema.get("minItems", 0), schema.get("maxItems", 2)
        n = low if depth >= 3 else max(low, min(2, high))
        return [example(schema.get("items", {}), root, depth + 1) for _ in range(n)]
    if kind == "string":
        if "format" in schema:
            return FORMATS[schema["format"]]
        if "pattern" in schema:
            return PATTERNS[schema["pattern"]]
        text = "hello world"[: schema.get("maxLength", 11)]
        return text.ljust(schema.get("minLength", 0), "x")
    if kind in ("integer", "number"):
        return number(schema, kind == "integer")
    if kind == "boolean":
        return True
    return None


def serialise(case: Case, value: Any) -> str:
    if case.kind != "json":
        return str(value)
    return json.dumps(value, separators=SEPARATORS, ensure_ascii=False)


def prepare(all_cases: list[Case]) -> None:
    """Fill in each case's answers; the valid one is checked against its schema (jsonschema)."""
    import jsonschema

    for case in all_cases:
        if case.kind == "json":
            if case.good is None:
                case.good = example(case.spec, case.spec)
            jsonschema.validators.validator_for(case.spec)(case.spec).validate(case.good)
        case.text = serialise(case, case.good)
        case.bad_text = None if case.bad is None else serialise(case, case.bad)


# ---- the two libraries behind one interface -----------------------------------------------------------

M = TypeVar("M")


class Library(ABC, Generic[M]):
    name = ""

    @abstractmethod
    def setup(self, tokenizer: Any, vocab_size: int, eos: int) -> None: ...

    @abstractmethod
    def set_threads(self, threads: int) -> None:
        """The threads of the batched calls."""

    @abstractmethod
    def matcher(self, case: Case) -> M:
        """A matcher ready for its first mask; raises ValueError when the library refuses the case."""

    @abstractmethod
    def fill(self, matcher: M, bitmask: torch.Tensor, row: int) -> None: ...

    @abstractmethod
    def accept(self, matcher: M, token: int) -> bool: ...

    @abstractmethod
    def reset(self, matcher: M) -> None: ...

    @abstractmethod
    def batch_fill(self, matchers: list[M], bitmask: torch.Tensor) -> None: ...

    @abstractmethod
    def batch_accept(self, matchers: list[M], tokens: list[int]) -> list[bool]: ...


class Xgrammar(Library[Any]):
    """As engine/grammar.py: one compiler (one thread, no cache), compact JSON, strict mode."""

    name = "xgrammar"

    def setup(self, tokenizer: Any, vocab_size: int, eos: int) -> None:
        import xgrammar as xgr

        self.xgr, self.eos = xgr, eos
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self.compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)

    def set_threads(self, threads: int) -> None:
        self.batch = self.xgr.BatchGrammarMatcher(max_threads=threads)

    def matcher(self, case: Case) -> Any:
        try:
            if case.kind == "json":
                compiled = self.compiler.compile_json_schema(json.dumps(case.spec), any_whitespace=False)
            elif case.kind == "regex":
                compiled = self.compiler.compile_regex(case.spec)
            elif case.kind == "ebnf":
                compiled = self.compiler.compile_grammar(case.spec)
            else:
                compiled = self.compiler.compile_lark(case.spec)
        except Exception as exc:  # xgrammar reports bad input as RuntimeError (or another type)
            text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
            if text.startswith("[") and ".cc:" in text:  # `[time] /path/file.cc:123: ` prefix
                text = text.split(": ", 1)[-1]
            raise ValueError(text) from None
        return self.xgr.GrammarMatcher(compiled, override_stop_tokens=[self.eos])

    def fill(self, matcher: Any, bitmask: torch.Tensor, row: int) -> None:
        matcher.fill_next_token_bitmask(bitmask, index=row)

    def accept(self, matcher: Any, token: int) -> bool:
        return bool(matcher.accept_token(token))

    def reset(self, matcher: Any) -> None:
        matcher.reset()

    def batch_fill(self, matchers: list[Any], bitmask: torch.Tensor) -> None:
        self.batch.batch_fill_next_token_bitmask(matchers, bitmask)

    def batch_accept(self, matchers: list[Any], tokens: list[int]) -> list[bool]:
        return list(self.xgr.BatchGrammarMatcher.batch_accept_token(matchers, tokens))


class Llguidance(Library["LLMatcher"]):
    """llguidance with the same JSON output: no free whitespace, the same separators."""

    name = "llguidance"

    def setup(self, tokenizer: Any, vocab_size: int, eos: int) -> None:
        import llguidance.hf

        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos)

    def set_threads(self, threads: int) -> None:
        import llguidance

        self.executor = llguidance.LLExecutor(num_threads=threads)

    def matcher(self, case: Case) -> LLMatcher:
        import llguidance

        if case.kind == "json":
            options: JsonCompileOptions = {
                "whitespace_flexible": False,
                "item_separator": SEPARATORS[0],
                "key_separator": SEPARATORS[1],
            }
            grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(case.spec), overrides=options)
        elif case.kind == "regex":
            grammar = llguidance.LLMatcher.grammar_from_regex(case.spec)
        else:  # EBNF (llguidance converts it to Lark) or Lark
            grammar = llguidance.grammar_from("ebnf" if case.kind == "ebnf" else "lark", case.spec)
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(matcher.get_error())
        return matcher

    def fill(self, matcher: LLMatcher, bitmask: torch.Tensor, row: int) -> None:
        import llguidance.torch

        llguidance.torch.fill_next_token_bitmask(matcher, bitmask, row)

    def accept(self, matcher: LLMatcher, token: int) -> bool:
        return matcher.consume_token(token)

    def reset(self, matcher: LLMatcher) -> None:
        matcher.reset()

    def batch_fill(self, matchers: list[LLMatcher], bitmask: torch.Tensor) -> None:
        import llguidance.torch

        llguidance.torch.fill_next_token_bitmask_par(
            self.executor, [(m, i) for i, m in enumerate(matchers)], bitmask
        )

    def batch_accept(self, matchers: list[LLMatcher], tokens: list[int]) -> list[bool]:
        import llguidance.torch

        return llguidance.torch.consume_token_par(self.executor, list(zip(matchers, tokens, strict=True)))


# ---- measurements --------------------------------------------------------------------------------------


def allowed(bitmask: torch.Tensor, row: int, token: int) -> bool:
    return bool((int(bitmask[row, token >> 5]) >> (token & 31)) & 1)


@dataclass
class Result:
    setup_s: float = 0.0
    first_use_s: float = 0.0  # the first grammar compiled and masked after setup
    compile_ms: dict[str, float] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    first_mask_us: list[float] = field(default_factory=list)
    mask_us: list[float] = field(default_factory=list)
    step_us: list[float] = field(default_factory=list)  # mask + advance
    # threads -> µs of each fill of all BATCH rows, and of each fill + advance of them
    batch_fill_us: dict[int, list[float]] = field(default_factory=dict)
    batch_step_us: dict[int, list[float]] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)  # valid-answer tokens the mask forbade, alone
    tokens_checked: int = 0
    batch_rejected: list[str] = field(default_factory=list)  # the same, in the batched runs
    batch_tokens_checked: int = 0
    let_through: list[str] = field(default_factory=list)
    matchers: dict[str, Any] = field(default_factory=dict)


def compile_all(lib: Library[M], all_cases: list[Case], repeats: int, res: Result) -> None:
    for case in all_cases:
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            try:
                matcher = lib.matcher(case)
            except ValueError as exc:
                res.refused[case.name] = str(exc)[:160]
                break
            best = min(best, time.perf_counter() - start)
        else:
            res.compile_ms[case.name] = best * 1e3
            res.matchers[case.name] = matcher


def walk(
    lib: Library[M], matcher: M, tokens: list[int], bitmask: torch.Tensor
) -> tuple[list[int], list[int], int]:
    """Feed `tokens` one by one: ns of each mask, ns of each mask + advance (the bit check between them
    not counted), and how many tokens were allowed before the first forbidden one."""
    masks: list[int] = []
    steps: list[int] = []
    for i, token in enumerate(tokens):
        start = time.perf_counter_ns()
        lib.fill(matcher, bitmask, 0)
        masked = time.perf_counter_ns()
        ok = allowed(bitmask, 0, token)
        moved = time.perf_counter_ns()
        accepted = ok and lib.accept(matcher, token)
        end = time.perf_counter_ns()
        masks.append(masked - start)
        steps.append(masked - start + end - moved)
        if not accepted:
            return masks, steps, i
    return masks, steps, len(tokens)


def single(
    lib: Library[M],
    all_cases: list[Case],
    timed: set[str],
    ids: dict[str, list[int]],
    words: int,
    passes: int,
    res: Result,
) -> None:
    """Each accepted case's answers walked alone; times kept for the `timed` cases (those both accept)."""
    bitmask = torch.full((1, words), -1, dtype=torch.int32)
    for case in all_cases:
        matcher = res.matchers.get(case.name)
        if matcher is None:
            continue
        for p in range(passes):
            lib.reset(matcher)
            masks, steps, ok = walk(lib, matcher, ids[case.name], bitmask)
            if case.name in timed:
                res.mask_us += [t / 1e3 for t in masks]
                res.step_us += [t / 1e3 for t in steps]
                if p == 0:
                    res.first_mask_us.append(masks[0] / 1e3)
            if p == 0:
                res.tokens_checked += len(ids[case.name])
                if ok < len(ids[case.name]):
                    res.rejected.append(f"{case.name}@{ok}")
        if case.bad_text is not None:
            lib.reset(matcher)
            _, _, ok = walk(lib, matcher, ids[case.name + "!bad"], bitmask)
            if ok == len(ids[case.name + "!bad"]):
                res.let_through.append(case.name)


def batched(
    lib: Library[M],
    common: list[Case],
    ids: dict[str, list[int]],
    words: int,
    steps: int,
    threads: int,
    res: Result,
) -> None:
    """BATCH sequences of mixed cases, each restarted when its answer ends, so every step fills BATCH rows."""
    lib.set_threads(threads)
    fills = res.batch_fill_us.setdefault(threads, [])
    steps_us = res.batch_step_us.setdefault(threads, [])
    names = [common[i % len(common)].name for i in range(BATCH)]
    matchers = [lib.matcher(next(c for c in common if c.name == n)) for n in names]
    pos = [0] * BATCH
    bitmask = torch.full((BATCH, words), -1, dtype=torch.int32)
    for _ in range(steps):
        tokens = [ids[n][p] for n, p in zip(names, pos, strict=True)]
        start = time.perf_counter_ns()
        lib.batch_fill(matchers, bitmask)
        filled = time.perf_counter_ns()
        bad = [r for r, t in enumerate(tokens) if not allowed(bitmask, r, t)]
        moved = time.perf_counter_ns()
        accepted = lib.batch_accept(matchers, tokens)
        end = time.perf_counter_ns()
        res.batch_tokens_checked += BATCH
        fills.append((filled - start) / 1e3)
        steps_us.append((filled - start + end - moved) / 1e3)
        for r in range(BATCH):
            pos[r] += 1
            if r in bad or not accepted[r] or pos[r] == len(ids[names[r]]):
                if r in bad or not accepted[r]:
                    res.batch_rejected.append(f"{threads} threads: {names[r]}@{pos[r] - 1}")
                lib.reset(matchers[r])
                pos[r] = 0


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of `values`; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a smoke run: a handful of cases, one pass")
    cores = len(os.sched_getaffinity(0))
    ap.add_argument("--threads", default=f"1,{cores}", help="thread counts of the batched calls (1,CORES)")
    args = ap.parse_args()
    thread_counts = sorted({int(t) for t in args.threads.split(",")})
    from transformers import AutoConfig, AutoTokenizer

    folder = resolve_source(DEFAULT_SOURCE)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    vocab_size = int(AutoConfig.from_pretrained(folder).vocab_size)
    words = (vocab_size + 31) // 32  # int32 words of one bitmask row
    eos = int(tokenizer.eos_token_id)
    all_cases = [c for c in cases() if c.quick or not args.quick]
    prepare(all_cases)
    ids: dict[str, list[int]] = {}
    for c in all_cases:
        ids[c.name] = [*tokenizer.encode(c.text, add_special_tokens=False), eos]
        if c.bad_text is not None:
            ids[c.name + "!bad"] = [*tokenizer.encode(c.bad_text, add_special_tokens=False), eos]
    repeats, passes, steps = (1, 1, 40) if args.quick else (3, 3, 300)
    versions = {d: importlib.metadata.version(d) for d in ("xgrammar", "llguidance")}
    print(
        f"{len(all_cases)} cases, {sum(len(ids[c.name]) for c in all_cases)} answer tokens, tokenizer of "
        f"{DEFAULT_SOURCE} (vocab {vocab_size}), {cores} cores, {versions}",
        flush=True,
    )

    libs: list[Library[Any]] = [Xgrammar(), Llguidance()]
    results: dict[str, Result] = {}
    for lib in libs:
        res = results[lib.name] = Result()
        start = time.perf_counter()
        lib.setup(tokenizer, vocab_size, eos)
        res.setup_s = time.perf_counter() - start
        # One-time costs (llguidance builds its token tables at the first mask) off the first case.
        start = time.perf_counter()
        lib.fill(
            lib.matcher(Case("warm_up", "json", obj({"a": INT}))),
            torch.zeros((1, words), dtype=torch.int32),
            0,
        )
        res.first_use_s = time.perf_counter() - start
        compile_all(lib, all_cases, repeats, res)
        print(f"{lib.name}: set up, compiled {len(res.compile_ms)}/{len(all_cases)}", flush=True)
    common = [c for c in all_cases if all(c.name in r.compile_ms for r in results.values())]
    both = [c.name for c in common]
    for lib in libs:
        res = results[lib.name]
        single(lib, all_cases, set(both), ids, words, passes, res)
        for threads in thread_counts:
            batched(lib, common, ids, words, steps, threads, res)
        print(f"{lib.name}: masks done", flush=True)

    x, g = results["xgrammar"], results["llguidance"]

    def row(label: str, fx: str, fg: str) -> str:
        return f"{label:<46} {fx:>18} {fg:>18}"

    def p50_p95(values: list[float], digits: int = 1) -> str:
        return f"{pct(values, 0.5):.{digits}f} / {pct(values, 0.95):.{digits}f}"

    def on_common(r: Result) -> list[float]:
        return [r.compile_ms[n] for n in both]

    def per_token(values: list[float]) -> list[float]:
        return [t / BATCH for t in values]

    with_bad = [c.name for c in all_cases if c.bad_text is not None]
    lines = [
        row("", f"xgrammar {versions['xgrammar']}", f"llguidance {versions['llguidance']}"),
        row("tokenizer setup (s)", f"{x.setup_s:.2f}", f"{g.setup_s:.2f}"),
        row("first compile + first mask after setup (s)", f"{x.first_use_s:.2f}", f"{g.first_use_s:.2f}"),
        row(
            f"compile ms p50 / p95 ({len(both)} cases both accept)",
            p50_p95(on_common(x), 2),
            p50_p95(on_common(g), 2),
        ),
        row("first mask µs p50", f"{pct(x.first_mask_us, 0.5):.0f}", f"{pct(g.first_mask_us, 0.5):.0f}"),
        row("mask µs/token p50 / p95 (1 sequence)", p50_p95(x.mask_us), p50_p95(g.mask_us)),
        row("mask+advance µs/token p50 / p95 (1 sequence)", p50_p95(x.step_us), p50_p95(g.step_us)),
    ]
    for t in thread_counts:
        lines += [
            row(
                f"batch fill µs/step p50 / p95 ({BATCH} seqs, {t} thr)",
                p50_p95(x.batch_fill_us[t], 0),
                p50_p95(g.batch_fill_us[t], 0),
            ),
            row(
                f"  mask+advance µs/token p50 / p95 ({t} thr)",
                p50_p95(per_token(x.batch_step_us[t])),
                p50_p95(per_token(g.batch_step_us[t])),
            ),
        ]
    lines += [
        row(f"cases refused (of {len(all_cases)})", str(len(x.refused)), str(len(g.refused))),
        row(
            "valid-answer tokens rejected (1 sequence)",
            f"{len(x.rejected)}/{x.tokens_checked}",
            f"{len(g.rejected)}/{g.tokens_checked}",
        ),
        row(
            "valid-answer tokens rejected (batched)",
            f"{len(x.batch_rejected)}/{x.batch_tokens_checked}",
            f"{len(g.batch_rejected)}/{g.batch_tokens_checked}",
        ),
        row(
            f"invalid answers let through (of {len(with_bad)})",
            f"{len(x.let_through)}",
            f"{len(g.let_through)}",
        ),
    ]
    print("\n".join(lines))
    for who, r in results.items():
        for name, why in r.refused.items():
            print(f"  {who} refuses {name}: {why}")
        if r.let_through:
            print(f"  {who} lets through invalid answers of: {', '.join(r.let_through)}")
        if r.rejected or r.batch_rejected:
            print(f"  {who} rejects valid tokens at: {', '.join(r.rejected + r.batch_rejected)}")

    figures: dict[str, Any] = {"versions": versions, "cases": len(all_cases), "common_cases": len(both)}
    figures["tokenizer"] = DEFAULT_SOURCE
    for name, r in results.items():
        common_ms = on_common(r)
        figures.update(
            {
                f"{name}_setup_s": round(r.setup_s, 3),
                f"{name}_first_use_s": round(r.first_use_s, 3),
                f"{name}_compile_ms_p50": round(pct(common_ms, 0.5), 3),
                f"{name}_compile_ms_p95": round(pct(common_ms, 0.95), 3),
                f"{name}_first_mask_us_p50": round(pct(r.first_mask_us, 0.5), 1),
                f"{name}_mask_us_p50": round(pct(r.mask_us, 0.5), 2),
                f"{name}_mask_us_p95": round(pct(r.mask_us, 0.95), 2),
                f"{name}_mask_us_mean": round(sum(r.mask_us) / max(len(r.mask_us), 1), 2),
                f"{name}_step_us_p50": round(pct(r.step_us, 0.5), 2),
                f"{name}_step_us_p95": round(pct(r.step_us, 0.95), 2),
            }
        )
        for t in thread_counts:
            key = f"{name}_batch{BATCH}_threads{t}"
            figures.update(
                {
                    f"{key}_fill_us_p50": round(pct(r.batch_fill_us[t], 0.5), 1),
                    f"{key}_fill_us_p95": round(pct(r.batch_fill_us[t], 0.95), 1),
                    f"{key}_step_us_per_token_p50": round(pct(per_token(r.batch_step_us[t]), 0.5), 2),
                    f"{key}_step_us_per_token_p95": round(pct(per_token(r.batch_step_us[t]), 0.95), 2),
                }
            )
        figures.update(
            {
                f"{name}_refused_count": len(r.refused),
                f"{name}_valid_tokens_rejected": len(r.rejected),
                f"{name}_valid_tokens_checked": r.tokens_checked,
                f"{name}_batch_valid_tokens_rejected": len(r.batch_rejected),
                f"{name}_batch_valid_tokens_checked": r.batch_tokens_checked,
                f"{name}_invalid_let_through_count": len(r.let_through),
                f"{name}_refused": sorted(r.refused),
                f"{name}_invalid_let_through": sorted(r.let_through),
                f"{name}_compile_ms": {k: round(v, 3) for k, v in r.compile_ms.items()},
            }
        )
    record("grammar", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
