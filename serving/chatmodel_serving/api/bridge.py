"""The engine bridge: submit a request's sequences to its model's engine, relay the events from the
engine's thread into the event loop, and count them (metrics, token quota)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

from ..engine.types import (
    EngineStoppedError,
    Event,
    PromptTooLongError,
    QueueFullError,
    SamplingParams,
    TokenLogprob,
    UnknownAdapterError,
    UnsupportedParamError,
)
from .protocol import ApiError
from .state import ServedModel, ServerState

Job = tuple[list[int], SamplingParams]  # one sequence: prompt token ids and how to sample


async def generate(
    state: ServerState, served: ServedModel, jobs: list[Job], caller: str
) -> AsyncGenerator[tuple[int, Event]]:
    """Run several sequences on the engine; yield (index, event) as they arrive."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
    engine, m, name = served.engine, state.metrics, served.name
    if len(jobs) > engine.queue_limit:  # it would never fit: a 429 would ask for retries in vain
        message = (
            f"this request asks for {len(jobs)} sequences (prompts x n); at most {engine.queue_limit} fit"
        )
        raise ApiError(400, message, param="n")
    ids: dict[int, int] = {}
    start = time.monotonic()
    try:
        for index, (prompt, params) in enumerate(jobs):

            def sink(ev: Event, index: int = index) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, (index, ev))

            if params.guide is not None:  # compiling it (bounded, engine/grammar.py): not on the event loop
                await asyncio.to_thread(engine.prepare, params)
            ids[index] = engine.submit(prompt, params, sink)
            m.prompt_tokens.labels(name).inc(len(prompt))
    except QueueFullError as exc:
        for rid in ids.values():
            engine.cancel(rid)
        raise ApiError(
            429,
            f"the server is busy ({exc}); retry shortly",
            "rate_limit_error",
            code="queue_full",
            headers={"Retry-After": "1"},
        ) from None
    except PromptTooLongError as exc:
        for rid in ids.values():
            engine.cancel(rid)
        raise ApiError(413, str(exc), code="kv_cache_exceeded") from None
    except EngineStoppedError as exc:
        raise ApiError(503, str(exc), "service_unavailable", code="draining") from None
    except UnsupportedParamError as exc:
        for rid in ids.values():
            engine.cancel(rid)
        raise ApiError(400, str(exc), param=exc.param) from None
    except UnknownAdapterError:  # unloaded since the route picked it
        for rid in ids.values():
            engine.cancel(rid)
        raise ApiError(
            404, f"model {name!r} does not exist; see GET /v1/models", param="model", code="model_not_found"
        ) from None
    first_seen: set[int] = set()
    try:
        while ids:
            index, ev = await queue.get()
            if index not in first_seen:
                first_seen.add(index)
                m.ttft.labels(name).observe(time.monotonic() - start)
            if ev.finish_reason:
                del ids[index]
                m.e2e.labels(name).observe(time.monotonic() - start)
                m.generation_tokens.labels(name).inc(ev.completion_tokens)
                m.requests.labels(name, ev.finish_reason).inc()
                await state.quotas.spend(caller, len(jobs[index][0]) + ev.completion_tokens)
            yield index, ev
    finally:
        for rid in ids.values():  # the client went away: free the batch slots
            engine.cancel(rid)


async def collect(
    state: ServerState, served: ServedModel, jobs: list[Job], caller: str
) -> tuple[list[str], list[str], int, list[list[TokenLogprob]]]:
    """Whole answers: (texts, finish reasons, completion tokens in all, each answer's token logprobs)."""
    texts, reasons, completion = [""] * len(jobs), [""] * len(jobs), 0
    logprobs: list[list[TokenLogprob]] = [[] for _ in jobs]
    async for index, ev in generate(state, served, jobs, caller):
        texts[index] += ev.text
        logprobs[index] += ev.logprobs or []
        if ev.finish_reason:
            if ev.finish_reason == "error":
                raise ApiError(500, f"generation failed: {ev.error}", "server_error", code="engine_error")
            reasons[index] = ev.finish_reason
            completion += ev.completion_tokens
    return texts, reasons, completion, logprobs
