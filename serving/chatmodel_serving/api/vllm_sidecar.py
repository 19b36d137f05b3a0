"""`chatmodel vllm-sidecar`: the container beside vLLM in a serving.lora.shared pod (runtime vllm).

vLLM loads LoRA adapters at run time (POST /v1/load_lora_adapter, with VLLM_ALLOW_RUNTIME_LORA_UPDATING)
but knows no table to follow and no alias split by weight. The sidecar gives a vLLM pod what `chatmodel
serve --adapters-file` gives ours, so the operator treats both alike:
- every second it compares the table (the ConfigMap file) with the adapters vLLM lists in /v1/models and
  loads or unloads the difference; a restarted vLLM (empty again) gets every adapter back;
- it answers on the Service's port and passes every request on to vLLM, choosing one target of an alias
  (the ChatModel's name) by weight, so a canary's share moves by model name without a restart;
- its /ready is our server's: 200 only once vLLM answers and holds every adapter of the table it accepts,
  listing `models`, `aliases` and `adapter_errors` (what the operator counts for adapterLoaded k/n).
The API key stays vLLM's to check: requests pass with their Authorization header; the sidecar's own calls
use VLLM_API_KEY, the same variable vLLM reads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from .adapter_table import POLL_SECONDS, AdapterTable, parse_table
from .aliases import no_target, pick_target
from .protocol import ApiError

log = logging.getLogger("chatmodel.vllm_sidecar")
# Headers that describe one hop, not the message (RFC 9110 §7.6.1), and those httpx/uvicorn set themselves.
HOP_HEADERS = {
    "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
    "proxy-connection", "content-length", "host",
}  # fmt: skip


@dataclass
class Sidecar:
    table_path: str
    vllm: httpx.AsyncClient  # base_url = the vLLM server
    table: AdapterTable | None = None
    text: str | None = None
    base: list[str] = field(default_factory=list)  # vLLM's base model names
    loaded: dict[str, str] = field(default_factory=dict)  # adapter name -> folder, as vLLM lists them
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (folder, vLLM's reason)
    synced: bool = False  # vLLM answered the last look and holds what the table asks of it

    async def read_table(self) -> None:
        """The table when its file changes; a refused adapter is tried again on the next change. An
        unreadable or invalid file keeps the last table."""
        try:
            text = await asyncio.to_thread(Path(self.table_path).read_text)
            if text != self.text:
                self.table, self.text, self.refused = parse_table(text), text, {}
        except (OSError, ValueError) as exc:
            log.warning("--adapters-file %s: %s; the last table stays", self.table_path, exc)

    async def sync(self) -> None:
        """One look at vLLM and the table: unload what the table dropped or moved, load what it adds."""
        await self.read_table()
        try:
            self.base, self.loaded = await self._listed()
            table = self.table
            if table is None:
                self.synced = False
                return
            for name, folder in sorted(self.loaded.items()):
                if table.adapters.get(name) != folder:
                    await self._call("unload", {"lora_name": name})
                    del self.loaded[name]
                    log.info("LoRA adapter unloaded", extra={"adapter": name})
            for name, folder in table.adapters.items():
                if name in self.loaded or self.refused.get(name, ("",))[0] == folder:
                    continue
                reason = await self._call("load", {"lora_name": name, "lora_path": folder})
                if reason is None:
                    self.loaded[name] = folder
                    log.info("LoRA adapter loaded", extra={"adapter": name, "folder": folder})
                else:
                    self.refused[name] = (folder, reason)
                    log.warning("LoRA adapter refused", extra={"adapter": name, "reason": reason})
            self.synced = True
        except httpx.HTTPError as exc:
            if self.synced:
                log.warning("vLLM does not answer: %s", exc)
            self.synced = False

    async def _listed(self) -> tuple[list[str], dict[str, str]]:
        r = await self.vllm.get("/v1/models")
        r.raise_for_status()
        cards = r.json().get("data") or []
        base = [str(c["id"]) for c in cards if not c.get("parent")]
        return base, {str(c["id"]): str(c.get("root")) for c in cards if c.get("parent")}

    async def _call(self, verb: str, body: dict[str, str]) -> str | None:
        """POST /v1/{verb}_lora_adapter; None when done, else vLLM's reason (a 4xx is an answer, not a
        fault: the adapter is refused; a 5xx or no answer raises)."""
        r = await self.vllm.post(f"/v1/{verb}_lora_adapter", json=body)
        if r.status_code < 400:
            return None
        if r.status_code >= 500:
            r.raise_for_status()
        return error_message(r)

    def report(self) -> dict[str, Any]:
        table = self.table or AdapterTable()
        return {
            "status": "ready" if self.synced else "starting",
            "models": [*self.base, *self.loaded],
            "aliases": table.aliases,
            "adapter_errors": {n: reason for n, (_, reason) in self.refused.items()},
        }

    def target(self, model: str) -> str:
        """The served name a request for `model` goes to (an alias's target by weight)."""
        table = self.table or AdapterTable()
        if model not in table.aliases:
            return model
        chosen = pick_target(table.aliases[model], self.loaded)
        if chosen is None:
            raise no_target(model)
        return chosen

    async def follow(self) -> None:
        while True:
            await self.sync()
            await asyncio.sleep(POLL_SECONDS)


def error_message(r: httpx.Response) -> str:
    """vLLM's error text: {"error": {"message"}} (OpenAI's shape) or {"message"} (older builds)."""
    try:
        doc = r.json()
    except ValueError:
        return r.text.strip() or f"HTTP {r.status_code}"
    inner = doc.get("error") if isinstance(doc.get("error"), dict) else doc
    return str(inner.get("message") or doc)


def create_app(table_path: str, vllm_url: str) -> FastAPI:
    key = os.environ.get("VLLM_API_KEY")
    auth = {"Authorization": f"Bearer {key}"} if key else {}
    # No read timeout: an answer streams for as long as vLLM generates it.
    timeout = httpx.Timeout(None, connect=5.0)
    vllm = httpx.AsyncClient(base_url=vllm_url, headers=auth, timeout=timeout)
    forward = httpx.AsyncClient(base_url=vllm_url, timeout=timeout)  # the caller's own headers only
    sidecar = Sidecar(table_path, vllm)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(sidecar.follow())
        try:
            yield
        finally:
            task.cancel()
            await vllm.aclose()
            await forward.aclose()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sidecar = sidecar

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}  # the sidecar lives; vLLM's container has probes of its own

    @app.get("/ready")
    async def ready() -> JSONResponse:
        return JSONResponse(sidecar.report(), status_code=200 if sidecar.synced else 503)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def proxy(path: str, request: Request) -> Response:
        body = await request.body()
        body = _aliased(body, sidecar) if request.method == "POST" else body
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        url = httpx.URL(path="/" + path, query=request.url.query.encode())
        upstream = forward.build_request(request.method, url, headers=headers, content=body)
        try:
            r = await forward.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            retry = {"Retry-After": "5"}
            raise ApiError(503, f"vLLM does not answer: {exc}", "server_error", headers=retry) from None
        out = {k: v for k, v in r.headers.items() if k.lower() not in HOP_HEADERS}
        return StreamingResponse(_relay(r), status_code=r.status_code, headers=out)

    return app


def _aliased(body: bytes, sidecar: Sidecar) -> bytes:
    """The request with an alias in `model` replaced by its chosen target (other bodies pass untouched)."""
    if not body.startswith(b"{"):
        return body
    try:
        doc = json.loads(body)
    except ValueError:
        return body  # vLLM answers it with its own 400
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, str):
        return body
    target = sidecar.target(model)
    return body if target == model else json.dumps({**doc, "model": target}).encode()


async def _relay(r: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in r.aiter_raw():
            yield chunk
    finally:
        await r.aclose()
