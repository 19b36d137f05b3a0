"""Thin kopf handlers: at start-up, the watches (informers.py: the ChatModels and their children) and the
work queue whose workers run the Reconciler with what the stores hold then; at shutdown, their end.

Every trigger (a ChatModel listed or changed, a Job or Deployment changed, a pod stuck) queues the same
level-based reconcile, so the work stays idempotent and a restarted operator converges without creating
duplicates. kopf runs the process (login, the liveness probe, signals, its API client and watch streams);
no kopf resource handler runs per event: kopf's change tracking (a diff-base annotation on every
ChatModel, a diff and a deep copy per event) was half the operator's CPU, its per-event handler machinery
a seventh of the rest."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from chatmodel_operator.config import Config
from chatmodel_operator.downloads import in_progress
from chatmodel_operator.informers import Children
from chatmodel_operator.k8s import Client
from chatmodel_operator.reconciler import Reconciler
from chatmodel_operator.spec import adapters_pending, canary_running
from chatmodel_operator.workqueue import Key, Reconcile, WorkQueue

RETRY_SECONDS = 5
# Reconciles at once (controller-runtime's MaxConcurrentReconciles): each sends its requests in turn.
WORKERS = 16
log = logging.getLogger("chatmodel.handlers")


def reconcile_from(reconciler: Reconciler, children: Children, config: Config) -> Reconcile:
    """The work queue's reconcile of one key, with what the ChatModel and child stores hold when it runs;
    a ChatModel in its canary comes back after rollout_check_seconds (its live gate is judged by time,
    not by an event), one whose model downloads after download_poll_seconds (its progress is read), one
    whose adapter is not on every pod yet after adapter_poll_seconds (the pods are asked)."""

    async def reconcile(key: Key) -> float | None:
        await children.listed()  # a reconcile before a kind is listed would miss its children
        body = children.chatmodel(key)
        if body is None:  # deleted since it was queued
            return None
        status = await reconciler.reconcile(
            body,
            *children.of(key),
            # The stuck pods are read once the ChatModel's lock is held (a pod has one such event).
            troubles=lambda: children.stuck_pods.get(key),
        )
        latest = status or reconciler.last_status(key) or body.get("status")
        if in_progress(latest):
            return config.download_poll_seconds
        if adapters_pending(latest):
            return config.adapter_poll_seconds
        if canary_running(latest):
            return config.rollout_check_seconds
        return None

    return reconcile


class Cleanups:
    """Deleted ChatModels' clean-ups, each a task of its own (a watch callback cannot wait for one)."""

    def __init__(self, reconciler: Reconciler, children: Children, queue: WorkQueue) -> None:
        self.reconciler, self.children, self.queue = reconciler, children, queue
        self.tasks: set[asyncio.Task[None]] = set()

    def deleted(self, key: Key, body: dict[str, Any]) -> None:
        # No finalizer: ownerReferences let the garbage collector clean up even when the operator is down.
        self.queue.forget(key)
        task = asyncio.create_task(self._cleanup(key, body))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _cleanup(self, key: Key, body: dict[str, Any]) -> None:
        try:
            # The namespace's other ChatModels: whether one still uses this one's download.
            others = [
                b
                for k, objs in self.children.chatmodels.by_key.items()
                if k[0] == key[0] and k != key
                for b in objs.values()
            ]
            await self.reconciler.cleanup(body, *self.children.of(key), others)
        except Exception:
            log.exception("%s/%s: cleaning up after the deletion failed", *key)


def register(registry: kopf.OperatorRegistry, config: Config) -> None:
    """Register every handler on `registry` (main.py and the tests each bring their own)."""

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any, **_: Any) -> None:
        settings.posting.reporting_component = "chatmodel-operator"  # the Events' source
        memo.reconciler = Reconciler(config, Client(settings, logger))
        memo.children = Children()
        reconcile = reconcile_from(memo.reconciler, memo.children, config)
        memo.queue = WorkQueue(reconcile, WORKERS, RETRY_SECONDS)
        memo.cleanups = Cleanups(memo.reconciler, memo.children, memo.queue)
        memo.queue.start()
        memo.children.start(settings, config.namespaces, memo.queue.add, memo.cleanups.deleted)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        await memo.children.stop()
        await memo.queue.stop()
        await memo.reconciler.stop()
