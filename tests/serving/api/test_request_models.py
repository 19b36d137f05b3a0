"""Hypothesis on the request models, without a server: any JSON body either validates into a request whose
derived values are sane, or is refused with ValidationError alone (never another exception: that would be a
500), which becomes a 400 naming a field the body has or a required one it lacks.
CHATMODEL_FUZZ_EXAMPLES/10 bodies per test (200 by default)."""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from chatmodel_serving.api.protocol import (
    MAX_N,
    MAX_STOPS,
    ChatCompletionRequest,
    CompletionRequest,
    invalid_request,
)

EXAMPLES = max(int(os.environ.get("CHATMODEL_FUZZ_EXAMPLES", "2000")) // 10, 50)
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True)

EDGES: st.SearchStrategy[object] = st.sampled_from(
    [0, -1, 1, 2**31, 2**63, -(2**63) - 1, 2**80, 1e308, -0.0, 5e-324, "", " ", "\x00", [], {}, None, True]
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16,
)
HOSTILE = EDGES | JSON
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "robot"]) | HOSTILE},
    optional={
        "content": st.text() | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text()}))
    },
)
SAMPLING = {
    "max_tokens": HOSTILE,
    "temperature": HOSTILE,
    "top_p": HOSTILE,
    "n": HOSTILE,
    "stop": HOSTILE | st.lists(st.text(max_size=4), max_size=6),
    "stream": HOSTILE,
    "stream_options": HOSTILE,
    "seed": HOSTILE,
    "presence_penalty": HOSTILE,
    "frequency_penalty": HOSTILE,
    "logprobs": HOSTILE,
    "logit_bias": HOSTILE | st.dictionaries(st.text(max_size=4) | st.integers(0, 9).map(str), HOSTILE),
    "repetition_penalty": HOSTILE,
    "top_k": HOSTILE,
    "min_p": HOSTILE,
    "min_tokens": HOSTILE,
    "stop_token_ids": HOSTILE | st.lists(st.integers(), max_size=3),
    "use_beam_search": HOSTILE,
    "best_of": HOSTILE,
    "ignore_eos": HOSTILE,
}
CHAT = st.fixed_dictionaries(
    {"model": st.just("m") | HOSTILE, "messages": st.lists(MESSAGE, max_size=3) | HOSTILE},
    optional={
        **SAMPLING,
        "max_completion_tokens": HOSTILE,
        "response_format": HOSTILE,
        "tools": HOSTILE,
        "top_logprobs": HOSTILE,
    },
)
TEXT = st.fixed_dictionaries(
    {
        "model": st.just("m") | HOSTILE,
        "prompt": st.text() | st.lists(st.text()) | st.lists(st.integers()) | HOSTILE,
    },
    optional={**SAMPLING, "echo": HOSTILE, "suffix": HOSTILE},
)


def check(model: type[BaseModel], body: Any, required: set[str]) -> None:
    json.dumps(body)  # a body a client could send
    try:
        req = model.model_validate(body)
    except ValidationError as e:  # anything else escapes and fails the test
        error = invalid_request(e.errors())
        assert error.status == 400
        if isinstance(body, dict):
            assert error.param is not None, e.errors()
            assert error.param.split(".")[0] in set(body) | required, (error.param, body)
        return
    assert isinstance(req, (ChatCompletionRequest, CompletionRequest))
    assert 1 <= req.n <= MAX_N and req.beams() >= 1
    stops = req.stop_list()
    assert len(stops) <= MAX_STOPS and all(stops)
    assert req.seed is None or -(2**63) <= req.seed < 2**63
    wanted = req.logprobs_wanted()
    assert wanted is None or 0 <= wanted <= 20
    assert all(k.isdigit() and -100 <= v <= 100 for k, v in (req.logit_bias or {}).items())


@SETTINGS
@given(body=CHAT | HOSTILE)
def test_any_chat_body_validates_or_names_the_field(body: Any) -> None:
    check(ChatCompletionRequest, body, {"model", "messages"})


@SETTINGS
@given(body=TEXT | HOSTILE)
def test_any_completion_body_validates_or_names_the_field(body: Any) -> None:
    check(CompletionRequest, body, {"model", "prompt"})


def test_the_checks_can_fail() -> None:
    """The property above is not vacuous: a refusal that named no field would fail it."""
    try:
        ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "robot"}]})
    except ValidationError as e:
        assert invalid_request(e.errors()).param == "messages.0.role"
    else:
        raise AssertionError("an unknown role was accepted")
