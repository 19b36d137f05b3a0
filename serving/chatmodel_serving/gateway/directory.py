"""What the gateway knows of its namespace, kept by watches (never a hand-kept list):
- models: each ChatModel's versions that take traffic and their shares, from its status (the Serving
  version and, during a canary, the Canary one with its trafficPercent);
- pods: each version's ready endpoints, from the EndpointSlices of the per-version Services the operator
  makes for the gateway (labelled with the ChatModel and the version);
- loads: each pod's requests running + waiting, scraped from its /metrics every second (pulled, not
  pushed: the pods already publish them for Prometheus and KEDA, and a dead pod simply stops answering).
Routing: a version by weight, then a pod of it by prompt prefix (ring.py: CHWBL with sticky sessions),
load = this gateway's own requests in flight there (counted from the moment it picks the pod) + the other
replicas' share of the pod's own count (what it reported beyond ours at the last scrape)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .kube import Obj
from .ring import Ring, Sessions, choose, least_loaded

log = logging.getLogger("chatmodel.gateway.directory")
NAME_LABEL = "chatmodel.dev/name"
VERSION_LABEL = "chatmodel.dev/version"
LOAD_METRICS = ("chatmodel_num_requests_running", "chatmodel_num_requests_waiting")
SCRAPE_SECONDS = 1.0


@dataclass(frozen=True)
class Target:
    model: str  # the ChatModel (the name clients send)
    version: str
    weight: int  # percent of the model's traffic

    @property
    def deployment(self) -> str:
        return f"{self.model}-{self.version}"


def targets_of(chatmodel: Obj) -> list[Target]:
    """The versions that take traffic and their shares, from a ChatModel's status."""
    name = chatmodel["metadata"]["name"]
    versions = (chatmodel.get("status") or {}).get("versions") or []
    canary = next((v for v in versions if v.get("state") == "Canary"), None)
    share = int(canary.get("trafficPercent") or 0) if canary else 0
    out = [Target(name, v["name"], 100 - share) for v in versions if v.get("state") == "Serving"][:1]
    if canary and share:
        out.append(Target(name, canary["name"], share))
    return out


def ready_addresses(endpoint_slice: Obj) -> list[str]:
    """host:port of each ready endpoint (the API says an absent `ready` means ready)."""
    ports = endpoint_slice.get("ports") or []
    port = next((p.get("port") for p in ports if p.get("name") == "http"), None)
    port = port or (ports[0].get("port") if ports else None)
    if port is None:
        return []
    out = []
    for ep in endpoint_slice.get("endpoints") or []:
        if (ep.get("conditions") or {}).get("ready") is False:
            continue
        for ip in (ep.get("addresses") or [])[:1]:
            out.append(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")
    return out


@dataclass
class Directory:
    models: dict[str, list[Target]] = field(default_factory=dict)
    slices: dict[str, tuple[tuple[str, str], list[str]]] = field(default_factory=dict)  # name -> (key, pods)
    others: dict[str, float] = field(default_factory=dict)  # pod -> its requests not from this gateway
    inflight: Counter[str] = field(default_factory=Counter)  # pod -> this gateway's open requests
    synced: set[str] = field(default_factory=set)  # "chatmodels", "endpointslices" once listed
    _rings: dict[frozenset[str], Ring] = field(default_factory=dict)
    sessions: Sessions = field(default_factory=Sessions)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    # -- kept by the watches
    def set_chatmodels(self, items: list[Obj]) -> None:
        self.models = {cm["metadata"]["name"]: targets_of(cm) for cm in items}
        self.synced.add("chatmodels")
        self._notify()

    def chatmodel_event(self, kind: str, cm: Obj) -> None:
        name = cm["metadata"]["name"]
        if kind == "DELETED":
            self.models.pop(name, None)
        else:
            self.models[name] = targets_of(cm)
        self._notify()

    def set_slices(self, items: list[Obj]) -> None:
        self.slices = {}
        for s in items:
            self._put_slice(s)
        self.synced.add("endpointslices")
        self._notify()

    def slice_event(self, kind: str, s: Obj) -> None:
        if kind == "DELETED":
            self.slices.pop(s["metadata"]["name"], None)
        else:
            self._put_slice(s)
        self._notify()

    def _put_slice(self, s: Obj) -> None:
        labels = s["metadata"].get("labels") or {}
        if NAME_LABEL in labels and VERSION_LABEL in labels:
            key = (labels[NAME_LABEL], labels[VERSION_LABEL])
            self.slices[s["metadata"]["name"]] = (key, ready_addresses(s))

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self, timeout: float) -> None:
        """Wait for the next change of models or pods (or `timeout` seconds)."""
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    # -- routing
    def pods(self, target: Target) -> list[str]:
        key = (target.model, target.version)
        return sorted({p for k, pods in self.slices.values() if k == key for p in pods})

    def every_pod(self) -> set[str]:
        return {p for _, pods in self.slices.values() for p in pods}

    def load(self, pod: str) -> float:
        return self.inflight[pod] + self.others.get(pod, 0.0)

    def choose_version(self, model: str, draw: Callable[[], float] = random.random) -> Target | None:
        targets = self.models.get(model) or []
        if not targets:
            return None
        x, acc = draw() * sum(t.weight for t in targets), 0
        for t in targets:
            acc += t.weight
            if x < acc:
                return t
        return targets[0]

    def choose_pod(self, target: Target, prefix: str, exclude: frozenset[str] = frozenset()) -> str | None:
        pods = [p for p in self.pods(target) if p not in exclude]
        loads = {p: self.load(p) for p in pods}
        if not prefix:
            return least_loaded(pods, loads)
        ring = self._rings.get(members := frozenset(pods))
        if ring is None:
            if len(self._rings) > 64:
                self._rings.clear()
            ring = self._rings[members] = Ring(members)
        return choose(ring, self.sessions, f"{target.model}\0{prefix}", loads)

    # -- loads
    async def scrape(self, client: httpx.AsyncClient, scheme: str) -> None:
        """Forever: every pod's running + waiting requests, once a second."""
        while True:
            pods = sorted(self.every_pod())
            found = await asyncio.gather(*(_load_of(client, f"{scheme}://{p}/metrics") for p in pods))
            self.others = {
                p: max(0.0, v - self.inflight[p]) for p, v in zip(pods, found, strict=True) if v is not None
            }
            await asyncio.sleep(SCRAPE_SECONDS)


async def _load_of(client: httpx.AsyncClient, url: str) -> float | None:
    try:
        r = await client.get(url, timeout=2.0)
        r.raise_for_status()
    except httpx.HTTPError:
        return None
    total = 0.0
    for family in text_string_to_metric_families(r.text):
        if family.name in LOAD_METRICS:
            total += sum(s.value for s in family.samples)
    return total
