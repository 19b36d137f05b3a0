"""Consistent hashing with bounded loads (Mirrokni et al. 2016; KubeAI's CHWBL), applied to chats.

A prompt prefix (a chat: its first user message) is a session. A new session goes to the first pod
clockwise from its hash on a ring of virtual nodes that stays within two bounds: requests in flight and
sessions it already holds, each at most `factor` times the mean (ceil(factor x (total + 1) / n)). An
existing session stays on its pod, where its KV cache is, while that pod's requests stay within their
bound; past it, the session is placed again. So chats keep their cache and no pod ends up with much more
than its share of chats, whatever the luck of a few hashes. Hashes are stable across processes (blake2b):
every gateway replica starts each session on the same pod; each replica remembers its own sessions."""

from __future__ import annotations

import bisect
import hashlib
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

VIRTUAL_NODES = 100  # per pod: enough for an even split of the ring among a handful of pods
LOAD_FACTOR = 1.2  # a pod takes at most this times the mean (KubeAI: 1.25); lower spreads more
SESSION_SECONDS = 600.0  # a session not seen for this long is forgotten (its pod's cache has moved on)
SESSIONS_KEPT = 100_000


def bound(values: Sequence[float], factor: float = LOAD_FACTOR) -> int:
    """The most one member may hold with one more placed: ceil(factor x (total + 1) / n)."""
    return math.ceil(factor * (sum(values) + 1) / max(1, len(values)))


def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class Ring:
    def __init__(self, members: Iterable[str], virtual_nodes: int = VIRTUAL_NODES) -> None:
        self.members = sorted(set(members))
        points = sorted((stable_hash(f"{m}#{i}"), m) for m in self.members for i in range(virtual_nodes))
        self._hashes = [h for h, _ in points]
        self._owners = [m for _, m in points]

    def walk(self, key: str) -> Iterator[str]:
        """Every member once, clockwise from `key`'s hash."""
        start, seen = bisect.bisect(self._hashes, stable_hash(key)), set()
        for i in range(len(self._owners)):
            owner = self._owners[(start + i) % len(self._owners)]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == len(self.members):
                    return

    def pick(self, key: str, fits: Callable[[str], bool]) -> str | None:
        return next((m for m in self.walk(key) if fits(m)), None)


def least_loaded(members: Iterable[str], loads: Mapping[str, float]) -> str | None:
    return min(members, key=lambda m: (loads.get(m, 0.0), m), default=None)


class Sessions:
    """Where each session (prefix key) was last sent, and how many live sessions each pod holds."""

    def __init__(self, ttl: float = SESSION_SECONDS, kept: int = SESSIONS_KEPT) -> None:
        self.ttl, self.kept = ttl, kept
        self._where: OrderedDict[str, tuple[str, float]] = OrderedDict()  # oldest first
        self.count: Counter[str] = Counter()

    def pod_of(self, key: str) -> str | None:
        self._expire()
        found = self._where.get(key)
        return found[0] if found else None

    def place(self, key: str, pod: str) -> None:
        old = self._where.pop(key, None)
        if old is not None:
            self.count[old[0]] -= 1
        self._where[key] = (pod, time.monotonic())
        self.count[pod] += 1
        if len(self._where) > self.kept:
            self._drop_oldest()

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.ttl
        while self._where and next(iter(self._where.values()))[1] < cutoff:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, (pod, _) = self._where.popitem(last=False)
        self.count[pod] -= 1


def choose(
    ring: Ring, sessions: Sessions, key: str, loads: Mapping[str, float], factor: float = LOAD_FACTOR
) -> str | None:
    """The pod for one request of session `key` (see the module's text); least loaded when every pod is
    past a bound."""
    pods = ring.members
    most_load = bound([loads.get(p, 0.0) for p in pods], factor)
    home = sessions.pod_of(key)
    if home in pods and loads.get(home, 0.0) + 1 <= most_load:
        sessions.place(key, home)  # seen again: keeps it fresh
        return home
    held = [sessions.count[p] - (p == home) for p in pods]
    most_sessions = bound(held, factor)
    counts = dict(zip(pods, held, strict=True))

    def fits(p: str) -> bool:
        return loads.get(p, 0.0) + 1 <= most_load and counts[p] + 1 <= most_sessions

    pod = ring.pick(key, fits) or least_loaded(pods, loads)
    if pod is not None:
        sessions.place(key, pod)
    return pod
