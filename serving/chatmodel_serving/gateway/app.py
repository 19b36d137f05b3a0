"""The gateway's aiohttp server. For each /v1 request: the API key (401), the key's global quota (429),
the model's version by weight, a ready pod of it by prompt prefix (held while the version starts from
zero; 503 + Retry-After when it cannot), then the request relayed to that pod and its answer streamed
back byte for byte (no bytes reach a streaming client before a pod answers). A pod that refuses the
connection (gone since the last EndpointSlice) is skipped for another of the same version."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..api.auth import check_api_key
from ..api.protocol import ApiError
from ..api.quota import Quotas
from . import kube
from .directory import Directory, Target
from .metrics import GatewayMetrics

log = logging.getLogger("chatmodel.gateway")
HOP_HEADERS = {
    "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
    "proxy-connection", "content-length", "host",
}  # fmt: skip
ATTEMPTS = 3  # pods tried for one request when connections are refused
USAGE_TAIL = 4096  # bytes of a stream's end kept to read its `usage` (the last chunk carries it)


@dataclass
class Gateway:
    directory: Directory
    kube: httpx.AsyncClient
    namespace: str
    quotas: Quotas
    keys: list[str] = field(default_factory=list)
    prefix_chars: int = 256
    cold_start_timeout: float = 300.0
    max_held: int = 256
    scheme: str = "http"
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    session: aiohttp.ClientSession | None = None
    held: int = 0
    draining: bool = False
    _starts: dict[str, asyncio.Task[bool]] = field(default_factory=dict)

    # -- choosing where a request goes
    async def pod_for(self, target: Target, prefix: str, exclude: frozenset[str] = frozenset()) -> str:
        pod = self.directory.choose_pod(target, prefix, exclude)
        if pod is not None:
            return pod
        if exclude:  # every ready pod refused the connection just now
            raise _unavailable(f"no pod of {target.deployment} accepts connections", 1)
        return await self._cold_start(target, prefix)

    async def _cold_start(self, target: Target, prefix: str) -> str:
        """Hold the request until the version has a ready pod, asking for one replica first."""
        if self.held >= self.max_held:
            raise _unavailable(f"{self.held} requests already wait for cold starts", 5)
        self.held += 1
        self.metrics.held.set(self.held)
        began = time.monotonic()
        labels = (target.model, target.version)
        try:
            start = self._starts.get(target.deployment)
            if start is None or start.done():
                start = self._starts[target.deployment] = asyncio.create_task(self._scale_up(target))
            while (pod := self.directory.choose_pod(target, prefix)) is None:
                if start.done() and not start.result():
                    self.metrics.cold_starts.labels(*labels, "refused").inc()
                    raise _unavailable(f"could not scale {target.deployment} up from zero", 10)
                left = began + self.cold_start_timeout - time.monotonic()
                if left <= 0:
                    self.metrics.cold_starts.labels(*labels, "timeout").inc()
                    raise _unavailable(
                        f"{target.deployment} has no ready pod after {self.cold_start_timeout:g}s", 10
                    )
                await self.directory.changed(min(left, 1.0))
            waited = time.monotonic() - began
            self.metrics.cold_starts.labels(*labels, "ready").inc()
            self.metrics.cold_start_seconds.labels(target.model).observe(waited)
            log.info("cold start done", extra={"deployment": target.deployment, "seconds": round(waited, 3)})
            return pod
        finally:
            self.held -= 1
            self.metrics.held.set(self.held)

    async def _scale_up(self, target: Target) -> bool:
        try:
            await kube.scale_up_from_zero(self.kube, self.namespace, target.deployment)
            log.info("asked for one replica", extra={"deployment": target.deployment})
            return True
        except httpx.HTTPError as exc:
            log.warning("scale from zero refused", extra={"deployment": target.deployment, "error": str(exc)})
            return False

    def prefix_of(self, doc: dict[str, Any]) -> str:
        """The text hashed for affinity: the start of the first user message (a chat's history grows after
        it; a system prompt is often shared by every chat) or of the completion prompt."""
        if self.prefix_chars <= 0:
            return ""
        text: Any = doc.get("prompt")
        for m in doc.get("messages") or []:
            if isinstance(m, dict) and m.get("role") == "user":
                text = m.get("content")
                break
        if isinstance(text, list):  # content parts, or a list of prompts
            text = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in text)
        return str(text or "")[: self.prefix_chars]

    # -- the HTTP side
    async def models(self, request: web.Request) -> web.Response:
        check_api_key(self.keys, request.headers.get("Authorization", ""))
        cards = [
            {"id": name, "object": "model", "created": 0, "owned_by": "chatmodel"}
            for name, targets in sorted(self.directory.models.items())
            if targets
        ]
        return web.json_response({"object": "list", "data": cards})

    async def forward(self, request: web.Request) -> web.StreamResponse:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        key = check_api_key(self.keys, request.headers.get("Authorization", ""))
        if self.draining:
            raise _unavailable("the gateway is draining", 1)
        body = await request.read()
        try:
            doc = json.loads(body)
        except ValueError:
            raise ApiError(400, "the request body is not JSON") from None
        model = doc.get("model") if isinstance(doc, dict) else None
        if not isinstance(model, str) or not model:
            raise ApiError(400, "model: required (a ChatModel's name; see GET /v1/models)", param="model")
        target = self.directory.choose_version(model)
        if target is None:
            if model in self.directory.models:
                raise _unavailable(f"model {model!r} has no version serving yet", 10)
            raise ApiError(
                404,
                f"model {model!r} does not exist; see GET /v1/models",
                param="model",
                code="model_not_found",
            )
        try:
            quota_headers = await self.quotas.admit(key, model)
        except ApiError as exc:
            self.metrics.rate_limited.labels(exc.type).inc()
            raise
        prefix = self.prefix_of(doc)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        headers["x-request-id"] = rid
        began = time.monotonic()
        upstream, pod = await self._send(request, target, prefix, headers, body)
        try:
            self.metrics.upstream_seconds.labels(model).observe(time.monotonic() - began)
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
            out.update(quota_headers)
            out["x-request-id"] = rid
            out["x-chatmodel-version"] = target.version  # which version answered (a canary's share shows)
            tail = b""
            if upstream.content_type == "text/event-stream":
                resp = web.StreamResponse(status=upstream.status, headers=out)
                await resp.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
                    tail = (tail + chunk)[-USAGE_TAIL:]
                await resp.write_eof()
            else:
                tail = await upstream.read()
                resp = web.Response(status=upstream.status, body=tail, headers=out)
            if upstream.status < 400:
                await self.quotas.spend(key, _tokens_used(tail))
            self.metrics.requests.labels(model, target.version, str(upstream.status)).inc()
            log.info(
                "request",
                extra={"request_id": rid, "model": model, "version": target.version, "pod": pod,
                       "status": upstream.status, "seconds": round(time.monotonic() - began, 4)},
            )  # fmt: skip
            return resp
        finally:
            self.directory.inflight[pod] -= 1
            upstream.release()

    async def _send(
        self, request: web.Request, target: Target, prefix: str, headers: dict[str, str], body: bytes
    ) -> tuple[aiohttp.ClientResponse, str]:
        assert self.session is not None
        refused: set[str] = set()
        while True:
            pod = await self.pod_for(target, prefix, frozenset(refused))
            url = f"{self.scheme}://{pod}{request.rel_url}"
            self.directory.inflight[pod] += 1  # before the answer: the next choice sees it at once
            try:
                resp = await self.session.request(request.method, url, headers=headers, data=body)
                return resp, pod
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                self.directory.inflight[pod] -= 1
                refused.add(pod)
                self.metrics.retries.inc()
                log.warning("pod refused the request", extra={"pod": pod, "error": str(exc)})
                if len(refused) >= ATTEMPTS:
                    raise _unavailable(f"{len(refused)} pods of {target.deployment} refused", 1) from None


def _unavailable(why: str, retry_after: int) -> ApiError:
    return ApiError(
        503, why, "service_unavailable", code="no_ready_pod", headers={"Retry-After": str(retry_after)}
    )


def _tokens_used(tail: bytes) -> int:
    """prompt + completion tokens from a whole answer's `usage`, or from the last SSE chunk that has one."""
    docs = [tail] if not tail.lstrip().startswith(b"data:") else [
        line[5:] for line in tail.split(b"\n") if line.startswith(b"data:") and b'"usage"' in line
    ]  # fmt: skip
    for raw in reversed(docs):
        try:
            usage = json.loads(raw).get("usage") or {}
            return int(usage.get("total_tokens") or 0)
        except (ValueError, AttributeError, TypeError):
            continue
    return 0


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response(exc.body(), status=exc.status, headers=exc.headers)


def create_app(gw: Gateway, scrape: httpx.AsyncClient) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=32 * 1024 * 1024)
    tasks: list[asyncio.Task[None]] = []

    async def startup(_: web.Application) -> None:
        d, ns = gw.directory, gw.namespace
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
        gw.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=timeout, auto_decompress=False
        )
        watches = [
            kube.list_and_watch(
                gw.kube, kube.collection("chatmodel.dev/v1alpha1", "chatmodels", ns),
                d.set_chatmodels, d.chatmodel_event,
            ),
            kube.list_and_watch(
                gw.kube, kube.collection("discovery.k8s.io/v1", "endpointslices", ns),
                d.set_slices, d.slice_event, selector="chatmodel.dev/version",
            ),
            d.scrape(scrape, gw.scheme),
        ]  # fmt: skip
        tasks.extend(asyncio.create_task(w) for w in watches)

    async def shutdown(_: web.Application) -> None:
        gw.draining = True

    async def cleanup(_: web.Application) -> None:
        for t in tasks:
            t.cancel()
        if gw.session is not None:
            await gw.session.close()
        await gw.kube.aclose()
        await scrape.aclose()

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(_: web.Request) -> web.Response:
        ok = not gw.draining and {"chatmodels", "endpointslices"} <= gw.directory.synced
        body = {"status": "ready" if ok else "starting", "models": sorted(gw.directory.models)}
        return web.json_response(body, status=200 if ok else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(gw.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def not_found(request: web.Request) -> web.Response:
        raise ApiError(404, f"no route {request.method} {request.path}", code="not_found")

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    app.on_cleanup.append(cleanup)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", gw.models)
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"):
        app.router.add_post(path, gw.forward)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app
