"""The engine's incremental detokenisation: deltas join to the final text, stop strings never leak,
even when the stop string is longer than the text so far."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from chatmodel_serving.engine.sequence import Request, Sequence
from chatmodel_serving.engine.types import Event, SamplingParams
from chatmodel_serving.models import resolve_source

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TEXT = "Hi! The answer is forty-two, and that is the end of it."


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_source("builtin://smollm2-135m"))


def feed(tokenizer: PreTrainedTokenizerBase, stop: tuple[str, ...], max_tokens: int = 100) -> list[Event]:
    events: list[Event] = []
    req = Request(1, [1], SamplingParams(max_tokens=max_tokens, stop=stop), events.append)
    seq = Sequence(req, tokenizer, eos_ids={2})
    for tok in [*tokenizer.encode(TEXT, add_special_tokens=False), 2]:
        seq.add(tok, context_length=8192)
        if seq.finish_reason:
            break
    return events


@pytest.mark.parametrize(
    ("stop", "expected", "reason"),
    [
        ((), TEXT, "stop"),  # ends on the end-of-sequence token
        (("forty-two",), "Hi! The answer is ", "stop"),
        (
            ("a stop string far longer than anything said so far", "is the end"),
            "Hi! The answer is forty-two, and that ",
            "stop",
        ),
        (("!",), "Hi", "stop"),
        (("never appears at all in the text",), TEXT, "stop"),
    ],
)
def test_deltas_join_to_the_text_before_the_stop(
    tokenizer: PreTrainedTokenizerBase, stop: tuple[str, ...], expected: str, reason: str
) -> None:
    events = feed(tokenizer, stop)
    assert "".join(e.text for e in events) == expected
    assert events[-1].finish_reason == reason
    assert all(e.finish_reason is None for e in events[:-1])
    # Nothing past the cut is ever sent, not even transiently.
    sent = ""
    for e in events:
        sent += e.text
        assert expected.startswith(sent)


def test_max_tokens_ends_with_length(tokenizer: PreTrainedTokenizerBase) -> None:
    events = feed(tokenizer, (), max_tokens=3)
    assert events[-1].finish_reason == "length" and events[-1].completion_tokens == 3
    assert TEXT.startswith("".join(e.text for e in events))
