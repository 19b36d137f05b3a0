"""The operator's work queue: a key waits once, never runs twice at once, runs again when added while
running, and a failed reconcile is retried."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

from chatmodel_operator.workqueue import Key, WorkQueue

A, B = ("ns", "a"), ("ns", "b")


async def settle(queue: WorkQueue) -> None:
    for _ in range(200):
        await asyncio.sleep(0.01)
        if queue.idle():
            return
    raise AssertionError("the queue did not drain")


async def test_a_burst_of_adds_folds_into_one_reconcile_per_key() -> None:
    runs: Counter[Key] = Counter()

    async def reconcile(key: Key) -> None:
        runs[key] += 1

    queue = WorkQueue(reconcile, workers=4, retry_seconds=0.05)

    queue.start()
    for _ in range(10):
        queue.add(A)
        queue.add(B)
    await settle(queue)
    assert runs == {A: 1, B: 1}
    await queue.stop()


async def test_a_key_added_while_it_runs_runs_once_more_and_never_twice_at_once() -> None:
    running: set[Key] = set()
    overlaps, runs = [], Counter[Key]()
    started = asyncio.Event()

    async def reconcile(key: Key) -> None:
        if key in running:
            overlaps.append(key)
        running.add(key)
        runs[key] += 1
        started.set()
        await asyncio.sleep(0.05)
        running.discard(key)

    queue = WorkQueue(reconcile, workers=4, retry_seconds=0.05)

    queue.start()
    queue.add(A)
    await started.wait()
    for _ in range(5):  # events while the first reconcile runs: one more reconcile, after it
        queue.add(A)
    await settle(queue)
    assert runs[A] == 2 and not overlaps
    await queue.stop()


async def test_a_failed_reconcile_is_retried_until_it_goes_through() -> None:
    attempts: list[float] = []

    async def reconcile(key: Key) -> None:
        attempts.append(asyncio.get_running_loop().time())
        if len(attempts) < 3:
            raise RuntimeError("403 Forbidden")

    queue = WorkQueue(reconcile, workers=2, retry_seconds=0.05)

    queue.start()
    queue.add(A)
    await settle(queue)
    assert len(attempts) == 3
    # call_later never fires early: each retry waited its delay
    assert all(b - a >= 0.04 for a, b in itertools.pairwise(attempts))
    await queue.stop()


async def test_a_forgotten_key_is_not_retried() -> None:
    attempts = 0

    async def reconcile(key: Key) -> None:
        nonlocal attempts
        attempts += 1
        raise RuntimeError("gone")

    queue = WorkQueue(reconcile, workers=1, retry_seconds=0.05)

    queue.start()
    queue.add(A)
    await asyncio.sleep(0.02)
    queue.forget(A)  # the ChatModel was deleted before its retry
    await asyncio.sleep(0.15)
    assert attempts == 1 and queue.idle()
    await queue.stop()


async def test_a_reconcile_can_ask_to_come_back_later() -> None:
    """A canary's reconcile returns the seconds after which its key comes back (RequeueAfter)."""
    runs: Counter[Key] = Counter()

    async def reconcile(key: Key) -> float | None:
        runs[key] += 1
        return 0.05 if runs[key] < 3 else None

    queue = WorkQueue(reconcile, workers=1, retry_seconds=10)
    queue.start()
    queue.add(A)
    await settle(queue)
    assert runs == {A: 3}
    await queue.stop()


async def test_keys_added_before_start_wait_for_the_workers() -> None:
    runs: Counter[Key] = Counter()

    async def reconcile(key: Key) -> None:
        runs[key] += 1

    queue = WorkQueue(reconcile, workers=2, retry_seconds=0.05)
    queue.add(A)
    await asyncio.sleep(0.05)
    assert runs == {}
    queue.start()
    await settle(queue)
    assert runs == {A: 1}
    await queue.stop()
