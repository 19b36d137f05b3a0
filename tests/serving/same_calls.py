"""The same client calls for every runtime: structured outputs (the SDK's `parse` with a pydantic model,
vLLM's `structured_outputs` json, choice and regex), a named tool call, and logprobs, each with what any
OpenAI-compatible server must answer. tests/serving/test_same_calls.py runs them on ours (PyTorch and
Triton), tests/serving/vllm/test_vllm_server.py on vLLM, so a caller moving between them sees the same
behaviour (docs/vllm.md says where vLLM needs other settings)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, cast

import jsonschema
import openai
from pydantic import BaseModel, Field

MSG: list[Any] = [{"role": "user", "content": "Describe a city in JSON."}]
# vLLM lets JSON carry free whitespace by default, and a small model then loops on newlines to max_tokens
# (seen on the built-in model); this option asks it for compact JSON (vLLM takes it in structured_outputs
# only beside the constraint itself, not beside response_format). Ours is always compact.
COMPACT = {"disable_any_whitespace": True}


class City(BaseModel):
    name: str = Field(max_length=30)
    population: int = Field(ge=0, le=100_000_000)
    coastal: bool


SCHEMA = {
    "type": "object",
    "properties": {
        "colour": {"type": "string", "enum": ["red", "green", "blue"]},
        "sizes": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 9}, "maxItems": 3},
    },
    "required": ["colour", "sizes"],
    "additionalProperties": False,
}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def parse_returns_the_model(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.parse(
        model=model, messages=MSG, response_format=City, max_tokens=96, temperature=0
    )
    assert r.choices[0].finish_reason == "stop", r
    assert isinstance(r.choices[0].message.parsed, City), r


def json_schema_validates(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(
        model=model,
        messages=MSG,
        max_tokens=64,
        temperature=0,
        extra_body={"structured_outputs": {"json": SCHEMA, **COMPACT}},
    )
    assert r.choices[0].finish_reason == "stop", r
    jsonschema.validate(json.loads(r.choices[0].message.content or ""), SCHEMA)


def choice_and_regex(client: openai.OpenAI, model: str) -> None:
    choices = ["yes", "no", "maybe"]
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Is the sky blue?"}],
        max_tokens=8,
        temperature=0,
        extra_body={"structured_outputs": {"choice": choices}},
    )
    assert r.choices[0].message.content in choices, r
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Give a part number."}],
        max_tokens=16,
        temperature=0,
        extra_body={"structured_outputs": {"regex": "[A-Z]{2}-[0-9]{3}"}},
    )
    assert re.fullmatch("[A-Z]{2}-[0-9]{3}", r.choices[0].message.content or ""), r


def named_tool_is_called(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[cast(Any, TOOL)],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=64,
        temperature=0,
    )
    calls = r.choices[0].message.tool_calls or []
    assert len(calls) == 1, r
    call = calls[0]
    assert call.type == "function" and call.id and call.function.name == "get_weather", call
    jsonschema.validate(json.loads(call.function.arguments), cast(Any, TOOL)["function"]["parameters"])


def logprobs_are_sorted_and_hold_the_token(client: openai.OpenAI, model: str) -> None:
    r = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = (r.choices[0].logprobs and r.choices[0].logprobs.content) or []
    assert content and r.usage and len(content) <= r.usage.completion_tokens, r  # one per token
    for item in content:
        tops = [t.logprob for t in item.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True), item
        assert item.logprob <= 0 and abs(item.logprob - tops[0]) < 1e-3, item  # greedy: the best one


CALLS: list[Callable[[openai.OpenAI, str], Any]] = [
    parse_returns_the_model,
    json_schema_validates,
    choice_and_regex,
    named_tool_is_called,
    logprobs_are_sorted_and_hold_the_token,
]
