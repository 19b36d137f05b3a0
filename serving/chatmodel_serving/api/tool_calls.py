"""Tool calls out of the model's text (api/tools.py plans and guides them): the Hermes `<tool_call>` blocks
of `auto`, the guided JSON of `required` / a named function, whole or piece by piece as a stream arrives,
and the pieces OpenAI's responses and stream deltas are made of."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from .protocol import FunctionCall, FunctionCallDelta, ResponseToolCall, ToolCallDelta
from .tools import CLOSE, OPEN, ToolPlan


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass(frozen=True)
class CallStart:
    """A call's name, known before its arguments (guided calls stream their arguments as they come)."""

    index: int
    name: str
    id: str = field(default_factory=_call_id)

    def delta(self) -> ToolCallDelta:
        """OpenAI's first delta of a call: id, type and name, empty arguments."""
        function = FunctionCallDelta(name=self.name, arguments="")
        return ToolCallDelta(index=self.index, id=self.id, type="function", function=function)


@dataclass(frozen=True)
class ArgumentsPiece:
    """More of a started call's arguments (JSON text)."""

    index: int
    text: str

    def delta(self) -> ToolCallDelta:
        return ToolCallDelta(index=self.index, function=FunctionCallDelta(arguments=self.text))


@dataclass(frozen=True)
class Call:
    """One parsed tool call; `index` is its place among the choice's calls."""

    index: int
    name: str
    arguments: str  # JSON text
    id: str = field(default_factory=_call_id)

    def response(self) -> ResponseToolCall:
        return ResponseToolCall(id=self.id, function=FunctionCall(name=self.name, arguments=self.arguments))

    def deltas(self) -> list[ToolCallDelta]:
        """OpenAI's streamed shape: id, type and name with empty arguments, then the arguments."""
        head = CallStart(self.index, self.name, self.id)
        return [head.delta(), ArgumentsPiece(self.index, self.arguments).delta()]


# What a ToolStream emits: answer text, a whole call (auto), or a call's start and its arguments (guided).
Piece = str | Call | CallStart | ArgumentsPiece


def calls_of(pieces: list[Piece]) -> list[Call]:
    """The whole calls the pieces spell (a started call gathers its arguments pieces)."""
    calls: list[Call] = []
    for piece in pieces:
        if isinstance(piece, Call):
            calls.append(piece)
        elif isinstance(piece, CallStart):
            calls.append(Call(piece.index, piece.name, "", piece.id))
        elif isinstance(piece, ArgumentsPiece):
            last = calls[-1]
            calls[-1] = Call(last.index, last.name, last.arguments + piece.text, last.id)
    return calls


class ToolStream:
    """Turns one choice's text, piece by piece, into answer text and calls. `auto`: Hermes `<tool_call>`
    blocks (a block that does not parse, or names no offered tool, stays text); `required` / named: the
    guided JSON (`{"name": ..., "arguments": {...}}`, one or a list), each call's start as soon as its name is
    out and its arguments as they come, as the model wrote them. The whole-answer path runs the same parser,
    so a stream and a whole answer carry the same calls."""

    def __init__(self, plan: ToolPlan):
        self.plan = plan
        self.names = {t.function.name for t in plan.tools}
        self.pending, self.in_call, self.calls = "", False, 0
        self.guided = GuidedCalls() if plan.mode in ("required", "named") else None

    def feed(self, text: str) -> list[Piece]:
        if self.guided is not None:
            return self.guided.feed(text)
        self.pending += text
        out: list[Piece] = []
        while True:
            if not self.in_call:
                k = self.pending.find(OPEN)
                if k < 0:  # hold back what may be the start of a tag
                    keep = next(
                        (n for n in range(len(OPEN) - 1, 0, -1) if self.pending.endswith(OPEN[:n])), 0
                    )
                    text, self.pending = (
                        self.pending[: len(self.pending) - keep],
                        self.pending[len(self.pending) - keep :],
                    )
                    out += [text] if text else []
                    return out
                out += [self.pending[:k]] if k else []
                self.pending, self.in_call = self.pending[k + len(OPEN) :], True
            else:
                k = self.pending.find(CLOSE)
                if k < 0:
                    return out
                body, self.pending, self.in_call = self.pending[:k], self.pending[k + len(CLOSE) :], False
                out += self._block(body, closed=True)

    def finish(self) -> list[Piece]:
        if self.guided is not None:
            return self.guided.finish()
        rest, self.pending = self.pending, ""
        if self.in_call:  # the model ended inside a block (EOS before the closing tag)
            self.in_call = False
            return self._block(rest, closed=False)
        return [rest] if rest else []

    def _block(self, body: str, closed: bool) -> list[Piece]:
        parsed = _hermes_call(body)
        call = self._call(*parsed) if parsed and parsed[0] in self.names else None
        if call:
            return [call]
        if parsed and parsed[0] in self.names:
            return []  # a further call where parallel_tool_calls is false: dropped
        return [OPEN + body + (CLOSE if closed else "")]

    def _call(self, name: str, arguments: Any) -> Call | None:
        if self.calls and not self.plan.parallel:
            return None
        self.calls += 1
        return Call(self.calls - 1, name, json.dumps(arguments, ensure_ascii=False))


def _hermes_call(body: str) -> tuple[str, Any] | None:
    """{"name": ..., "arguments": {...}} (or "parameters", or arguments as JSON text), else None."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    return (obj["name"], args) if isinstance(args, dict) else None


# A guided call's opening, up to its arguments: the guide's schema puts "name" first (tools.ToolPlan.guide).
_CALL_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*')
_BETWEEN = "[], \n\t\r}"  # what may stand between calls: the list's brackets, commas, a call's closing brace


class GuidedCalls:
    """Reads `required` / named answers (the guide's JSON) as they come: a CallStart once a call's name is
    out, then its arguments text piece by piece, tracking JSON strings and nesting to see where they end.
    An answer cut short (max_tokens) keeps the calls started, with the arguments written so far (as OpenAI,
    with finish_reason "length"); one cut before any call started is text."""

    def __init__(self) -> None:
        self.pending, self.calls = "", 0
        self.depth, self.in_string, self.escape = 0, False, False
        self.in_arguments = False

    def feed(self, text: str) -> list[Piece]:
        self.pending += text
        out: list[Piece] = []
        while self.pending:
            if self.in_arguments:
                if self.depth == 0:  # the space after "arguments": is not theirs
                    self.pending = self.pending.lstrip()
                    if not self.pending:
                        return out
                end = self._scan()
                if end:
                    out.append(ArgumentsPiece(self.calls - 1, self.pending[:end]))
                    self.pending = self.pending[end:]
                if self.in_arguments:
                    return out
                continue
            rest = self.pending.lstrip(_BETWEEN)
            if not rest:
                return out
            head = _CALL_HEAD.match(rest)
            if head is None:
                return out  # not yet a whole opening (the grammar allows nothing else)
            out.append(CallStart(self.calls, json.loads(f'"{head.group(1)}"')))
            self.calls += 1
            self.pending, self.in_arguments = rest[head.end() :], True
        return out

    def _scan(self) -> int:
        """How much of `pending` belongs to the arguments; leaves in_arguments False once they closed."""
        for i, ch in enumerate(self.pending):
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif ch == "\\":
                    self.escape = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.in_arguments = False
                    return i + 1
        return len(self.pending)

    def finish(self) -> list[Piece]:
        rest, self.pending = self.pending, ""
        if self.calls == 0 and rest:
            return [rest]  # cut short before any call: the text as it is
        return []


def whole_answer(plan: ToolPlan, text: str, reason: str) -> tuple[str | None, list[Call], str]:
    """A whole answer's content (null when only calls), calls and finish_reason."""
    s = ToolStream(plan)
    pieces = s.feed(text) + s.finish()
    calls = calls_of(pieces)
    content = "".join(p for p in pieces if isinstance(p, str))
    if calls:
        content = content.strip()
    return content or (None if calls else ""), calls, finish_reason(calls, reason)


def finish_reason(calls: list[Call] | bool, reason: str) -> str:
    return "tool_calls" if calls and reason == "stop" else reason
