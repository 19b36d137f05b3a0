"""The Triton contract's `sampling` tensor carries every SamplingParams field the other tensors lack, and
its `logprobs` output the engine's logprobs: what goes in comes out, a field added to SamplingParams
included (the round trip walks the dataclass, not a list kept here)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatmodel_serving.engine.types import Guide, SamplingParams, TokenLogprob
from chatmodel_serving.triton import contract

finite = st.floats(-100, 100, allow_nan=False)
params = st.builds(
    SamplingParams,
    max_tokens=st.integers(1, 512),
    presence_penalty=finite,
    frequency_penalty=finite,
    logit_bias=st.dictionaries(st.integers(0, 50_000), finite, max_size=4),
    repetition_penalty=st.floats(0.5, 2),
    top_k=st.integers(0, 50),
    min_p=st.floats(0, 1),
    min_tokens=st.integers(0, 16),
    stop_token_ids=st.lists(st.integers(0, 50_000), max_size=3).map(tuple),
    logprobs=st.none() | st.integers(0, 20),
    guide=st.none()
    | st.builds(
        Guide,
        kind=st.sampled_from(["json", "json_object", "regex", "choice", "grammar"]),
        spec=st.text(max_size=20),
        param=st.sampled_from(["", "response_format.json_schema.schema", "tool_choice"]),
    ),
)


@settings(max_examples=200, deadline=None)
@given(params)
def test_sampling_round_trips(p: SamplingParams) -> None:
    base = SamplingParams(max_tokens=p.max_tokens)  # what the other tensors carry
    back = contract.with_sampling(base, contract.sampling_json(p))
    assert back == p
    if p.guide is not None:  # param is not part of Guide's equality
        assert back.guide is not None and back.guide.param == p.guide.param


def test_every_field_is_carried() -> None:
    tensors = {"max_tokens", "temperature", "top_p", "seed", "stop", "ignore_eos", "beams"}
    carried = {f.name for f in dataclasses.fields(SamplingParams)} - tensors
    assert carried == set(json.loads(contract.sampling_json(_all_set())))


def _all_set() -> SamplingParams:
    return SamplingParams(
        max_tokens=8,
        presence_penalty=1,
        frequency_penalty=1,
        logit_bias={1: 2.0},
        repetition_penalty=1.2,
        top_k=3,
        min_p=0.1,
        min_tokens=2,
        stop_token_ids=(5,),
        logprobs=2,
        guide=Guide("regex", "a+"),
        adapter="a-lora-adapter",
    )


def test_defaults_send_nothing() -> None:
    assert contract.sampling_json(SamplingParams(max_tokens=8)) == ""


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[1]", "must be a JSON object"),
        ('{"temperature": 1}', "unknown field 'temperature'"),
        ('{"logit_bias": {"x": 1}}', "sampling.logit_bias"),
        ('{"guide": {"kind": "regex", "nope": 1}}', "sampling.guide"),
    ],
)
def test_bad_sampling_names_the_field(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        contract.with_sampling(SamplingParams(max_tokens=8), text)


def test_logprobs_round_trip() -> None:
    lps = [TokenLogprob(3, -0.5, [(3, -0.5), (9, -1.25)]), TokenLogprob(7, -2.0)]
    assert contract.logprobs_from(contract.logprobs_json(lps)) == lps
    assert contract.logprobs_from(contract.logprobs_json(None)) is None
    assert contract.logprobs_from(contract.logprobs_json([])) == []
