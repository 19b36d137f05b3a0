"""The OpenAI-compatible HTTP API in front of one or more engines.

Routes: POST /v1/chat/completions, POST /v1/completions (both stream as SSE ending in `data: [DONE]`),
GET /v1/models, GET /health (alive), GET /ready (loaded and not draining), GET /metrics.
Every error is OpenAI-shaped JSON; nothing a client sends can cause a 5xx.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from .engine import Engine, EngineStoppedError, Event, QueueFullError, SamplingParams
from .metrics import ServingMetrics
from .models import LoadedModel
from .protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    SamplingFields,
    invalid_request,
    new_id,
    now,
)
from .quota import ANONYMOUS, Limits, Quotas

log = logging.getLogger("chatmodel.api")
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models")
CALLER_KEY = "chatmodel.api_key"  # where RequestGate leaves the checked key in the ASGI scope


@dataclass
class ServedModel:
    name: str
    loaded: LoadedModel
    engine: Engine
    default_max_tokens: int = 512
    default_temperature: float = 0.7
    created: int = field(default_factory=now)


@dataclass
class ServerState:
    models: dict[str, ServedModel]
    api_keys: list[str]
    log_prompts: bool = False
    ui: bool = True  # the playground page at /
    quotas: Quotas = field(default_factory=lambda: Quotas(Limits()))
    max_request_bytes: int = 1 << 20
    draining: bool = False
    metrics: ServingMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = ServingMetrics(lambda: {n: m.engine.stats() for n, m in self.models.items()})
        for name in self.models:  # exported at 0, so rate() sees the first refusal
            for kind in ("requests", "tokens"):
                self.metrics.rate_limited.labels(name, kind)

    def inflight(self) -> bool:
        return any(not m.engine.idle() for m in self.models.values())


# ---------------------------------------------------------------- helpers


def check_api_key(state: ServerState, header: str) -> str:
    """The caller's API key (the quota bucket) from an Authorization header, or ANONYMOUS when the server
    has no keys."""
    if not state.api_keys:
        return ANONYMOUS
    scheme, _, token = header.partition(" ")
    given = token.strip().encode() if scheme.lower() == "bearer" else b""
    # Compare against every key, always, so timing says nothing about which prefix matched.
    matched = None
    for key in state.api_keys:
        if hmac.compare_digest(given, key.encode()):
            matched = key
    if matched is None:
        raise ApiError(
            401,
            "missing or invalid API key; send Authorization: Bearer <key>",
            "authentication_error",
            code="invalid_api_key",
        )
    return matched


def pick_model(state: ServerState, name: str) -> ServedModel:
    model = state.models.get(name)
    if model is None:
        raise ApiError(
            404, f"model {name!r} does not exist; see GET /v1/models", param="model", code="model_not_found"
        )
    return model


def chat_prompt(served: ServedModel, req: ChatCompletionRequest) -> list[int]:
    tokenizer = served.loaded.tokenizer
    if getattr(tokenizer, "chat_template", None) is None:
        raise ApiError(400, f"model {served.name!r} has no chat template; use /v1/completions", param="model")
    messages = [
        {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages
    ]
    try:
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
    except Exception as exc:  # the template's own checks (role order, ...) are client errors
        raise ApiError(
            400, f"messages do not fit the model's chat template: {exc}", param="messages"
        ) from None
    return list(ids)


def completion_prompts(served: ServedModel, req: CompletionRequest) -> list[list[int]]:
    p = req.prompt
    tokenizer = served.loaded.tokenizer

    def encode(text: str) -> list[int]:
        # Text can encode to no token at all (found by the fuzzer): start from end-of-text then.
        return tokenizer.encode(text, add_special_tokens=False) or [tokenizer.eos_token_id]

    if isinstance(p, str):
        return [encode(p)]
    if all(isinstance(x, str) for x in p):
        return [encode(s) for s in p]  # type: ignore[arg-type]
    prompts: list[list[int]] = [p] if all(isinstance(x, int) for x in p) else p  # type: ignore[list-item,assignment]
    vocab = served.loaded.model.config.vocab_size
    for ids in prompts:
        if any(not 0 <= t < vocab for t in ids):
            raise ApiError(400, f"token ids must lie in [0, {vocab})", param="prompt")
    return [list(ids) for ids in prompts]


def sampling_params(
    served: ServedModel, req: SamplingFields, requested: int | None, prompt_len: int, prompt_param: str
) -> SamplingParams:
    ctx = served.loaded.context_length
    room = ctx - prompt_len
    if room <= 0:
        raise ApiError(
            413,
            f"the prompt is {prompt_len} tokens; this model's context is {ctx} tokens",
            param=prompt_param,
            code="context_length_exceeded",
        )
    max_tokens = requested if requested is not None else min(served.default_max_tokens, room)
    if max_tokens > room:
        raise ApiError(
            400,
            f"max_tokens is {max_tokens} but only {room} tokens of the {ctx}-token context "
            f"are left after the {prompt_len}-token prompt",
            param="max_tokens",
        )
    beams = req.beams()
    if beams > 1 and req.n > 1:
        raise ApiError(400, "use_beam_search returns one answer per prompt; set n to 1", param="n")
    temperature = served.default_temperature if req.temperature is None else req.temperature
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=0.0 if beams > 1 else temperature,
        top_p=req.top_p or 1.0,
        seed=req.seed,
        stop=req.stop_list(),
        ignore_eos=req.ignore_eos,
        beams=beams,
    )


async def generate(
    state: ServerState, served: ServedModel, jobs: list[tuple[list[int], SamplingParams]], caller: str
) -> AsyncIterator[tuple[int, Event]]:
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
    except EngineStoppedError as exc:
        raise ApiError(503, str(exc), "service_unavailable", code="draining") from None
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
                state.quotas.spend(caller, len(jobs[index][0]) + ev.completion_tokens)
            yield index, ev
    finally:
        for rid in ids.values():  # the client went away: free the batch slots
            engine.cancel(rid)


def sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def collect(
    state: ServerState, served: ServedModel, jobs: list[tuple[list[int], SamplingParams]], caller: str
) -> tuple[list[str], list[str], int]:
    texts, reasons, completion = [""] * len(jobs), [""] * len(jobs), 0
    async for index, ev in generate(state, served, jobs, caller):
        texts[index] += ev.text
        if ev.finish_reason:
            if ev.finish_reason == "error":
                raise ApiError(500, f"generation failed: {ev.error}", "server_error", code="engine_error")
            reasons[index] = ev.finish_reason
            completion += ev.completion_tokens
    return texts, reasons, completion


# ---------------------------------------------------------------- the app


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="chatmodel serving runtime", version="0.1.0")
    app.state.server = state
    metrics = state.metrics

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        e = invalid_request(exc.errors())
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        e = ApiError(exc.status_code, str(exc.detail), code=code)
        return JSONResponse(e.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        e = ApiError(500, "internal server error", "server_error")
        return JSONResponse(e.body(), status_code=500)

    async def authenticated(request: Request) -> str:
        """The key RequestGate checked (before the body was read: strangers learn nothing about it)."""
        return str(request.scope[CALLER_KEY])

    def guard(key: str, model: str) -> tuple[ServedModel, Caller]:
        """Refuse while draining, pick the model and count the request against the key's quota."""
        if state.draining:
            raise ApiError(
                503,
                "the server is draining and takes no new requests",
                "service_unavailable",
                code="draining",
                headers={"Retry-After": "1"},
            )
        served = pick_model(state, model)
        try:
            headers = state.quotas.admit(key, served.name)
        except ApiError as e:
            metrics.rate_limited.labels(served.name, e.type).inc()
            raise
        return served, Caller(key, headers)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ready", "models": list(state.models)})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models(_: str = Depends(authenticated)) -> dict[str, Any]:
        data = [
            {
                "id": m.name,
                "object": "model",
                "created": m.created,
                "owned_by": "chatmodel",
                "root": m.loaded.source,
                "max_model_len": m.loaded.context_length,
            }
            for m in state.models.values()
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatCompletionRequest, key: str = Depends(authenticated)) -> Any:
        served, caller = guard(key, req.model)
        prompt = chat_prompt(served, req)
        params = sampling_params(served, req, req.requested_max_tokens(), len(prompt), "messages")
        jobs = [(prompt, _with_seed(params, i)) for i in range(req.n)]
        rid = new_id("chatcmpl")
        if state.log_prompts:
            log.info("prompt", extra={"request_id": rid, "messages": [m.model_dump() for m in req.messages]})
        return await answer(state, served, req, jobs, len(prompt), rid, CHAT, caller)

    @app.post("/v1/completions", response_model=None)
    async def completions(req: CompletionRequest, key: str = Depends(authenticated)) -> Any:
        served, caller = guard(key, req.model)
        prompts = completion_prompts(served, req)
        jobs = []
        for prompt in prompts:
            params = sampling_params(served, req, req.requested_max_tokens(), len(prompt), "prompt")
            jobs += [(prompt, _with_seed(params, i)) for i in range(req.n)]
        prompt_tokens = sum(len(p) for p in prompts)
        return await answer(state, served, req, jobs, prompt_tokens, new_id("cmpl"), TEXT, caller)

    if state.ui:
        from .ui_routes import add_playground

        add_playground(app)
    _document_token_ids(app, state)
    return RequestLog(RequestGate(app, state))  # type: ignore[return-value]


def _document_token_ids(app: FastAPI, state: ServerState) -> None:
    """/openapi.json says which token ids this server's models accept (the request model cannot know)."""
    vocab = min((m.loaded.model.config.vocab_size for m in state.models.values()), default=None)
    build = app.openapi

    def openapi() -> dict[str, Any]:
        doc = build()
        prompt = doc["components"]["schemas"]["CompletionRequest"]["properties"]["prompt"]
        for option in prompt["anyOf"]:
            items = option.get("items", {})
            ids = items.get("items", items)  # a list of ids, or a list of lists of ids
            if vocab and ids.get("type") == "integer":
                ids["maximum"] = vocab - 1
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


@dataclass(frozen=True)
class Caller:
    key: str  # the quota bucket
    headers: dict[str, str]  # x-ratelimit-* for the response


@dataclass(frozen=True)
class Shape:
    """How one endpoint's responses look: the only difference between chat and text completions."""

    object: str
    chunk_object: str
    choice: Callable[[int, str, str], dict[str, Any]]  # (index, text, finish_reason) of a whole answer
    delta: Callable[[int, str], dict[str, Any]]  # (index, text) of a streamed piece
    opening: Callable[[int], dict[str, Any]] | None = None  # the first streamed chunk per choice


CHAT = Shape(
    "chat.completion",
    "chat.completion.chunk",
    lambda i, t, r: {
        "index": i,
        "message": {"role": "assistant", "content": t},
        "logprobs": None,
        "finish_reason": r,
    },
    lambda i, t: {"index": i, "delta": {"content": t}, "logprobs": None},
    lambda i: {"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None},
)
TEXT = Shape(
    "text_completion",
    "text_completion",
    lambda i, t, r: {"index": i, "text": t, "logprobs": None, "finish_reason": r},
    lambda i, t: {"index": i, "text": t, "logprobs": None},
)


async def answer(
    state: ServerState,
    served: ServedModel,
    req: SamplingFields,
    jobs: list[tuple[list[int], SamplingParams]],
    prompt_tokens: int,
    rid: str,
    shape: Shape,
    caller: Caller,
) -> Any:
    created = now()
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return await _stream(state, served, jobs, rid, created, shape, include_usage, prompt_tokens, caller)
    texts, reasons, completion = await collect(state, served, jobs, caller.key)
    choices = [shape.choice(i, t, r) for i, (t, r) in enumerate(zip(texts, reasons, strict=True))]
    body = {
        "id": rid,
        "object": shape.object,
        "created": created,
        "model": served.name,
        "choices": choices,
        "usage": usage(prompt_tokens, completion),
    }
    return JSONResponse(body, headers=caller.headers)


def _with_seed(params: SamplingParams, i: int) -> SamplingParams:
    """The i-th of n choices: its own seed, so choices differ yet the whole answer is reproducible."""
    if i == 0 or params.seed is None:
        return params
    seed = (params.seed + i + 2**63) % 2**64 - 2**63  # stays an int64 (Triton's seed tensor)
    return SamplingParams(**{**params.__dict__, "seed": seed})


async def _stream(
    state: ServerState,
    served: ServedModel,
    jobs: list[tuple[list[int], SamplingParams]],
    rid: str,
    created: int,
    shape: Shape,
    include_usage: bool,
    prompt_tokens: int,
    caller: Caller,
) -> Response:
    events = generate(state, served, jobs, caller.key)

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        return sse(
            {
                "id": rid,
                "object": shape.chunk_object,
                "created": created,
                "model": served.name,
                "choices": choices,
                **extra,
            }
        )

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
                c = shape.delta(index, ev.text)
                if ev.finish_reason:
                    completion += ev.completion_tokens
                    c["finish_reason"] = ev.finish_reason
                elif not ev.text:
                    continue
                else:
                    c["finish_reason"] = None
                yield chunk([c])
            if include_usage:
                yield chunk([], usage=usage(prompt_tokens, completion))
            yield b"data: [DONE]\n\n"
        finally:
            await events.aclose()  # type: ignore[attr-defined]

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


class RequestGate:
    """ASGI middleware in front of the app: the API key of /v1/ requests is checked first (401 before any
    of the body is read), then a body over the size limit gets a 413 before the app sees any of it, whether
    it says its Content-Length or arrives chunked (then it is read up to the limit, and replayed)."""

    def __init__(self, app: FastAPI, state: ServerState):
        self.app, self.state, self.limit = app, state, state.max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        if scope.get("path", "").startswith("/v1/"):
            try:
                scope[CALLER_KEY] = check_api_key(
                    self.state, headers.get(b"authorization", b"").decode("latin-1")
                )
            except ApiError as e:
                await JSONResponse(e.body(), status_code=e.status)(scope, _disconnected, send)
                return
        if scope.get("method") in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(scope, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # then the client's disconnect, as the app expects

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        message = f"the request body is over this server's limit of {self.limit} bytes"
        e = ApiError(413, message, code="body_too_large")
        await JSONResponse(e.body(), status_code=413)(scope, _disconnected, send)


async def _disconnected() -> Message:
    return {"type": "http.disconnect"}


class RequestLog:
    """ASGI middleware: a request id on every response and one structured log line per request
    (never the prompt or the answer)."""

    def __init__(self, app: RequestGate):
        self.app = app
        self.state: ServerState = app.app.state.server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        rid = headers.get(b"x-request-id", b"").decode(errors="replace")[:64] or uuid.uuid4().hex
        start, status = time.monotonic(), [0]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            path = scope.get("path", "")
            if path not in ("/health", "/ready", "/metrics"):
                log.info(
                    "request",
                    extra={
                        "request_id": rid,
                        "method": scope.get("method"),
                        "path": path,
                        "status": status[0],
                        "duration_s": round(time.monotonic() - start, 4),
                    },
                )
            route = path if path in ROUTES else "other"  # bounded label values
            self.state.metrics.http.labels(route, str(status[0])).inc()
