"""The OpenAI-compatible HTTP API in front of one or more engines.

Routes: POST /v1/chat/completions, POST /v1/completions (both stream as SSE ending in `data: [DONE]`),
GET /v1/models, GET /v1/versions (the playground's Versions view, api/versions.py), POST
/v1/load_lora_adapter and /v1/unload_lora_adapter (api/adapters.py), GET /health (alive),
GET /ready (loaded and not draining; the served models, and with --adapters-file its aliases and refused
adapters), GET /metrics.
Every error is OpenAI-shaped JSON; nothing a client sends can cause a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from .adapter_table import apply_table, follow_table, read_table, table_report
from .adapters import add_adapter_routes, ensure_served
from .auth import CALLER_KEY
from .middleware import RequestGate, RequestLog
from .prompts import chat_prompt, completion_prompts, sampling_params, with_seed
from .protocol import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    invalid_request,
    new_id,
)
from .responses import CHAT, TEXT, answer
from .state import Caller, ServedModel, ServerState
from .tools import plan_tools
from .versions import add_versions

log = logging.getLogger("chatmodel.api")

__all__ = ["ServedModel", "ServerState", "create_app"]


def create_app(state: ServerState) -> RequestLog:
    """The FastAPI app behind its ASGI middleware (RequestGate, then RequestLog)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        """--adapters-file: every adapter in it loaded before the server listens (a new pod is ready only
        with all of them), then the file followed."""
        if not state.adapters_file:
            yield
            return
        await apply_table(state, read_table(state.adapters_file))
        follower = asyncio.create_task(follow_table(state, state.adapters_file))
        try:
            yield
        finally:
            follower.cancel()

    app = FastAPI(title="chatmodel serving runtime", version="0.1.0", lifespan=lifespan)
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

    async def guard(key: str, model: str) -> tuple[ServedModel, Caller]:
        """Refuse while draining, pick the model and count the request against the key's quota."""
        if state.draining:
            raise ApiError(
                503,
                "the server is draining and takes no new requests",
                "service_unavailable",
                code="draining",
                headers={"Retry-After": "1"},
            )
        served = state.pick_model(model)
        try:
            headers = await state.quotas.admit(key, served.name)
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
        body = {"status": "ready", "models": list(state.models)}
        if state.adapters_file:
            body.update(table_report(state))
        return JSONResponse(body)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models(_: str = Depends(authenticated)) -> dict[str, Any]:
        cards = [
            ModelCard(
                id=m.name,
                created=m.created,
                root=m.root,
                parent=m.parent,
                max_model_len=m.loaded.context_length,
            )
            for m in state.models.values()
        ]
        return ModelList(data=cards).body()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatCompletionRequest, key: str = Depends(authenticated)) -> Response:
        await ensure_served(state, req.model)
        served, caller = await guard(key, req.model)
        tools = plan_tools(req)
        prompt = chat_prompt(served, req, tools)
        params = sampling_params(served, req, req.requested_max_tokens(), len(prompt), "messages")
        if guide := tools.guide():  # tool_choice required / a named function: constrained to the calls
            if params.guide is not None or params.beams > 1:
                message = f"tool_choice {tools.mode} cannot be combined with response_format, "
                raise ApiError(400, message + "structured_outputs or beam search", param="tool_choice")
            params = dataclasses.replace(params, guide=guide)
        jobs = [(prompt, with_seed(params, i)) for i in range(req.n)]
        rid = new_id("chatcmpl")
        if state.log_prompts:
            log.info("prompt", extra={"request_id": rid, "messages": [m.model_dump() for m in req.messages]})
        return await answer(state, served, req, jobs, len(prompt), rid, CHAT, caller, tools)

    @app.post("/v1/completions", response_model=None)
    async def completions(req: CompletionRequest, key: str = Depends(authenticated)) -> Response:
        await ensure_served(state, req.model)
        served, caller = await guard(key, req.model)
        prompts = completion_prompts(served, req)
        jobs = []
        for prompt in prompts:
            params = sampling_params(served, req, req.requested_max_tokens(), len(prompt), "prompt")
            jobs += [(prompt, with_seed(params, i)) for i in range(req.n)]
        prompt_tokens = sum(len(p) for p in prompts)
        return await answer(state, served, req, jobs, prompt_tokens, new_id("cmpl"), TEXT, caller)

    if state.ui:
        from .playground import add_playground

        add_playground(app)
    add_versions(app, state)  # GET /v1/versions: the playground's Versions view reads it
    add_adapter_routes(app, state)  # POST /v1/load_lora_adapter, /v1/unload_lora_adapter
    _document_token_ids(app, state)
    return RequestLog(RequestGate(app, state))


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

    setattr(app, "openapi", openapi)  # noqa: B010  (FastAPI's documented override; mypy refuses method assignment)
