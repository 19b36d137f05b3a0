"""Training data: JSONL loading with per-line validation, the validation split, and tokenization
with the model's chat template where only the assistant's tokens carry a loss.

Two line forms are accepted:
  {"input": "question", "output": "answer", "system": "optional system prompt"}
  {"messages": [{"role": "system|user|assistant", "content": "..."}, ...]}   (at least one assistant turn)
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("chatmodel.train")

IGNORE_INDEX = -100  # label of a token that carries no loss (prompt, padding)
ROLES = ("system", "user", "assistant")
MAX_REPORTED = 50  # bad lines listed in one error; the count covers the rest


class DataError(ValueError):
    """A dataset with bad lines; the message lists each one with its line number."""

    def __init__(self, path: Path | str, problems: list[tuple[int, str]]) -> None:
        self.path = str(path)
        self.problems = problems
        shown = [f"  line {n}: {msg}" for n, msg in problems[:MAX_REPORTED]]
        if len(problems) > MAX_REPORTED:
            shown.append(f"  ... and {len(problems) - MAX_REPORTED} more")
        lines = "line" if len(problems) == 1 else "lines"
        super().__init__(f"{self.path}: {len(problems)} bad {lines}:\n" + "\n".join(shown))


@dataclass(frozen=True)
class Example:
    messages: tuple[dict[str, str], ...]
    line: int


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where no loss is taken

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class TokenStats:
    examples: int = 0
    tokens: int = 0
    answer_tokens: int = 0
    truncated: int = 0
    dropped: int = 0  # truncation removed every answer token
    lengths: list[int] = field(default_factory=list)


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{where} is empty")
    return value


def parse_record(record: Any) -> list[dict[str, str]]:
    """One decoded JSON value → chat messages; raises ValueError naming the field at fault."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, not {type(record).__name__}")
    if "messages" in record:
        raw = record["messages"]
        if not isinstance(raw, list):
            raise ValueError(f"field 'messages' must be a list, not {type(raw).__name__}")
        if not raw:
            raise ValueError("field 'messages' is empty")
        messages = []
        for i, msg in enumerate(raw):
            where = f"messages[{i}]"
            if not isinstance(msg, dict):
                raise ValueError(f"{where} must be an object, not {type(msg).__name__}")
            for key in ("role", "content"):
                if key not in msg:
                    raise ValueError(f"missing field '{key}' in {where}")
            role = msg["role"]
            if role not in ROLES:
                raise ValueError(f"{where}.role must be one of {', '.join(ROLES)}, not {role!r}")
            messages.append({"role": role, "content": _text(msg["content"], f"{where}.content")})
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError("field 'messages' has no assistant message to learn from")
        return messages
    missing = [k for k in ("input", "output") if k not in record]
    if missing:
        fields = " and ".join(f"'{k}'" for k in missing)
        raise ValueError(f"missing field {fields} (expected 'input' and 'output', or 'messages')")
    messages = []
    if record.get("system") is not None:
        messages.append({"role": "system", "content": _text(record["system"], "field 'system'")})
    messages.append({"role": "user", "content": _text(record["input"], "field 'input'")})
    messages.append({"role": "assistant", "content": _text(record["output"], "field 'output'")})
    return messages


BUILTIN_DATA = Path(__file__).resolve().parent.parent / "data"


def resolve_data_source(source: str | Path, relative_to: Path | None = None) -> Path:
    """builtin://NAME (a dataset shipped in the package, so also in the runtime image), hf:// or s3://
    (downloaded), file://PATH or a path; relative paths are taken from `relative_to` (a manifest's
    folder) when given."""
    text = str(source)
    if text.startswith("builtin://"):
        name = text[len("builtin://") :]
        path = BUILTIN_DATA / f"{name}.jsonl"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in BUILTIN_DATA.glob("*.jsonl")))
            raise DataError(text, [(0, f"no builtin dataset {name!r}; known: {known}")])
        return path
    if text.startswith(("hf://", "s3://")):  # downloaded once into the cache, checked (fetch/)
        from ..fetch import FetchError, pull

        try:
            return pull(text).path
        except FetchError as exc:
            raise DataError(text, [(0, str(exc))]) from None
    if "://" in text and not text.startswith("file://"):
        scheme = text.split("://", 1)[0]
        raise DataError(
            text, [(0, f"{scheme}:// data is only readable inside the cluster; use a local path")]
        )
    path = Path(text.removeprefix("file://")).expanduser()
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path
    return path


def load_examples(source: Path | str, system_prompt: str | None = None) -> list[Example]:
    """Read and validate every line; raise DataError listing all bad lines (blank lines are skipped)."""
    path = resolve_data_source(source)
    try:
        raw_lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise DataError(path, [(0, f"cannot read the file: {exc.strerror or exc}")]) from None
    examples: list[Example] = []
    problems: list[tuple[int, str]] = []
    for number, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append((number, f"not valid UTF-8 (byte {exc.start}: {raw[exc.start : exc.end]!r})"))
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append((number, f"invalid JSON: {exc.msg} (column {exc.colno})"))
            continue
        try:
            messages = parse_record(record)
        except ValueError as exc:
            problems.append((number, str(exc)))
            continue
        if system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system_prompt})
        examples.append(Example(tuple(messages), number))
    if problems:
        raise DataError(path, problems)
    if not examples:
        raise DataError(path, [(0, "no examples: the file is empty")])
    return examples


def split_examples(
    examples: list[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """A seeded, deterministic split: the same file and seed always give the same validation set."""
    if not 0 <= fraction < 1:
        raise ValueError(f"validation split must be in [0, 1), not {fraction}")
    if fraction == 0 or len(examples) < 2:
        return list(examples), []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(len(examples) - 1, max(1, round(len(examples) * fraction)))
    val = set(order[:n_val])
    return [e for i, e in enumerate(examples) if i not in val], [
        e for i, e in enumerate(examples) if i in val
    ]


def answer_spans(messages: list[dict[str, str]], tokenizer: Any) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation with the chat template; return the text and the character spans of
    the assistant turns (content and end-of-turn marker, so the model learns to stop)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (text.startswith(prompt) and text.startswith(through) and len(through) > len(prompt)):
            raise ValueError("the chat template does not render turns incrementally; cannot mask the prompt")
        spans.append((len(prompt), len(through)))
    return text, spans


def tokenize_example(example: Example, tokenizer: Any, max_seq_length: int) -> tuple[Tokenized, bool]:
    """Token ids and labels (prompt masked); the flag says whether it was truncated."""
    text, spans = answer_spans(list(example.messages), tokenizer)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [
        tok if any(start <= begin < end for start, end in spans) else IGNORE_INDEX
        for tok, (begin, _) in zip(ids, enc["offset_mapping"], strict=True)
    ]
    truncated = len(ids) > max_seq_length
    return Tokenized(ids[:max_seq_length], labels[:max_seq_length]), truncated


def tokenize_examples(
    examples: list[Example], tokenizer: Any, max_seq_length: int, what: str = "training"
) -> tuple[list[Tokenized], TokenStats]:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the base model's tokenizer has no chat template; cannot format chat examples")
    stats = TokenStats()
    out = []
    for example in examples:
        item, truncated = tokenize_example(example, tokenizer, max_seq_length)
        stats.truncated += truncated
        answer = sum(1 for label in item.labels[1:] if label != IGNORE_INDEX)
        if answer == 0:  # nothing left to learn from after truncation
            stats.dropped += 1
            continue
        out.append(item)
        stats.examples += 1
        stats.tokens += len(item)
        stats.answer_tokens += answer
        stats.lengths.append(len(item))
    if stats.truncated:
        log.warning(
            "%d of %d %s examples were longer than max_seq_length=%d and were truncated",
            stats.truncated,
            len(examples),
            what,
            max_seq_length,
        )
    if stats.dropped:
        log.warning(
            "%d %s examples had no answer token left after truncation and were skipped", stats.dropped, what
        )
    if not out:
        raise ValueError(f"no {what} example fits in max_seq_length={max_seq_length}")
    return out, stats
