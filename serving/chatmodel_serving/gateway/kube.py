"""The few Kubernetes API calls the gateway makes, over httpx (async; the kubernetes client is not):
list + watch of a collection, and the Deployment scale subresource. Credentials: the pod's service account
(its bound token is read again for every call, so a rotated token is picked up), or an explicit server URL
and token file for a gateway run outside the cluster."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("chatmodel.gateway.kube")
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
WATCH_SECONDS = 240  # the server ends a watch after this; the loop lists again (a full resync)

Obj = dict[str, Any]


class _TokenFile(httpx.Auth):
    def __init__(self, path: str) -> None:
        self.path = path

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = "Bearer " + Path(self.path).read_text().strip()
        yield request


def connect(server: str | None, token_file: str | None, ca_file: str | None) -> httpx.AsyncClient:
    """A client for the API server: `server` (with an optional token file and CA), else in-cluster."""
    if server is None:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if not host:
            raise ValueError("--kube-api: required outside a cluster (no KUBERNETES_SERVICE_HOST)")
        server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        token_file = token_file or str(SERVICE_ACCOUNT / "token")
        ca_file = ca_file or str(SERVICE_ACCOUNT / "ca.crt")
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
    auth = _TokenFile(token_file) if token_file else None
    return httpx.AsyncClient(
        base_url=server, auth=auth, verify=verify, timeout=httpx.Timeout(30.0, read=None)
    )


def collection(api_version: str, plural: str, namespace: str) -> str:
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{root}/namespaces/{namespace}/{plural}"


async def list_and_watch(
    api: httpx.AsyncClient,
    path: str,
    on_list: Callable[[list[Obj]], None],
    on_event: Callable[[str, Obj], None],
    selector: str | None = None,
) -> None:
    """Forever: list (on_list gets every item, replacing what was known), then watch from that list's
    resourceVersion (on_event gets ADDED / MODIFIED / DELETED); any error or a watch's end lists again."""
    params = {"labelSelector": selector} if selector else {}
    while True:
        try:
            r = await api.get(path, params=params)
            r.raise_for_status()
            doc = r.json()
            on_list(doc.get("items") or [])
            watch = {
                **params,
                "watch": "true",
                "timeoutSeconds": str(WATCH_SECONDS),
                "allowWatchBookmarks": "true",
            }
            version = (doc.get("metadata") or {}).get("resourceVersion")
            if version:
                watch["resourceVersion"] = version
            async with api.stream("GET", path, params=watch) as s:
                s.raise_for_status()
                async for line in s.aiter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind = event.get("type")
                    if kind == "ERROR":  # 410 Gone: our resourceVersion is too old; list again
                        break
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        on_event(kind, event["object"])
        except asyncio.CancelledError:
            raise
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            log.warning("watch of %s: %s; listing again in 1 s", path, exc)
            await asyncio.sleep(1)


async def scale_up_from_zero(api: httpx.AsyncClient, namespace: str, deployment: str) -> None:
    """Ask for one replica through the Deployment's scale subresource, only while it has none (an
    autoscaler that already scaled it keeps its own count); an API refusal raises."""
    path = f"{collection('apps/v1', 'deployments', namespace)}/{deployment}/scale"
    r = await api.get(path)
    r.raise_for_status()
    if int((r.json().get("spec") or {}).get("replicas") or 0) > 0:
        return
    headers = {"Content-Type": "application/merge-patch+json"}
    r = await api.patch(path, content=json.dumps({"spec": {"replicas": 1}}), headers=headers)
    r.raise_for_status()
