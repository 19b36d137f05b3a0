"""Structured outputs: a Guide (engine/types.py) compiled by xgrammar into a grammar whose matcher gives,
each step, the bitmask of the tokens that keep the answer valid (what vLLM uses).

One GrammarCompiler per tokenizer (engine), compiled grammars in an LRU cache keyed by Guide. Compiling
runs on a small worker pool with a deadline, before the request is queued: a pathological schema (a
pattern repeated a million times) gets a GuideError (a 400 naming the request field), and the engine
thread never waits on a compile. A compile that overruns keeps its worker until it ends (C++ code cannot
be interrupted); its Guide is remembered as too slow, so repeats fail at once instead of piling up.
"""

from __future__ import annotations

import collections
import functools
import json
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import torch

from .types import Guide, UnsupportedParamError

COMPILE_TIMEOUT_S = 5.0
CACHE_SIZE = 256
# Keywords xgrammar would silently ignore: answers could then break the schema, so they are refused.
UNSUPPORTED: tuple[str, ...] = ("not", "if", "then", "else", "dependentSchemas", "dependentRequired")
UNSUPPORTED += ("contains", "minContains", "maxContains", "unevaluatedProperties", "unevaluatedItems")
_ONE = ("items", "additionalProperties", "propertyNames", "additionalItems")
_MANY = ("anyOf", "oneOf", "allOf", "prefixItems")
_NAMED = ("properties", "patternProperties", "$defs", "definitions")
# Memory: a pattern's repetitions unroll into grammar rules (`[a-z]{1,1000000}` took 1 GB and 2.3 s), so the
# product of a pattern's repetition bounds is capped before compiling.
MAX_REPEAT = 100_000
_REPEAT = re.compile(r"(?<!\\)\{(\d+)(?:,(\d*))?\}")
DEFAULT_PARAM = {
    "json": "structured_outputs.json",
    "json_object": "structured_outputs.json_object",
    "regex": "structured_outputs.regex",
    "choice": "structured_outputs.choice",
    "grammar": "structured_outputs.grammar",
}


class GuideError(UnsupportedParamError):
    """A guide that cannot be compiled (bad schema, regex or grammar, or too slow): HTTP 400 naming the
    request field (`response_format.json_schema.schema`, `structured_outputs.regex`, ...)."""


def param_of(guide: Guide) -> str:
    return guide.param or DEFAULT_PARAM[guide.kind]


def check_pattern(pattern: str) -> None:
    """Refuse a regular expression whose repetitions would unroll past MAX_REPEAT (ValueError)."""
    total = 1
    for low, high in _REPEAT.findall(pattern):
        total *= max(int(low), int(high or 0), 1)
        if total > MAX_REPEAT:
            raise ValueError(f"its repetition counts multiply to more than {MAX_REPEAT}")


def check_schema(schema: Any, at: str = "") -> None:
    """Refuse what is not a schema, and keywords the grammar would ignore (ValueError naming where)."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise ValueError(f"{at or '/'}: a schema must be an object or a boolean")
    for key in UNSUPPORTED:
        if key in schema:
            raise ValueError(f"{at or '/'}: the keyword {key!r} is not supported")
    if schema.get("uniqueItems") is True:
        raise ValueError(f"{at or '/'}: the keyword 'uniqueItems' is not supported")
    if "multipleOf" in schema and schema.get("type") != "integer":
        raise ValueError(f"{at or '/'}: 'multipleOf' is supported on integers only")
    if isinstance(schema.get("pattern"), str):
        try:
            check_pattern(schema["pattern"])
        except ValueError as exc:
            raise ValueError(f"{at or '/'}: pattern: {exc}") from None
    ref = schema.get("$ref")
    if ref is not None and not (isinstance(ref, str) and (ref == "#" or ref.startswith("#/"))):
        raise ValueError(f"{at or '/'}: only local $refs ('#/...') are supported, not {ref!r}")
    for key in _ONE:
        if key in schema and not isinstance(schema[key], bool | dict):
            raise ValueError(f"{at}/{key}: must be a schema")
        if isinstance(schema.get(key), dict):
            check_schema(schema[key], f"{at}/{key}")
    for key in _MANY:
        if key in schema:
            if not isinstance(schema[key], list):
                raise ValueError(f"{at}/{key}: must be a list of schemas")
            for i, sub in enumerate(schema[key]):
                check_schema(sub, f"{at}/{key}/{i}")
    for key in _NAMED:
        if key in schema:
            if not isinstance(schema[key], dict):
                raise ValueError(f"{at}/{key}: must be an object of schemas")
            for name, sub in schema[key].items():
                check_schema(sub, f"{at}/{key}/{name}")


def _choice_grammar(spec: str) -> str:
    choices = json.loads(spec)
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
        raise ValueError("choice must be a non-empty list of non-empty strings")
    # JSON string literals are valid EBNF string literals (same escapes).
    return "root ::= " + " | ".join(json.dumps(c) for c in choices)


class Grammars:
    """The compiler of one tokenizer and its compiled grammars (thread-safe)."""

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        timeout_s: float = COMPILE_TIMEOUT_S,
        cache_size: int = CACHE_SIZE,
        workers: int = 2,
    ):
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self.timeout_s, self.cache_size = timeout_s, cache_size
        self._lock = threading.RLock()  # add_done_callback runs _done at once when the compile already ended
        self._compiler: Any = None
        self._cache: collections.OrderedDict[Guide, Any] = collections.OrderedDict()
        self._too_slow: set[Guide] = set()
        self._pending: dict[Guide, Future[Any]] = {}
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="chatmodel-grammar")

    def compiler(self) -> Any:
        with self._lock:
            if self._compiler is None:
                import xgrammar as xgr

                info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab_size)
                self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
            return self._compiler

    def compile(self, guide: Guide) -> Any:
        """The compiled grammar of `guide` (cached); GuideError when it cannot be had in time."""
        param = param_of(guide)
        with self._lock:
            if guide in self._cache:
                self._cache.move_to_end(guide)
                return self._cache[guide]
            if guide in self._too_slow:
                raise GuideError(param, f"{param}: compiling it took longer than {self.timeout_s:g} s")
        compiler = self.compiler()
        with self._lock:  # one compile per guide, however many requests ask for it at once
            future = self._pending.get(guide)
            if future is None:
                future = self._pending[guide] = self._pool.submit(self._build, compiler, guide)
                future.add_done_callback(functools.partial(self._done, guide))
        try:
            compiled = future.result(timeout=self.timeout_s)
        except FutureTimeout:
            if future.cancel():  # it never started: the workers are busy, not this guide's fault
                raise GuideError(param, f"{param}: the grammar compiler is busy; retry shortly") from None
            with self._lock:
                self._too_slow.add(guide)
            raise GuideError(param, f"{param}: compiling it took longer than {self.timeout_s:g} s") from None
        except Exception as exc:  # xgrammar reports bad input as RuntimeError (or another type)
            raise GuideError(param, f"{param}: {_reason(exc)}") from None
        with self._lock:
            self._cache[guide] = compiled
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return compiled

    def _done(self, guide: Guide, _: Future[Any]) -> None:
        with self._lock:
            self._pending.pop(guide, None)

    @staticmethod
    def _build(compiler: Any, guide: Guide) -> Any:
        if guide.kind == "json":
            try:
                schema = json.loads(guide.spec)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON: {exc}") from None
            check_schema(schema)
            # Compact JSON: free whitespace lets a small model loop on newlines until max_tokens.
            return compiler.compile_json_schema(guide.spec, any_whitespace=False)
        if guide.kind == "json_object":
            return compiler.compile_json_schema('{"type": "object"}', any_whitespace=False, strict_mode=False)
        if guide.kind == "regex":
            check_pattern(guide.spec)
            return compiler.compile_regex(guide.spec)
        if guide.kind == "choice":
            return compiler.compile_grammar(_choice_grammar(guide.spec))
        if guide.kind == "grammar":
            return compiler.compile_grammar(guide.spec)
        raise ValueError(f"unknown guide kind {guide.kind!r}")

    def matcher(self, compiled: Any, stop_ids: set[int]) -> Any:
        """A fresh matcher for one sequence; it ends on the sequence's own end tokens."""
        import xgrammar as xgr

        stops = sorted(stop_ids) or None
        return xgr.GrammarMatcher(compiled, override_stop_tokens=stops)


def _reason(exc: BaseException) -> str:
    """xgrammar's message without its `[time] /path/file.cc:123: ` prefix."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    if text.startswith("[") and ".cc:" in text:
        text = text.split(": ", 1)[-1]
    return text.removeprefix("Check failed: (error.empty()) is false: ")


def apply_masks(logits: torch.Tensor, matchers: list[Any], rows: list[int]) -> None:
    """Mask, in place, the tokens each constrained row's grammar forbids: the bitmasks of all of them
    filled in one allocated tensor (by xgrammar's batch matcher, in parallel) and applied in one op."""
    import xgrammar as xgr

    global _batch
    if _batch is None:
        _batch = xgr.BatchGrammarMatcher()
    bitmask = xgr.allocate_token_bitmask(logits.shape[0], logits.shape[-1])
    _batch.batch_fill_next_token_bitmask(matchers, bitmask, indices=rows)
    xgr.apply_token_bitmask_inplace(logits, bitmask.to(logits.device), indices=rows)


_batch: Any = None  # one xgrammar BatchGrammarMatcher (its thread pool), made on first use
