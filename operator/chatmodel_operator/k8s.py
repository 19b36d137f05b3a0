"""Kubernetes writes with a diff: create what is missing, patch only the fields that differ, delete what is
no longer wanted. 404 and 409 are outcomes, not errors. Requests go through kopf's authenticated client,
so the operator holds one set of credentials, one connection pool and kopf's retry policy."""

from __future__ import annotations

import hashlib
import logging
from typing import Any, cast

import kopf

# kopf's own API client (authentication, retries, session). Private, hence pinned in requirements.
from kopf._cogs.clients import api as kopf_api
from kopf._cogs.clients import errors as kopf_errors
from kopf._cogs.clients import events as kopf_events
from kopf._cogs.structs import bodies, references

from chatmodel_operator import rbac
from chatmodel_operator.refs import Ref

Obj = dict[str, Any]
log = logging.getLogger("chatmodel.k8s")

# Kind → resource, from the one declared list of API permissions (adding a kind is a row there).
PLURALS = rbac.plurals()
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}
EVENTS = references.Resource("", "v1", "events", namespaced=True)


def url(api_version: str, kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [root, "namespaces", namespace, PLURALS[kind], name, sub]
    return "/".join(p for p in parts if p)


def diff(desired: Any, live: Any) -> Any:
    """A JSON merge patch taking `live` to `desired`, looking only at the fields `desired` sets (the server
    adds defaults we must not fight). Lists are compared as a whole (merge patches replace them) but their
    items only on the fields we set. Returns None when nothing differs."""
    if isinstance(desired, dict) and isinstance(live, dict):
        patch = {}
        for key, want in desired.items():
            change = diff(want, live.get(key))
            if change is not None:
                patch[key] = change
        return patch or None
    if isinstance(desired, list) and isinstance(live, list) and len(desired) == len(live):
        return None if all(diff(d, x) is None for d, x in zip(desired, live, strict=True)) else desired
    return None if desired == live else desired


def _drop_selector_keys(desired: Obj, live: Obj, patch: Any) -> Any:
    """A Service selector is the whole truth: a canary widens it by dropping the version key, which a merge
    patch only does with an explicit null."""
    if desired["kind"] != "Service":
        return patch
    want, have = desired["spec"]["selector"], (live.get("spec") or {}).get("selector") or {}
    extra = {k: None for k in have if k not in want}
    if not extra:
        return patch
    patch = patch or {}
    patch.setdefault("spec", {}).setdefault("selector", {}).update(extra)
    return patch


def _key(obj: Obj) -> tuple[str, str, str]:
    m = obj["metadata"]
    return obj["kind"], m["namespace"], m["name"]


def _digest(obj: Obj) -> bytes:
    # repr, not sorted JSON: the builders put keys in a fixed order, and this runs on every apply.
    return hashlib.sha1(repr(obj).encode()).digest()


class Client:
    """Thin async verbs on kopf's client. Every call returns the parsed body or None for 404."""

    def __init__(self, settings: kopf.OperatorSettings, logger: logging.Logger | None = None) -> None:
        self.settings = settings
        self.logger = logger or log
        self.requests = 0  # for the benchmark and tests

    async def _call(
        self, method: str, path: str, payload: Any = None, headers: dict[str, str] | None = None
    ) -> Any:
        self.requests += 1
        fn = getattr(kopf_api, method)
        try:
            return await fn(
                path, payload=payload, headers=headers, settings=self.settings, logger=self.logger
            )
        except kopf_errors.APINotFoundError:
            return None

    async def create(self, obj: Obj) -> Obj | None:
        kind, ns, _ = _key(obj)
        return cast(Obj | None, await self._call("post", url(obj["apiVersion"], kind, ns), obj))

    async def get(self, api_version: str, kind: str, ns: str, name: str) -> Obj | None:
        return cast(Obj | None, await self._call("get", url(api_version, kind, ns, name)))

    async def patch(
        self, api_version: str, kind: str, ns: str, name: str, body: Obj, sub: str | None = None
    ) -> Any:
        return await self._call("patch", url(api_version, kind, ns, name, sub), body, MERGE_PATCH)

    async def delete(self, api_version: str, kind: str, ns: str, name: str) -> bool:
        # Background propagation deletes a Job's pods too.
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        return await self._call("delete", url(api_version, kind, ns, name), body) is not None

    async def event(self, about: Obj, type: str, reason: str, message: str) -> None:
        """Post an Event about `about` as kopf.event() would (its shape, its cut of long messages, a
        warning in the log instead of an error when refused), without kopf's per-object posting tasks."""
        self.requests += 1
        ref = bodies.build_object_reference(kopf.Body(cast(kopf.RawBody, about)))
        await kopf_events.post_event(
            ref=ref,
            type=type,
            reason=reason,
            message=message,
            resource=EVENTS,
            settings=self.settings,
            logger=self.logger,
        )

    async def pod_log(self, ns: str, pod: str, container: str, tail_lines: int = 20) -> str | None:
        """The last lines of a container's log; None where the node's kubelet does not answer (no retry:
        a caller polling progress asks again soon)."""
        self.requests += 1
        path = f"/api/v1/namespaces/{ns}/pods/{pod}/log?container={container}&tailLines={tail_lines}"
        try:
            response = await kopf_api.request(
                "get", path, settings=self.settings, logger=self.logger, backoffs=[]
            )
            return await response.text()
        except (kopf_errors.APIError, OSError, TimeoutError) as e:
            self.logger.debug("log of pod %s/%s unavailable: %s", ns, pod, e)
            return None

    async def list(self, api_version: str, kind: str, ns: str, selector: dict[str, str]) -> list[Obj]:
        query = ",".join(f"{k}={v}" for k, v in selector.items())
        found = await self._call("get", url(api_version, kind, ns) + f"?labelSelector={query}")
        items = (found or {}).get("items", [])
        # Filter here too: not every API (or emulator) honours labelSelector.
        return [i for i in items if selector.items() <= (i.get("metadata", {}).get("labels") or {}).items()]


class Applier:
    """Diff-then-apply with a memory of what this process already applied or deleted, so that a reconcile
    that changes nothing sends no request at all. After a restart the memory is empty and every object is
    checked against the cluster once."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._applied: dict[tuple[str, str, str], bytes] = {}
        self._absent: set[tuple[str, str, str]] = set()

    async def apply(self, obj: Obj, create_only: bool = False) -> str:
        """'created', 'patched' or 'unchanged'."""
        key, digest = _key(obj), _digest(obj)
        if self._applied.get(key) == digest:
            return "unchanged"
        outcome = "unchanged"
        if key not in self._applied or create_only:
            try:
                await self.client.create(obj)
                outcome = "created"
            except kopf_errors.APIConflictError:
                outcome = "exists"
        if outcome != "created" and not create_only:
            live = await self.client.get(obj["apiVersion"], *key)
            if live is None:
                await self.client.create(obj)
                outcome = "created"
            else:
                patch = _drop_selector_keys(obj, live, diff(obj, live))
                if patch is not None:
                    await self.client.patch(obj["apiVersion"], *key, patch)
                    outcome = "patched"
                else:
                    outcome = "unchanged"
        self._applied[key] = digest
        self._absent.discard(key)
        return outcome if outcome != "exists" else "unchanged"

    async def scale(self, ns: str, name: str, replicas: int) -> None:
        """Set a Deployment's replicas and forget it, so that a later apply checks it against the cluster."""
        await self.client.patch("apps/v1", "Deployment", ns, name, {"spec": {"replicas": replicas}})
        self._applied.pop(("Deployment", ns, name), None)

    async def remove(self, ns: str, ref: Ref) -> bool:
        """Delete unless known to be gone; True when something was deleted."""
        key = (ref.kind, ns, ref.name)
        if key in self._absent:
            return False
        deleted = await self.client.delete(ref.api_version, ref.kind, ns, ref.name)
        self._applied.pop(key, None)
        self._absent.add(key)
        return deleted

    def forget(self, namespace: str, name_prefix: str) -> None:
        """Drop the memory of a deleted ChatModel's children."""
        for store in (self._applied, self._absent):
            for key in [k for k in store if k[1] == namespace and k[2].startswith(name_prefix)]:
                if isinstance(store, dict):
                    store.pop(key)
                else:
                    store.discard(key)
