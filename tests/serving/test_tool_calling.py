"""Tool calling (issue 23) through the official `openai` client on the shipped model: tools → tool_calls
whose arguments validate → a `role: tool` result → a final text answer; `tool_choice="required"` and a
named function always call (grammar-constrained); `parallel_tool_calls=false` gives one call; a stream
rebuilds the same call (the SDK's own accumulation); bad tools are 400s naming the exact field. On both
runtimes: the Triton runtime carries the guide to the same engine."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from chatmodel_serving.launch import ServerProcess
from tests.serving.helpers import API_KEY, MODEL

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the current time in a timezone",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
    },
}
TOOLS: list[Any] = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
PROMPTS = ["What is the weather in Paris?", "What time is it in Tokyo?", "Tell me a joke."]
BOTH = "What is the weather in Paris and the time in Tokyo?"
NAMED = {"type": "function", "function": {"name": "get_time"}}


def user(content: str) -> list[Any]:
    return [{"role": "user", "content": content}]


def create(client: openai.OpenAI, messages: list[Any], **kw: Any) -> Any:
    kw = {"max_tokens": 96, "temperature": 0, "tools": TOOLS, **kw}
    return client.chat.completions.create(model=MODEL, messages=messages, **kw)


def check_calls(choice: Any, names: set[str] | None = None) -> list[Any]:
    """The choice's calls, each checked: OpenAI's shape, arguments JSON that validate."""
    calls = choice.message.tool_calls or []
    assert calls and choice.finish_reason == "tool_calls", choice
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function", call
        assert call.function.name in (names or SCHEMAS), call
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    return calls


def test_round_trip(client: openai.OpenAI) -> None:
    messages = user(PROMPTS[0])
    first = create(client, messages, tools=[WEATHER], tool_choice="required")  # one tool: one call
    (call,) = check_calls(first.choices[0])
    assert first.choices[0].message.content is None
    assistant = first.choices[0].message.model_dump(exclude_none=True)
    result = {
        "role": "tool",
        "tool_call_id": call.id,
        "content": json.dumps({"temperature": 18, "sky": "sunny"}),
    }
    final = create(client, [*messages, assistant, result], max_tokens=24)  # auto: the model answers in text
    choice = final.choices[0]
    assert choice.message.content and not choice.message.tool_calls, choice
    assert choice.finish_reason in ("stop", "length")


def test_required_and_named_always_call(client: openai.OpenAI) -> None:
    cases = [(p, "required") for p in [*PROMPTS, BOTH]] + [(p, NAMED) for p in PROMPTS[::2]]
    with ThreadPoolExecutor(len(cases)) as pool:  # one batch on the engine
        answers = list(pool.map(lambda c: create(client, user(c[0]), tool_choice=c[1]), cases))
    for (_, choice), answer in zip(cases, answers, strict=True):
        calls = check_calls(answer.choices[0], {"get_time"} if choice is NAMED else None)
        if choice is NAMED:
            assert len(calls) == 1


def test_parallel_tool_calls_false_gives_one_call(client: openai.OpenAI) -> None:
    with ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(
                lambda p: create(client, user(p), tool_choice="required", parallel_tool_calls=False),
                [BOTH, PROMPTS[1]],
            )
        )
    for answer in answers:
        assert len(check_calls(answer.choices[0])) == 1


def test_stream_rebuilds_the_same_call(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = {"max_tokens": 96, "temperature": 0, "tools": TOOLS, "tool_choice": NAMED}
    whole = check_calls(create(client, user(PROMPTS[1]), **kw).choices[0])
    with client.chat.completions.stream(model=MODEL, messages=user(PROMPTS[1]), **kw) as stream:
        chunks = [e.chunk for e in stream if e.type == "chunk"]
        final = stream.get_final_completion()
    streamed = check_calls(final.choices[0])
    assert [(c.function.name, c.function.arguments) for c in streamed] == [
        (c.function.name, c.function.arguments) for c in whole
    ]
    deltas = [d for c in chunks for ch in c.choices for d in ch.delta.tool_calls or []]
    assert deltas[0].index == 0 and deltas[0].id and deltas[0].type == "function"
    functions = [d.function for d in deltas]
    assert all(functions) and len(deltas) > 2  # the arguments come in pieces, as the model writes them
    assert functions[0] and functions[0].name == "get_time" and functions[0].arguments == ""
    assert all(d.id is None and f and f.name is None for d, f in zip(deltas[1:], functions[1:], strict=True))
    assert [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason] == ["tool_calls"]


def test_auto_and_none_answer_in_text(client: openai.OpenAI) -> None:
    """The shipped 135M model answers these in text when it may choose (auto), and must with none."""
    for choice in ("auto", "none"):
        answer = create(client, user(PROMPTS[2]), tool_choice=choice, max_tokens=16)
        assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
        assert answer.choices[0].finish_reason in ("stop", "length")


BAD_PARAMETERS = {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [WEATHER, TIME, BAD_PARAMETERS]}, "tools[2].function.parameters"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function.name",
        ),
        ({"tools": [WEATHER, TIME, WEATHER]}, "tools[2].function.name"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": TOOLS, "messages": [*user("hi"), {"role": "tool", "content": "18C"}]},
            "messages[1].tool_call_id",
        ),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
    ],
)
def test_bad_tools_are_400s_naming_the_field(server: ServerProcess, body: dict[str, Any], param: str) -> None:
    r = httpx.post(
        f"{server.base}/v1/chat/completions",
        json={"model": MODEL, "messages": user("hi"), "max_tokens": 4, **body},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=120,
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"], error


def test_openapi_describes_the_tool_fields(server: ServerProcess) -> None:
    doc = httpx.get(f"{server.base}/openapi.json", timeout=30).json()
    schemas = doc["components"]["schemas"]
    assert {"tools", "tool_choice", "parallel_tool_calls"} <= set(
        schemas["ChatCompletionRequest"]["properties"]
    )
    assert {"tool_calls", "tool_call_id"} <= set(schemas["ChatMessage"]["properties"])
    assert {"name", "description", "parameters"} <= set(schemas["FunctionDefinition"]["properties"])
