"""The ASGI middlewares in front of the app: RequestGate (API key first, then the body-size limit) and
RequestLog (a request id on every response, one structured log line per request)."""

from __future__ import annotations

import logging
import time
import uuid

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from .auth import CALLER_KEY, check_api_key
from .protocol import ApiError
from .state import ServerState

log = logging.getLogger("chatmodel.api")
ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/versions")


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
                    self.state.api_keys, headers.get(b"authorization", b"").decode("latin-1")
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
