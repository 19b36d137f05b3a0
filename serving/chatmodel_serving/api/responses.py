"""Answers: a whole JSON response, or an SSE stream of chunks ending in `data: [DONE]`, built from the
response models in protocol.py. Chat and text completions differ only in their Shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..engine.types import Event, TokenLogprob
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
    ChatLogprobs,
    ChatTokenLogprob,
    Completion,
    CompletionChunk,
    ResponseModel,
    SamplingFields,
    TextChoice,
    TextChunkChoice,
    TextLogprobs,
    TopLogprob,
    Usage,
    now,
)
from .state import Caller, ServedModel, ServerState
from .tool_calls import Call, ToolStream, finish_reason, whole_answer
from .tools import ToolPlan


def _token_texts(tokenizer: Any, logprobs: list[TokenLogprob]) -> dict[int, str]:
    """The text of every token named (sampled and top), each decoded alone, special tokens included."""
    ids = sorted({t for lp in logprobs for t in (lp.token_id, *(i for i, _ in lp.top))})
    if not ids:  # no token (an empty answer): batch_decode([]) does not answer []
        return {}
    texts = tokenizer.batch_decode(
        [[i] for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    return dict(zip(ids, texts, strict=True))


def chat_logprobs(tokenizer: Any, logprobs: list[TokenLogprob], offset: int) -> tuple[ChatLogprobs, int]:
    """OpenAI chat's `logprobs.content` (the offset is completions' only: returned unchanged)."""
    names = _token_texts(tokenizer, logprobs)

    def top(t: int, v: float) -> TopLogprob:
        return TopLogprob(token=names[t], logprob=v, bytes=list(names[t].encode()))

    content = [
        ChatTokenLogprob(
            token=names[lp.token_id],
            logprob=lp.logprob,
            bytes=list(names[lp.token_id].encode()),
            top_logprobs=[top(t, v) for t, v in lp.top],
        )
        for lp in logprobs
    ]
    return ChatLogprobs(content=content), offset


def text_logprobs(tokenizer: Any, logprobs: list[TokenLogprob], offset: int) -> tuple[TextLogprobs, int]:
    """Completions' parallel lists; text_offset counts on from `offset` (the choice's text so far)."""
    names = _token_texts(tokenizer, logprobs)
    tokens = [names[lp.token_id] for lp in logprobs]
    offsets, tops = [], []
    for tok, lp in zip(tokens, logprobs, strict=True):
        offsets.append(offset)
        offset += len(tok)
        top: dict[str, float] = {}
        for t, v in lp.top:
            top.setdefault(names[t], v)
        top.setdefault(tok, lp.logprob)  # the sampled token, always (up to logprobs + 1 entries)
        tops.append(top)
    body = TextLogprobs(
        tokens=tokens,
        token_logprobs=[lp.logprob for lp in logprobs],
        top_logprobs=list(tops),
        text_offset=offsets,
    )
    return body, offset


@dataclass(frozen=True)
class Shape:
    """How one endpoint's responses look: the only difference between chat and text completions."""

    response: type[ChatCompletion] | type[Completion]
    chunk: type[ChatCompletionChunk] | type[CompletionChunk]
    choice: Callable[[int, str, str, Any], Any]  # (index, text, finish_reason, logprobs) of a whole answer
    delta: Callable[[int, str, str | None, Any], Any]  # the same of a streamed piece
    # (tokenizer, token logprobs, text offset) -> (the choice's `logprobs`, the offset after them)
    logprobs: Callable[[Any, list[TokenLogprob], int], tuple[Any, int]]
    opening: Callable[[int], Any] | None = None  # the first streamed chunk per choice


CHAT = Shape(
    ChatCompletion,
    ChatCompletionChunk,
    lambda i, t, r, lp: ChatChoice(
        index=i, message=AssistantMessage(content=t), logprobs=lp, finish_reason=r
    ),
    lambda i, t, r, lp: ChatChunkChoice(index=i, delta=ChatDelta(content=t), logprobs=lp, finish_reason=r),
    chat_logprobs,
    lambda i: ChatChunkOpening(index=i, delta=ChatDelta(role="assistant", content="")),
)
TEXT = Shape(
    Completion,
    CompletionChunk,
    lambda i, t, r, lp: TextChoice(index=i, text=t, logprobs=lp, finish_reason=r),
    lambda i, t, r, lp: TextChunkChoice(index=i, text=t, logprobs=lp, finish_reason=r),
    text_logprobs,
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
    tools: ToolPlan | None = None,
) -> Response:
    created = now()
    want_logprobs = req.logprobs_wanted() is not None
    tools = tools if tools and tools.mode != "none" else None  # None: the answer is text, as it stands
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await _stream(
            state,
            served,
            jobs,
            rid,
            created,
            shape,
            include_usage,
            prompt_tokens,
            caller,
            want_logprobs,
            tools,
        )
    texts, reasons, completion, logprobs = await collect(state, served, jobs, caller.key)
    tokenizer = served.loaded.tokenizer

    def choice(i: int, text: str, reason: str, lps: list[TokenLogprob]) -> Any:
        lp = shape.logprobs(tokenizer, lps, 0)[0] if want_logprobs else None
        if tools is None:
            return shape.choice(i, text, reason, lp)
        content, calls, reason = whole_answer(tools, text, reason)
        message = AssistantMessage(content=content, tool_calls=[c.response() for c in calls] or None)
        return ChatChoice(index=i, message=message, logprobs=lp, finish_reason=reason)

    choices = [choice(i, *answer) for i, answer in enumerate(zip(texts, reasons, logprobs, strict=True))]
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
    want_logprobs: bool,
    tools: ToolPlan | None,
) -> Response:
    events = generate(state, served, jobs, caller.key)
    offsets = [0] * len(jobs)  # per choice, the text offset of its next token (completions' logprobs)
    parsers = [ToolStream(tools) for _ in jobs] if tools else []
    called = [False] * len(jobs)

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
                logprobs = None
                if want_logprobs and ev.logprobs:
                    logprobs, offsets[index] = shape.logprobs(
                        served.loaded.tokenizer, ev.logprobs, offsets[index]
                    )
                if not parsers:
                    yield chunk([shape.delta(index, ev.text, ev.finish_reason, logprobs)])
                    continue
                # Tool calling: text outside the calls as content deltas, each call as tool_call deltas.
                p = parsers[index]
                pieces = p.feed(ev.text) + (p.finish() if ev.finish_reason else [])
                text = "".join(x for x in pieces if isinstance(x, str))
                if text or logprobs:
                    yield chunk([shape.delta(index, text, None, logprobs)])
                for piece in pieces:
                    if isinstance(piece, str):
                        continue
                    called[index] = True
                    for d in piece.deltas() if isinstance(piece, Call) else [piece.delta()]:
                        delta = ChatDelta(content=None, tool_calls=[d])
                        yield chunk([ChatChunkChoice(index=index, delta=delta, finish_reason=None)])
                if ev.finish_reason:
                    reason = finish_reason(called[index], ev.finish_reason)
                    yield chunk([shape.delta(index, "", reason, None)])
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
