"""The routing rule on its own (gateway/ring.py): sessions stay where their cache is, no pod takes much
more than its share of sessions or of requests in flight, and losing a pod moves only its sessions."""

from __future__ import annotations

import collections

from chatmodel_serving.gateway.ring import Ring, Sessions, bound, choose

PODS = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"]


def test_sessions_spread_within_the_bound_and_stay_on_their_pod() -> None:
    ring, sessions = Ring(PODS), Sessions()
    first = {f"chat {i}": choose(ring, sessions, f"chat {i}", {}) for i in range(60)}
    per_pod = collections.Counter(first.values())
    assert max(per_pod.values()) <= bound([20, 20, 19])  # at most ceil(1.2 x 60 / 3) = 24
    again = {k: choose(ring, sessions, k, {}) for k in first}
    assert again == first


def test_a_busy_home_pod_sends_the_request_on_along_the_ring() -> None:
    ring, sessions = Ring(PODS), Sessions()
    home = choose(ring, sessions, "chat", {})
    assert home is not None
    busy = {home: 10.0}
    moved = choose(ring, sessions, "chat", busy)
    assert moved is not None and moved != home
    assert choose(ring, sessions, "chat", {}) == moved  # its cache is there now


def test_losing_a_pod_moves_only_the_sessions_it_held() -> None:
    sessions = Sessions()
    before = {f"c{i}": choose(Ring(PODS), sessions, f"c{i}", {}) for i in range(30)}
    smaller = Ring(PODS[:2])
    after = {k: choose(smaller, sessions, k, {}) for k in before}
    for k, pod in before.items():
        if pod in PODS[:2]:
            assert after[k] == pod
        else:
            assert after[k] in PODS[:2]


def test_every_replica_starts_a_session_on_the_same_pod() -> None:
    a, b = Ring(PODS), Ring(reversed(PODS))
    for i in range(50):
        assert choose(a, Sessions(), f"s{i}", {}) == choose(b, Sessions(), f"s{i}", {})
