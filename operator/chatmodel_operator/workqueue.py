"""A work queue of ChatModel keys, as client-go's and controller-runtime's: a key waits in the queue at most
once and is never reconciled twice at once; a key added while it is being reconciled is reconciled once
more afterwards. Events only add keys, so a burst of events for one ChatModel folds into one reconcile,
and a fixed number of workers bounds the requests in flight (kopf would otherwise run one handler per
event, each holding its objects and an HTTPS connection of its own)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

# A reconcile returns None, or the seconds after which its key comes back (controller-runtime's
# RequeueAfter: a canary's live gate is judged by time, not by an event).
Reconcile = Callable[[tuple[str, str]], Awaitable[float | None]]

Key = tuple[str, str]
log = logging.getLogger("chatmodel.workqueue")


class WorkQueue:
    def __init__(self, reconcile: Reconcile, workers: int, retry_seconds: float) -> None:
        self._reconcile = reconcile
        self._retry_seconds = retry_seconds
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._waiting: set[Key] = set()
        self._running: set[Key] = set()
        self._again: set[Key] = set()  # added while running
        self._later: dict[Key, asyncio.TimerHandle] = {}
        self._size = workers
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the workers (once). Keys added before wait."""
        if not self._workers:
            self._workers = [asyncio.create_task(self._work()) for _ in range(self._size)]

    def add(self, key: Key) -> None:
        if key in self._running:
            self._again.add(key)
        elif key not in self._waiting:
            self._waiting.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: Key, seconds: float) -> None:
        """Add the key later (a retry); one pending retry per key."""
        if key not in self._later:
            loop = asyncio.get_running_loop()
            self._later[key] = loop.call_later(seconds, self._add_later, key)

    def _add_later(self, key: Key) -> None:
        del self._later[key]
        self.add(key)

    def forget(self, key: Key) -> None:
        """Drop a pending retry (the ChatModel is gone); a queued key finds nothing to do."""
        handle = self._later.pop(key, None)
        if handle is not None:
            handle.cancel()

    def idle(self) -> bool:
        return not (self._waiting or self._running or self._later)

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._waiting.discard(key)
            self._running.add(key)
            try:
                again = await self._reconcile(key)
                if again is not None:
                    self.add_after(key, again)
            except Exception as e:
                # The message carries the API's answer (a 403 names the user and the verb).
                log.exception(
                    "%s/%s: reconcile failed with an exception, retrying in %s s: %s",
                    *key,
                    self._retry_seconds,
                    e,
                )
                self.add_after(key, self._retry_seconds)
            finally:
                self._running.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self.add(key)

    async def stop(self) -> None:
        for handle in self._later.values():
            handle.cancel()
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
