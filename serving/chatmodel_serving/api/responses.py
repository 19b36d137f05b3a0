"""Answers: a whole JSON response, or an SSE stream of chunks ending in `data: [DONE]`, built from the
response models in protocol.py. Chat and text completions differ only in their Shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..engine.types import Event
from .bridge import Job, collect, generate
from .protocol import (
    ApiError,
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatChunkOpening,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    Completion,
    CompletionChunk,
    ResponseModel,
    SamplingFields,
    TextChoice,
    TextChunkChoice,
    Usage,
    now,
)
from .state import Caller, ServedModel, ServerState


@dataclass(frozen=True)
class Shape:
    """How one endpoint's responses look: the only difference between chat and text completions."""

    response: type[ChatCompletion] | type[Completion]
    chunk: type[ChatCompletionChunk] | type[CompletionChunk]
    choice: Callable[[int, str, str], Any]  # (index, text, finish_reason) of a whole answer
    delta: Callable[[int, str, str | None], Any]  # (index, text, finish_reason) of a streamed piece
    opening: Callable[[int], Any] | None = None  # the first streamed chunk per choice


CHAT = Shape(
    ChatCompletion,
    ChatCompletionChunk,
    lambda i, t, r: ChatChoice(index=i, message=AssistantMessage(content=t), finish_reason=r),
    lambda i, t, r: ChatChunkChoice(index=i, delta=ChatDelta(content=t), finish_reason=r),
    lambda i: ChatChunkOpening(index=i, delta=ChatDelta(role="assistant", content="")),
)
TEXT = Shape(
    Completion,
    CompletionChunk,
    lambda i, t, r: TextChoice(index=i, text=t, finish_reason=r),
    lambda i, t, r: TextChunkChoice(index=i, text=t, finish_reason=r),
)


def sse(obj: ResponseModel | dict[str, Any]) -> bytes:
    body = obj.body() if isinstance(obj, ResponseModel) else obj
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n".encode()


async def answer(
    state: ServerState,
    served: ServedModel,
    req: SamplingFields,
    jobs: list[Job],
    prompt_tokens: int,
    rid: str,
    shape: Shape,
    caller: Caller,
) -> Response:
    created = now()
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await _stream(state, served, jobs, rid, created, shape, include_usage, prompt_tokens, caller)
    texts, reasons, completion = await collect(state, served, jobs, caller.key)
    choices = [shape.choice(i, t, r) for i, (t, r) in enumerate(zip(texts, reasons, strict=True))]
    body = shape.response(
        id=rid,
        created=created,
        model=served.name,
        choices=choices,
        usage=Usage.of(prompt_tokens, completion),
    )
    return JSONResponse(body.body(), headers=caller.headers)


async def _stream(
    state: ServerState,
    served: ServedModel,
    jobs: list[Job],
    rid: str,
    created: int,
    shape: Shape,
    include_usage: bool,
    prompt_tokens: int,
    caller: Caller,
) -> Response:
    events = generate(state, served, jobs, caller.key)

    def chunk(choices: list[Any], usage: Usage | None = None) -> bytes:
        return sse(shape.chunk(id=rid, created=created, model=served.name, choices=choices, usage=usage))

    async def body(first: tuple[int, Event] | None) -> AsyncIterator[bytes]:
        completion = 0
        try:
            if shape.opening:
                for i in range(len(jobs)):
                    yield chunk([shape.opening(i)])
            pending = [first] if first else []
            async for index, ev in _chain(pending, events):
                if ev.finish_reason == "error":
                    yield sse(ApiError(500, f"generation failed: {ev.error}", "server_error").body())
                    break
                if ev.finish_reason:
                    completion += ev.completion_tokens
                elif not ev.text:
                    continue
                yield chunk([shape.delta(index, ev.text, ev.finish_reason)])
            if include_usage:
                yield chunk([], usage=Usage.of(prompt_tokens, completion))
            yield b"data: [DONE]\n\n"
        finally:
            await events.aclose()

    # Wait for the first event before answering 200, so a full queue still gets a real 429.
    try:
        first: tuple[int, Event] | None = await events.__anext__()
    except StopAsyncIteration:
        first = None
    return StreamingResponse(
        body(first),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **caller.headers},
    )


async def _chain(
    pending: list[tuple[int, Event]], rest: AsyncIterator[tuple[int, Event]]
) -> AsyncIterator[tuple[int, Event]]:
    for item in pending:
        yield item
    async for item in rest:
        yield item
