"""Tool calling: check a request's `tools` / `tool_choice`, render tools and past calls for the chat
template, and constrain `required` / a named function with a Guide; api/tool_calls.py reads the calls out of
the model's answer (whole, or as streamed deltas).

The call format is Hermes' (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`), the convention of
vLLM's `hermes` parser, Qwen and NousResearch templates. A chat template that takes `tools` gets them
natively; one that does not (the shipped SmolLM2's ChatML) gets FALLBACK_PROMPT in the system message, past
calls as `<tool_call>` text and results as `<tool_response>` text in a user turn (docs/tool-calling.md).
`required` and a named function are guided by a JSON schema (a list of calls, or one call), so their
arguments always parse and match the tool's parameters; `auto` is unconstrained, as in vLLM.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from ..engine.grammar import check_schema
from ..engine.types import Guide
from .protocol import (
    ApiError,
    ChatCompletionRequest,
    Tool,
)

Mode = Literal["none", "auto", "required", "named"]
OPEN, CLOSE = "<tool_call>", "</tool_call>"
NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}

FALLBACK_PROMPT = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""
RULES = {
    "required": "You must call at least one function.",
    "named": "You must call the function {name}.",
    "single": "Call at most one function.",
}


@dataclass(frozen=True)
class ToolPlan:
    """What a chat request asks of tools, checked."""

    tools: tuple[Tool, ...] = ()
    mode: Mode = "none"
    name: str | None = None  # mode "named"
    parallel: bool = True

    @property
    def offered(self) -> tuple[Tool, ...]:
        """The tools the model is told about (none with tool_choice "none")."""
        return () if self.mode == "none" else self.tools

    def parameters(self, tool: Tool) -> dict[str, Any]:
        return tool.function.parameters or NO_ARGUMENTS

    def guide(self) -> Guide | None:
        """`required` / named: a JSON schema of the calls, so the arguments always match the parameters."""
        if self.mode not in ("required", "named"):
            return None
        calls = [
            {
                "type": "object",
                "properties": {"name": {"const": t.function.name}, "arguments": self.parameters(t)},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for t in self.tools
            if self.mode == "required" or t.function.name == self.name
        ]
        if self.mode == "named":
            return Guide("json", json.dumps(calls[0]), param="tool_choice")
        # Bounded: unbounded, a small model repeats calls until max_tokens (seen with SmolLM2-135M).
        most = len(calls) if self.parallel else 1
        schema: dict[str, Any] = {"type": "array", "items": {"anyOf": calls}, "minItems": 1, "maxItems": most}
        return Guide("json", json.dumps(schema), param="tool_choice")

    def fallback_prompt(self) -> str:
        listed = "\n".join(json.dumps(t.model_dump(exclude_none=True)) for t in self.offered)
        rules = [RULES[self.mode].format(name=self.name)] if self.mode in RULES else []
        if not self.parallel:
            rules.append(RULES["single"])
        return "\n\n".join([FALLBACK_PROMPT.format(tools=listed), *rules])


def plan_tools(req: ChatCompletionRequest) -> ToolPlan:
    """Check tools, tool_choice and the history's calls; a 400 names the exact field (OpenAI's paths)."""
    tools = tuple(req.tools or ())
    names: set[str] = set()
    for i, tool in enumerate(tools):
        fn = tool.function
        if fn.name in names:
            raise ApiError(400, f"duplicate tool name {fn.name!r}", param=f"tools[{i}].function.name")
        names.add(fn.name)
        if fn.parameters is not None and (problem := _not_object_schema(fn.parameters)):
            raise ApiError(
                400, f"tools[{i}].function.parameters: {problem}", param=f"tools[{i}].function.parameters"
            )
    choice = req.tool_choice
    if choice is not None and choice != "none" and not tools:
        raise ApiError(400, "tool_choice needs tools", param="tool_choice")
    _check_history(req)
    parallel = req.parallel_tool_calls is not False
    if not tools or choice == "none":
        return ToolPlan(tools, "none", parallel=parallel)
    if choice is None or isinstance(choice, str):
        return _guidable(ToolPlan(tools, choice or "auto", parallel=parallel))
    if choice.function.name not in names:
        raise ApiError(
            400,
            f"tool_choice names {choice.function.name!r}, which is not among the tools",
            param="tool_choice.function.name",
        )
    return _guidable(ToolPlan(tools, "named", choice.function.name, parallel))


def _guidable(plan: ToolPlan) -> ToolPlan:
    """The schemas a guide will carry must compile: refused here, naming the tool, not in the engine."""
    for i, tool in enumerate(plan.tools if plan.mode in ("required", "named") else ()):
        if plan.mode == "named" and tool.function.name != plan.name:
            continue
        try:
            check_schema(plan.parameters(tool))
        except ValueError as exc:
            param = f"tools[{i}].function.parameters"
            raise ApiError(400, f"{param}: {exc}", param=param) from None
    return plan


def _not_object_schema(schema: dict[str, Any]) -> str | None:
    """Why `schema` is not a JSON schema of an object (None when it is one)."""
    if schema.get("type", "object") != "object":
        return f"must be a JSON schema of type object, not {schema.get('type')!r}"
    props = schema.get("properties", {})
    if not isinstance(props, dict) or not all(isinstance(p, dict | bool) for p in props.values()):
        return "properties must map each argument name to a JSON schema"
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        return "required must be a list of argument names"
    return None


def _check_history(req: ChatCompletionRequest) -> None:
    for i, m in enumerate(req.messages):
        if m.role == "tool" and not m.tool_call_id:
            raise ApiError(400, "a tool message needs tool_call_id", param=f"messages[{i}].tool_call_id")
        for j, call in enumerate(m.tool_calls or ()):
            param = f"messages[{i}].tool_calls[{j}]"
            if m.role != "assistant":
                raise ApiError(
                    400, "only assistant messages carry tool_calls", param=f"messages[{i}].tool_calls"
                )
            try:
                args = json.loads(call.function.arguments or "{}")
            except ValueError:
                args = None
            if not isinstance(args, dict):
                raise ApiError(400, "arguments must be a JSON object", param=f"{param}.function.arguments")


def supports_tools(tokenizer: Any) -> bool:
    """Whether the chat template renders `tools` itself (as Hugging Face templates that support them do)."""
    template = getattr(tokenizer, "chat_template", None)
    return isinstance(template, str) and "tools" in template


def template_inputs(
    req: ChatCompletionRequest, plan: ToolPlan, native: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages (and tools, for a template that takes them) to render."""
    messages: list[dict[str, Any]] = []
    for m in req.messages:
        role = "system" if m.role == "developer" else m.role
        calls = [
            (c.id, c.function.name, json.loads(c.function.arguments or "{}")) for c in m.tool_calls or ()
        ]
        if native:
            msg: dict[str, Any] = {"role": role, "content": m.text()}
            if calls:
                msg["tool_calls"] = [
                    {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                    for i, n, a in calls
                ]
            if m.tool_call_id:
                msg["tool_call_id"] = m.tool_call_id
            messages.append(msg)
        elif role == "tool":  # as Hermes/Qwen templates show results: a user turn, one per run of results
            text = f"<tool_response>\n{m.text()}\n</tool_response>"
            if messages and messages[-1].get("tool_results"):
                messages[-1]["content"] += "\n" + text
            else:
                messages.append({"role": "user", "content": text, "tool_results": True})
        else:
            parts = [m.text()] if m.text() else []
            parts += [f"{OPEN}\n{json.dumps({'name': n, 'arguments': a})}\n{CLOSE}" for _, n, a in calls]
            messages.append({"role": role, "content": "\n".join(parts)})
    for msg in messages:
        msg.pop("tool_results", None)
    if native:
        return messages, [t.model_dump(exclude_none=True) for t in plan.offered] or None
    if plan.offered:
        section = plan.fallback_prompt()
        if messages and messages[0]["role"] == "system":
            messages[0]["content"] = f"{messages[0]['content']}\n\n{section}".lstrip()
        else:
            messages.insert(0, {"role": "system", "content": section})
    return messages, None
