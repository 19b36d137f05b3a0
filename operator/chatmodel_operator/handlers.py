"""Thin kopf handlers: an index of ChatModels, and a queue of the ChatModels a change concerns; the work
queue's workers run the Reconciler with what the index and the child informers (informers.py) hold then.

Every trigger (a ChatModel listed or changed, a Job or Deployment changed, a pod stuck) runs the same
level-based reconcile, so handlers stay idempotent and a restarted operator converges without creating
duplicates."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from chatmodel_operator import observe
from chatmodel_operator.config import Config
from chatmodel_operator.informers import Children
from chatmodel_operator.k8s import Client
from chatmodel_operator.reconciler import Reconciler
from chatmodel_operator.spec import GROUP, PLURAL, VERSION, canary_running
from chatmodel_operator.workqueue import Key, Reconcile, WorkQueue

RETRY_SECONDS = 5
# Reconciles at once (controller-runtime's MaxConcurrentReconciles): each sends its requests in turn.
WORKERS = 16


def _key(namespace: str | None, name: str | None) -> Key:
    return namespace or "default", name or ""


def reconcile_from(
    reconciler: Reconciler,
    chatmodels: kopf.Index[Key, dict[str, Any]],
    children: Children,
    requeue_seconds: float,
) -> Reconcile:
    """The work queue's reconcile of one key, with what kopf's ChatModel index and the child stores hold
    when it runs; a ChatModel in its canary comes back after `requeue_seconds` (its live gate is judged by
    time, not by an event)."""

    async def reconcile(key: Key) -> float | None:
        await children.listed()  # a reconcile before a kind is listed would miss its children
        again = None
        for body in list(chatmodels.get(key, [])):  # none once deleted
            status = await reconciler.reconcile(
                body,
                *children.of(key),
                # The stuck pods are read once the ChatModel's lock is held (a pod has one such event).
                troubles=lambda: children.stuck_pods.get(key),
            )
            if canary_running(status or reconciler.last_status(key) or body.get("status")):
                again = requeue_seconds
        return again

    return reconcile


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base: this operator has no change-detecting handlers (only event handlers, indexes and a
    timer), yet kopf builds the diff base of every event of every watched kind, a deep copy of the whole
    object (managedFields and status included), which was a third of the operator's CPU."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        return None

    def fetch(self, *, body: kopf.Body) -> None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: Any) -> None:
        return None


def register(registry: kopf.OperatorRegistry, config: Config) -> None:
    """Register every handler on `registry` (main.py and the tests each bring their own)."""

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any, **kwargs: Any) -> None:
        settings.persistence.diffbase_storage = NoDiffBase()
        # Only warnings become Kubernetes Events.
        settings.posting.level = logging.WARNING
        settings.posting.reporting_component = "chatmodel-operator"
        memo.reconciler = Reconciler(config, Client(settings, logger))
        memo.children = Children()
        # kwargs holds kopf's indexes by their ids (live objects, filled before any handler runs).
        reconcile = reconcile_from(
            memo.reconciler, kwargs["chatmodel_bodies"], memo.children, config.rollout_check_seconds
        )
        memo.queue = WorkQueue(reconcile, WORKERS, RETRY_SECONDS)
        memo.children.start(settings, config.namespaces, memo.queue.add)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        await memo.children.stop()
        await memo.queue.stop()

    # Async on purpose: kopf runs plain functions in a thread pool, which costs more than the work.
    @kopf.index(GROUP, VERSION, PLURAL, registry=registry, id="chatmodel_bodies")
    async def chatmodel_bodies(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
        return {_key(namespace, name): observe.chatmodel(dict(body))}

    # kopf's event handlers, not its create/update/resume ones: the reconcile is level-based and knows a
    # repeat by itself, and kopf's change tracking (a diff-base annotation written on every ChatModel, a
    # diff computed on every event) was half the operator's CPU. Retries are the work queue's.
    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def chatmodel_event(
        event: kopf.RawEvent,
        body: kopf.Body,
        namespace: str | None,
        name: str,
        memo: kopf.Memo,
        **kwargs: Any,
    ) -> None:
        key = _key(namespace, name)
        memo.queue.start()
        if event["type"] == "DELETED":
            # No finalizer: ownerReferences let the garbage collector clean up even when the operator is down.
            memo.queue.forget(key)
            await memo.reconciler.cleanup(dict(body), *memo.children.of(key))
        else:
            memo.queue.add(key)
