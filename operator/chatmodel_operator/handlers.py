"""Thin kopf handlers: keep indexes of ChatModels and their children, and queue the ChatModel a change
concerns; the work queue's workers run the Reconciler with what the indexes hold then.

Every trigger (a ChatModel listed or changed, a Job or Deployment changed, a pod stuck) runs the same
level-based reconcile, so handlers stay idempotent and a restarted operator converges without creating
duplicates."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from chatmodel_operator import observe
from chatmodel_operator.builders.meta import COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL, NAME_LABEL
from chatmodel_operator.config import Config
from chatmodel_operator.k8s import Client
from chatmodel_operator.observe import DeploymentObs, JobObs, PodTrouble
from chatmodel_operator.reconciler import Reconciler
from chatmodel_operator.spec import GROUP, PLURAL, VERSION, canary_running
from chatmodel_operator.workqueue import Key, WorkQueue

OURS = {MANAGED_BY_LABEL: MANAGED_BY}
TRAINING = {**OURS, COMPONENT_LABEL: "training"}
RETRY_SECONDS = 5
# Reconciles at once (controller-runtime's MaxConcurrentReconciles): each sends its requests in turn.
WORKERS = 16


def _key(namespace: str | None, name: str | None) -> Key:
    return namespace or "default", name or ""


@dataclass(frozen=True)
class Indexes:
    """kopf's indexes by their ids (live mappings kopf keeps filled), typed."""

    chatmodels: kopf.Index[Key, dict[str, Any]]
    jobs: kopf.Index[Key, JobObs]
    trainjobs: kopf.Index[Key, JobObs]
    deployments: kopf.Index[Key, DeploymentObs]
    stuck_pods: kopf.Index[Key, PodTrouble]

    @classmethod
    def of(cls, kwargs: Mapping[str, Any]) -> Indexes:
        return cls(
            kwargs["chatmodel_bodies"],
            kwargs["training_jobs"],
            kwargs["training_trainjobs"],
            kwargs["serving_deployments"],
            kwargs["stuck_pods"],
        )

    def children(self, key: Key) -> tuple[list[JobObs], list[DeploymentObs]]:
        """The observed Jobs and Deployments of one ChatModel (copies: the stores change while a
        reconcile awaits)."""
        jobs = [*self.jobs.get(key, []), *self.trainjobs.get(key, [])]
        return jobs, list(self.deployments.get(key, []))


def reconcile_from(reconciler: Reconciler, indexes: Indexes) -> Callable[[Key], Awaitable[None]]:
    """The work queue's reconcile of one key, with what kopf's (live) indexes hold when it runs."""

    async def reconcile(key: Key) -> None:
        for body in list(indexes.chatmodels.get(key, [])):  # none once deleted
            await reconciler.reconcile(
                body,
                *indexes.children(key),
                # The stuck pods are read once the ChatModel's lock is held (a pod has one such event).
                troubles=lambda: list(indexes.stuck_pods.get(key, [])),
            )

    return reconcile


def _is_stuck(body: kopf.Body, **_: Any) -> bool:
    return observe.pod_trouble(dict(body)) is not None


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
        # kwargs holds kopf's indexes by their ids (live objects, filled before any handler runs).
        memo.queue = WorkQueue(reconcile_from(memo.reconciler, Indexes.of(kwargs)), WORKERS, RETRY_SECONDS)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        await memo.queue.stop()

    # Async on purpose: kopf runs plain functions in a thread pool, which costs more than the work.
    @kopf.index(GROUP, VERSION, PLURAL, registry=registry, id="chatmodel_bodies")
    async def chatmodel_bodies(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
        return {_key(namespace, name): observe.chatmodel(dict(body))}

    # Only training Jobs: the artifact-prune Jobs carry the same version label.
    @kopf.index("batch", "v1", "jobs", labels=TRAINING, registry=registry, id="training_jobs")
    async def training_jobs(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> Any:
        return {_key(namespace, labels.get(NAME_LABEL)): observe.job(dict(body))}

    # fineTune.engine kubeflow: TrainJobs report Complete/Failed like Jobs (no watch without Trainer's CRD).
    @kopf.index(
        "trainer.kubeflow.org",
        "v1alpha1",
        "trainjobs",
        labels=TRAINING,
        registry=registry,
        id="training_trainjobs",
    )
    async def training_trainjobs(
        body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
    ) -> Any:
        return {_key(namespace, labels.get(NAME_LABEL)): observe.job(dict(body))}

    @kopf.index("apps", "v1", "deployments", labels=OURS, registry=registry, id="serving_deployments")
    async def serving_deployments(
        body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
    ) -> Any:
        return {_key(namespace, labels.get(NAME_LABEL)): observe.deployment(dict(body))}

    # Only stuck pods (a pod that stops being stuck leaves the index): the reason goes into the status.
    @kopf.index("", "v1", "pods", labels=OURS, when=_is_stuck, registry=registry, id="stuck_pods")
    async def stuck_pods(body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any) -> Any:
        return {_key(namespace, labels.get(NAME_LABEL)): observe.pod_trouble(dict(body))}

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
        if event["type"] == "DELETED":
            # No finalizer: ownerReferences let the garbage collector clean up even when the operator is down.
            memo.queue.forget(key)
            await memo.reconciler.cleanup(dict(body), *Indexes.of(kwargs).children(key))
        else:
            memo.queue.add(key)

    def in_canary(status: kopf.Status, **_: Any) -> bool:
        return canary_running(status)

    # A canary is judged after spec.rollout.analysisSeconds: time, not an event, moves it on.
    @kopf.timer(
        GROUP, VERSION, PLURAL, registry=registry, interval=config.rollout_check_seconds, when=in_canary
    )
    async def rollout_check(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
        memo.queue.add(_key(namespace, name))

    @kopf.on.event("batch", "v1", "jobs", labels=OURS, registry=registry)
    @kopf.on.event("trainer.kubeflow.org", "v1alpha1", "trainjobs", labels=OURS, registry=registry)
    @kopf.on.event("apps", "v1", "deployments", labels=OURS, registry=registry)
    async def child_changed(namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any) -> None:
        memo.queue.add(_key(namespace, labels.get(NAME_LABEL)))

    # A pod's event matters only for the stuck-pod reason (the Deployment's own events carry readiness),
    # so most pod events (created, scheduled, ready) queue nothing.
    @kopf.on.event("", "v1", "pods", labels=OURS, registry=registry)
    async def pod_changed(
        body: kopf.Body, namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
    ) -> None:
        key = _key(namespace, labels.get(NAME_LABEL))
        if _is_stuck(body) or memo.reconciler.knew_stuck_pods(key):
            memo.queue.add(key)
