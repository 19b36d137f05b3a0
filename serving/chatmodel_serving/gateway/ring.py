"""Consistent hashing with bounded loads (Mirrokni et al. 2016; KubeAI's CHWBL): a prompt prefix goes to
the pod after its hash on a ring of virtual nodes, unless that pod already holds more than `factor` times
the mean load, in which case the walk goes on to the next pod. Chats that share a prefix land where its KV
cache is; no pod takes much more than its share. Hashes are stable across processes (blake2b), so every
gateway replica sends a prefix to the same pod."""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable, Mapping

VIRTUAL_NODES = 100  # per pod: enough for an even split of the ring among a handful of pods


def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class Ring:
    def __init__(self, members: Iterable[str], virtual_nodes: int = VIRTUAL_NODES) -> None:
        self.members = sorted(set(members))
        points = sorted((stable_hash(f"{m}#{i}"), m) for m in self.members for i in range(virtual_nodes))
        self._hashes = [h for h, _ in points]
        self._owners = [m for _, m in points]

    def pick(self, key: str, loads: Mapping[str, float], factor: float = 1.25) -> str | None:
        """The first member clockwise from `key`'s hash whose load stays within the bound
        ceil(factor x (total + 1) / n); None for an empty ring."""
        if not self.members:
            return None
        bound = math.ceil(factor * (sum(loads.get(m, 0.0) for m in self.members) + 1) / len(self.members))
        start = bisect.bisect(self._hashes, stable_hash(key))
        seen: set[str] = set()
        for i in range(len(self._owners)):
            owner = self._owners[(start + i) % len(self._owners)]
            if owner in seen:
                continue
            if loads.get(owner, 0.0) + 1 <= bound:
                return owner
            seen.add(owner)
            if len(seen) == len(self.members):
                break
        return least_loaded(self.members, loads)


def least_loaded(members: Iterable[str], loads: Mapping[str, float]) -> str | None:
    return min(members, key=lambda m: (loads.get(m, 0.0), m), default=None)
