"""An API front that authorizes each request against RBAC grants the way kube-apiserver's RBAC authorizer
does (a ClusterRole bound cluster-wide, Roles in their namespaces), answers 403 to the rest, and forwards
the allowed ones to the emulator, streaming (watches included). Running the operator through it shows the
rendered rules are enough for it to work, and what it does when something is refused."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

Triple = tuple[str, str, str]
RESOURCE = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)(?:/namespaces/(?P<ns>[^/]+))?"
    r"/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$"
)
VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


def authorization_request(method: str, path: str, query: dict[str, str]) -> tuple[str | None, Triple] | None:
    """(namespace, (group, resource[/subresource], verb)) of a resource request; None for non-resource
    URLs (discovery), which every authenticated user may read."""
    m = RESOURCE.match(path)
    if m is None:
        return None
    resource = m["plural"] + (f"/{m['sub']}" if m["sub"] else "")
    if method == "GET":
        verb = "get" if m["name"] else ("watch" if query.get("watch") in ("true", "1") else "list")
    else:
        verb = VERBS[method]
    return m["ns"], (m["group"] or "", resource, verb)


@dataclass
class RbacProxy:
    upstream: str
    cluster: set[
        Triple
    ]  # from ClusterRoles bound with a ClusterRoleBinding: every namespace, and cluster-wide
    namespaced: dict[str, set[Triple]]  # from Roles, by namespace
    seen: list[tuple[str | None, Triple, bool]] = field(default_factory=list)

    def allowed(self, namespace: str | None, triple: Triple) -> bool:
        return triple in self.cluster or (
            namespace is not None and triple in self.namespaced.get(namespace, ())
        )

    @property
    def denied(self) -> set[tuple[str | None, Triple]]:
        return {(ns, t) for ns, t, ok in self.seen if not ok}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        asked = authorization_request(request.method, request.path, dict(request.query))
        if asked is not None:
            ok = self.allowed(*asked)
            self.seen.append((*asked, ok))
            if not ok:
                status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden"}
                return web.json_response(
                    {**status, "code": 403, "message": f"forbidden: {asked}"}, status=403
                )
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")}
        async with self.session.request(
            request.method, self.upstream + str(request.rel_url), headers=headers, data=await request.read()
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            response.content_type = upstream.content_type
            await response.prepare(request)
            with contextlib.suppress(ConnectionResetError, aiohttp.ClientError):
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            return response

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """Run on a free local port; yields its URL."""
        self.session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, shutdown_timeout=1)  # open watches end with the test
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)  # what TCPSite.start() made
        port = server.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            await self.session.close()
            await runner.cleanup()
