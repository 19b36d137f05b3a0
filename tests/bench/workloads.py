"""The serving benchmark's prompt sets, built deterministically and offline (docs/benchmarks.md, "Workloads").

- `shared-prefix`: near-identical short prompts (PROMPTS), 64 new tokens: what a prefix cache is for.
- `distinct`: 64 different questions, each message 30-800 tokens long (the lengths drawn from a fixed seed),
  the text seeded sentences from a word list, sized with the model's tokenizer; 128 new tokens.
- `long-context`: 8 streams, each a different ~1,500-token document and a question about it; 128 new tokens.
- `long-answer`: 16 streams, each asked for a long essay; 512 new tokens.

Lengths are the user message's tokens; the chat template adds its own (~30 for SmolLM2), and the servers
report the whole prompt in `usage.prompt_tokens`, which the results keep. `variant` changes the sentences
(never the lengths or the questions), so runs on one server share no prefix beyond the template's.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

PROMPTS = [f"Write a short story about a robot who finds object number {i} in a garden." for i in range(64)]

SEED = 20261201
DISTINCT_COUNT, DISTINCT_MIN, DISTINCT_MAX = 64, 30, 800
LONG_CONTEXT_COUNT, LONG_CONTEXT_TOKENS = 8, 1500
LONG_ANSWER_COUNT = 16

# Plain English words; sentences are random draws (seeded), readable enough for a model to answer about.
_WORDS = """
time year people way day man thing woman life child world school state family student group country
problem hand part place case week company system program question work government number night point
home water room mother area money story fact month lot right study book eye job word business issue side
kind head house service friend father power hour game line end member law car city community name
president team minute idea kid body information back parent face others level office door health person
art war history party result change morning reason research girl guy moment air teacher force education
river garden robot lamp bridge harbor market window mountain valley island forest village engine letter
green quiet bright heavy small large old new early late simple careful strange happy slow quick warm cold
finds builds carries opens reads writes paints watches follows remembers repairs counts measures sells
near under above beside behind across through during after before without between against toward
"""
WORDS = _WORDS.split()

_TOPICS = """
lighthouses bees glaciers trains libraries volcanoes bridges clocks maps orchards rivers deserts
telescopes bakeries harbors forests markets islands canals windmills gardens caves comets kites
"""
TOPICS = _TOPICS.split()
ASKS = [
    "What is the main idea of these notes?",
    "Which place is mentioned most often, and why might that be?",
    "Summarise the notes in three sentences.",
    "What would a careful reader question first here?",
    "List the people or things that appear, in order.",
    "What happens at the end, and what might happen next?",
    "Which detail seems most surprising?",
    "Explain the notes to a child in simple words.",
]


class Tokenizer(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


def sentences(rng: random.Random, count: int) -> list[str]:
    """`count` seeded sentences of 6-16 words each."""
    out = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(6, 16))]
        out.append(" ".join(words).capitalize() + ".")
    return out


def sized(tok: Tokenizer, head: str, body: list[str], tail: str, target: int) -> str:
    """head + as many of `body`'s words as keep the text at most `target` tokens + tail (binary search on
    the word count; a text's token count grows with its words)."""
    words = " ".join(body).split()

    def text(n: int) -> str:
        return f"{head}{' '.join(words[:n])}{tail}"

    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tok.encode(text(mid), add_special_tokens=False)) <= target:
            lo = mid
        else:
            hi = mid - 1
    return text(lo)


def lengths(count: int, low: int, high: int, seed: int = SEED) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(count)]


def question(i: int) -> str:
    return f"About {TOPICS[i % len(TOPICS)]}, note {i}: {ASKS[i % len(ASKS)]}"


def distinct_prompts(tok: Tokenizer, count: int = DISTINCT_COUNT, variant: int = 0) -> list[str]:
    """`count` different questions, each message 30-800 tokens; the question first, so prompts differ
    from their first token."""
    out = []
    for i, target in enumerate(lengths(DISTINCT_COUNT, DISTINCT_MIN, DISTINCT_MAX)[:count]):
        rng = random.Random(f"{SEED}-distinct-{variant}-{i}")
        body = sentences(rng, target // 6 + 4)  # more words than fit: `sized` cuts
        out.append(sized(tok, f"{question(i)}\n\nNotes: ", body, "", target))
    return out


def long_context_prompts(
    tok: Tokenizer, count: int = LONG_CONTEXT_COUNT, variant: int = 0, tokens: int = LONG_CONTEXT_TOKENS
) -> list[str]:
    """`count` different documents of ~`tokens` tokens (question included), each followed by its question."""
    out = []
    for i in range(count):
        rng = random.Random(f"{SEED}-document-{variant}-{i}")
        body = sentences(rng, tokens // 6 + 8)
        tail = f"\n\nQuestion: {ASKS[i % len(ASKS)]}"
        head = f"Document {i} ({TOPICS[i % len(TOPICS)]}):\n"
        out.append(sized(tok, head, body, tail, tokens))
    return out


def long_answer_prompts(count: int = LONG_ANSWER_COUNT, variant: int = 0) -> list[str]:
    return [
        f"Write a long, detailed essay ({variant}-{i}) about the history of {TOPICS[i % len(TOPICS)]}, "
        "with many examples."
        for i in range(count)
    ]


@dataclass(frozen=True)
class Workload:
    """A prompt set, the stream counts it runs at and the tokens each answer has (EOS ignored)."""

    name: str
    streams: tuple[int, ...]
    max_tokens: int
    build: Callable[[Tokenizer, int, int], list[str]]  # (tokenizer, count, variant) -> prompts
    fixed_streams: bool = False  # True: its stream counts are part of the workload (--streams only filters)

    def prompts(self, tok: Tokenizer, count: int, variant: int = 0) -> list[str]:
        got = self.build(tok, count, variant)
        return [got[i % len(got)] for i in range(count)]


def _shared(tok: Tokenizer, count: int, variant: int) -> list[str]:
    return PROMPTS  # the same prompts every run: sharing is the point


WORKLOADS = {
    "shared-prefix": Workload("shared-prefix", (1, 8, 32, 64), 64, _shared),
    "distinct": Workload(
        "distinct", (1, 8, 32, 64), 128, lambda t, n, v: distinct_prompts(t, min(n, DISTINCT_COUNT), v)
    ),
    "long-context": Workload(
        "long-context", (8,), 128, lambda t, n, v: long_context_prompts(t, n, v), fixed_streams=True
    ),
    "long-answer": Workload(
        "long-answer", (16,), 512, lambda t, n, v: long_answer_prompts(n, v), fixed_streams=True
    ),
}
# --quick: every workload once, small (and the long-context documents 400 tokens: a smoke run).
QUICK = {
    "shared-prefix": Workload("shared-prefix", (1, 4), 16, WORKLOADS["shared-prefix"].build),
    "distinct": Workload("distinct", (1, 4), 16, WORKLOADS["distinct"].build),
    "long-context": Workload(
        "long-context", (2,), 16, lambda t, n, v: long_context_prompts(t, n, v, tokens=400), True
    ),
    "long-answer": Workload("long-answer", (2,), 32, WORKLOADS["long-answer"].build, True),
}


def select(
    names: Sequence[str] | None, streams: Sequence[int] | None, max_tokens: int | None, quick: bool
) -> list[Workload]:
    """The workloads to run: `names` (default all); `streams` replaces the stream counts of shared-prefix
    and distinct and filters the fixed ones (long-context 8, long-answer 16); `max_tokens` overrides every
    workload's answer length."""
    table = QUICK if quick else WORKLOADS
    unknown = set(names or ()) - set(table)
    if unknown:
        raise SystemExit(f"unknown workload(s) {', '.join(sorted(unknown))}; known: {', '.join(table)}")
    out = []
    for name in names or list(table):
        w = table[name]
        counts = w.streams
        if streams:
            counts = tuple(s for s in w.streams if s in streams) if w.fixed_streams else tuple(streams)
        if not counts:
            print(f"{name}: runs at {w.streams} streams only; not in --streams, skipped", flush=True)
            continue
        out.append(Workload(w.name, counts, max_tokens or w.max_tokens, w.build, w.fixed_streams))
    return out
