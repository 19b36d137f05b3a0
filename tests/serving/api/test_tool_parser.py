"""Tool calling without a model: the checks of tools / tool_choice (400s naming the exact field), the
Hermes `<tool_call>` parser (whole and fed piece by piece, which must agree), the guide of `required` / a
named function, and the rendering of tools and past calls for templates with and without tool support."""

from __future__ import annotations

import json
from typing import Any, cast

import jsonschema
import pytest

from chatmodel_serving.api.protocol import ApiError, ChatCompletionRequest
from chatmodel_serving.api.tool_calls import (
    ArgumentsPiece,
    Call,
    CallStart,
    ToolStream,
    calls_of,
    whole_answer,
)
from chatmodel_serving.api.tools import ToolPlan, plan_tools, supports_tools, template_inputs

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
USER = [{"role": "user", "content": "Weather in Paris?"}]


def plan(**body: Any) -> ToolPlan:
    return plan_tools(ChatCompletionRequest.model_validate({"model": "m", "messages": USER, **body}))


def call(name: str, args: dict[str, Any]) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"


def fed(p: ToolPlan, text: str, size: int) -> list[Any]:
    """The pieces a stream yields when the text arrives `size` characters at a time."""
    s = ToolStream(p)
    pieces = [x for i in range(0, len(text), size) for x in s.feed(text[i : i + size])] + s.finish()
    return pieces


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {
                "tools": [
                    WEATHER,
                    TIME,
                    {"type": "function", "function": {"name": "x", "parameters": {"type": "string"}}},
                ]
            },
            "tools[2].function.parameters",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "x", "parameters": {"properties": []}}}]},
            "tools[0].function.parameters",
        ),
        ({"tools": [WEATHER, TIME, WEATHER]}, "tools[2].function.name"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.function.name",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tool_choice"),
        (
            {"tools": [WEATHER], "messages": [*USER, {"role": "tool", "content": "18C"}]},
            "messages[1].tool_call_id",
        ),
        (
            {
                "messages": [
                    *USER,
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "get_weather", "arguments": "[1]"},
                            }
                        ],
                    },
                ]
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
    ],
)
def test_bad_tools_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as e:
        plan(**body)
    assert e.value.status == 400 and e.value.param == param, e.value.message


def test_modes() -> None:
    assert plan().mode == "none" and plan(tool_choice="none").mode == "none"
    assert plan(tools=[WEATHER]).mode == "auto" and plan(tools=[WEATHER], tool_choice="none").offered == ()
    named = plan(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert (named.mode, named.name) == ("named", "get_time")
    assert plan(tools=[WEATHER], parallel_tool_calls=False).parallel is False


def test_hermes_calls_whole_and_streamed_agree() -> None:
    p = plan(tools=[WEATHER, TIME])
    text = "Let me look.\n" + call("get_weather", {"city": "Paris"}) + "\n" + call("get_time", {}) + "\n"
    content, calls, reason = whole_answer(p, text, "stop")
    assert content == "Let me look." and reason == "tool_calls"
    assert [(c.index, c.name, json.loads(c.arguments)) for c in calls] == [
        (0, "get_weather", {"city": "Paris"}),
        (1, "get_time", {}),
    ]
    assert all(c.id.startswith("call_") for c in calls) and len({c.id for c in calls}) == 2
    for size in (1, 3, 7, len(text)):
        pieces = fed(p, text, size)
        assert [(c.name, c.arguments) for c in pieces if isinstance(c, Call)] == [
            (c.name, c.arguments) for c in calls
        ]
        assert "".join(x for x in pieces if isinstance(x, str)).strip() == "Let me look."


def test_text_and_broken_blocks_stay_text() -> None:
    p = plan(tools=[WEATHER])
    assert whole_answer(p, "Just text, a < and <tool", "stop") == ("Just text, a < and <tool", [], "stop")
    broken = "<tool_call>{not json}</tool_call>"
    assert whole_answer(p, broken, "stop") == (broken, [], "stop")
    unknown = call("launch_rockets", {})
    assert whole_answer(p, unknown, "stop") == (unknown, [], "stop")


def test_unclosed_block_at_the_end_and_arguments_as_text() -> None:
    p = plan(tools=[WEATHER])
    text = '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}'
    content, calls, reason = whole_answer(p, text, "stop")
    assert content is None and reason == "tool_calls"
    assert [json.loads(c.arguments) for c in calls] == [{"city": "Oslo"}]


def test_parallel_false_keeps_one_call() -> None:
    text = call("get_weather", {"city": "Paris"}) + call("get_weather", {"city": "Rome"})
    assert len(whole_answer(plan(tools=[WEATHER]), text, "stop")[1]) == 2
    _, calls, _ = whole_answer(plan(tools=[WEATHER], parallel_tool_calls=False), text, "stop")
    assert [json.loads(c.arguments) for c in calls] == [{"city": "Paris"}]


def test_guides_describe_the_calls() -> None:
    assert plan(tools=[WEATHER]).guide() is None
    required = plan(tools=[WEATHER, TIME], tool_choice="required").guide()
    assert required is not None and required.kind == "json"
    schema = json.loads(required.spec)
    jsonschema.Draft202012Validator.check_schema(schema)
    good = [{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "get_time", "arguments": {}}]
    jsonschema.validate(good, schema)
    for bad in ([], [{"name": "get_weather", "arguments": {}}], [{"name": "other", "arguments": {}}]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    assert schema["maxItems"] == 2  # bounded by the number of tools
    single = plan(tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False).guide()
    assert single is not None and json.loads(single.spec)["maxItems"] == 1
    named = plan(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    guide = named.guide()
    assert guide is not None
    jsonschema.validate(good[0], json.loads(guide.spec))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(good[1], json.loads(guide.spec))
    # The guided JSON parses into calls; one cut short before a call started stays text, finish_reason length.
    assert [
        c.name
        for c in whole_answer(plan(tools=[WEATHER, TIME], tool_choice="required"), json.dumps(good), "stop")[
            1
        ]
    ] == ["get_weather", "get_time"]
    assert whole_answer(named, '{"name": "get_weather", "argu', "length") == (
        '{"name": "get_weather", "argu',
        [],
        "length",
    )


def test_guided_calls_stream_their_arguments_as_they_come() -> None:
    """required / named: each call starts once its name is out, and its arguments follow in pieces, as the
    model wrote them (strings holding braces, quotes and escapes included); whole and fed agree."""
    args = [{"city": 'Pa{r}is \\"x\\"', "unit": "celsius"}, {"timezone": "Asia/Tokyo", "n": [1, {"a": []}]}]
    names = ["get_weather", "get_time"]
    text = json.dumps([{"name": n, "arguments": a} for n, a in zip(names, args, strict=True)])
    p = plan(tools=[WEATHER, TIME], tool_choice="required")
    content, calls, reason = whole_answer(p, text, "stop")
    assert content is None and reason == "tool_calls"
    assert [(c.index, c.name, json.loads(c.arguments)) for c in calls] == [
        (0, "get_weather", args[0]),
        (1, "get_time", args[1]),
    ]
    for size in (1, 2, 5, 11):
        pieces = fed(p, text, size)
        starts = [x for x in pieces if isinstance(x, CallStart)]
        assert [(s.index, s.name) for s in starts] == [(0, "get_weather"), (1, "get_time")]
        assert len([x for x in pieces if isinstance(x, ArgumentsPiece)]) > 2  # in pieces, not at the end
        assert [(c.name, c.arguments) for c in calls_of(pieces)] == [(c.name, c.arguments) for c in calls]
        first_args = next(i for i, x in enumerate(pieces) if isinstance(x, ArgumentsPiece))
        assert pieces.index(starts[1]) > first_args  # the second starts after the first's arguments


def test_guided_call_cut_short_keeps_what_was_written() -> None:
    named = plan(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    cut = '{"name": "get_weather", "arguments": {"city": "Pa'
    content, calls, reason = whole_answer(named, cut, "length")
    assert (content, reason) == (None, "length")
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", '{"city": "Pa')]


HISTORY = [
    {"role": "developer", "content": "Be brief."},
    *USER,
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "18C"},
    {"role": "tool", "tool_call_id": "c2", "content": "noon"},
]


def test_fallback_rendering() -> None:
    req = ChatCompletionRequest.model_validate({"model": "m", "messages": HISTORY, "tools": [WEATHER, TIME]})
    messages, tools = template_inputs(req, plan_tools(req), native=False)
    assert tools is None
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    system = messages[0]["content"]
    assert (
        system.startswith("Be brief.\n\n# Tools")
        and json.dumps(WEATHER) in system
        and "<tool_call>" in system
    )
    assert messages[2]["content"] == call("get_weather", {"city": "Paris"}) + "\n" + call("get_time", {})
    assert (
        messages[3]["content"]
        == "<tool_response>\n18C\n</tool_response>\n<tool_response>\nnoon\n</tool_response>"
    )
    # tool_choice none: the tools are not offered, the history still reads.
    req = req.model_copy(update={"tool_choice": "none"})
    messages, _ = template_inputs(req, plan_tools(req), native=False)
    assert "# Tools" not in messages[0]["content"] and "<tool_call>" in messages[2]["content"]


def test_native_rendering_passes_tools_and_calls_to_the_template() -> None:
    from transformers import AutoTokenizer

    from chatmodel_serving.models import resolve_source

    tok = AutoTokenizer.from_pretrained(resolve_source("builtin://smollm2-135m"))
    assert not supports_tools(tok)  # the shipped ChatML template: the fallback
    # A template that renders tools itself (the shape of Hermes/Qwen templates), on the same tokenizer.
    tok.chat_template = (
        "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}{{ '\\n' }}{% endif %}"
        "{% for m in messages %}{{ m.role }}: {{ m.content or '' }}"
        "{% for c in m.tool_calls or [] %}"
        "[{{ c.function.name }}({{ c.function.arguments.city }})]{% endfor %}"
        "{% if m.tool_call_id %}<{{ m.tool_call_id }}>{% endif %}{{ '\\n' }}{% endfor %}"
    )
    assert supports_tools(tok)
    req = ChatCompletionRequest.model_validate({"model": "m", "messages": HISTORY, "tools": [WEATHER, TIME]})
    messages, tools = template_inputs(req, plan_tools(req), native=True)
    text = tok.apply_chat_template(messages, tools=cast(Any, tools), tokenize=False)
    assert isinstance(text, str) and text.splitlines() == [
        "TOOLS:get_weather;get_time;",
        "system: Be brief.",
        "user: Weather in Paris?",
        "assistant: [get_weather(Paris)][get_time()]",
        "tool: 18C<c1>",
        "tool: noon<c2>",
    ]
