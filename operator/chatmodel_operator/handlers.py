"""Thin kopf handlers: keep indexes of ChatModels and their children, and call the Reconciler.

Every trigger (ChatModel created/updated/resumed, a Job or Deployment changed) runs the same level-based
reconcile, so handlers stay idempotent and a restarted operator converges without creating duplicates."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import kopf

from chatmodel_operator import observe
from chatmodel_operator.builders.meta import COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL, NAME_LABEL
from chatmodel_operator.config import Config
from chatmodel_operator.k8s import Client
from chatmodel_operator.reconciler import Reconciler
from chatmodel_operator.spec import GROUP, PLURAL, VERSION

OURS = {MANAGED_BY_LABEL: MANAGED_BY}
TRAINING = {**OURS, COMPONENT_LABEL: "training"}
RETRY_SECONDS = 5


def _key(namespace: str | None, name: str | None) -> tuple[str, str]:
    return namespace or "default", name or ""


def _children(kwargs: dict[str, Any], key: tuple[str, str]) -> tuple[Any, Any]:
    """The observed Jobs and Deployments of one ChatModel, from the indexes kopf passes by name."""
    # Copies: the stores change while a reconcile awaits.
    jobs = [*kwargs["training_jobs"].get(key, []), *kwargs["training_trainjobs"].get(key, [])]
    return jobs, list(kwargs["serving_deployments"].get(key, []))


def _troubles(kwargs: dict[str, Any], key: tuple[str, str]) -> Callable[[], list[observe.PodTrouble]]:
    """The ChatModel's stuck pods, read when called (the index is live)."""
    return lambda: list(kwargs["stuck_pods"].get(key, []))


async def _reconcile_owner(key: tuple[str, str], memo: kopf.Memo, kwargs: dict[str, Any]) -> None:
    """Reconcile the ChatModel a child belongs to, with what the indexes hold now."""
    for cm_body in list(kwargs["chatmodel_bodies"].get(key, [])):
        await memo.reconciler.reconcile(cm_body, *_children(kwargs, key), troubles=_troubles(kwargs, key))


def _is_stuck(body: kopf.Body, **_: Any) -> bool:
    return observe.pod_trouble(dict(body)) is not None


def register(registry: kopf.OperatorRegistry, config: Config) -> None:
    """Register every handler on `registry` (main.py and the tests each bring their own)."""

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any, **_: Any) -> None:
        # kopf's bookkeeping goes into our own annotations; only warnings become Kubernetes Events.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="chatmodel.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="chatmodel.dev", key="last-handled-configuration"
        )
        settings.posting.level = logging.WARNING
        settings.posting.reporting_component = "chatmodel-operator"
        memo.reconciler = Reconciler(config, Client(settings, logger))

    # Async on purpose: kopf runs plain functions in a thread pool, which costs more than the work.
    @kopf.index(GROUP, VERSION, PLURAL, registry=registry, id="chatmodel_bodies")
    async def chatmodel_bodies(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
        return {_key(namespace, name): dict(body)}

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

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, backoff=RETRY_SECONDS)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, backoff=RETRY_SECONDS)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, backoff=RETRY_SECONDS)
    async def chatmodel_changed(
        body: kopf.Body, namespace: str | None, name: str, memo: kopf.Memo, **kwargs: Any
    ) -> None:
        # The reconciler writes the status itself, under the ChatModel's lock: kopf's own patch would land
        # after the handler returns, over a status a child's event wrote meanwhile (a lost stuck-pod reason).
        key = _key(namespace, name)
        await memo.reconciler.reconcile(
            dict(body), *_children(kwargs, key), fresh=True, troubles=_troubles(kwargs, key)
        )

    def canary_running(status: kopf.Status, **_: Any) -> bool:
        return any(v.get("state") == "Canary" for v in status.get("versions") or [])

    # A canary is judged after spec.rollout.analysisSeconds: time, not an event, moves it on.
    @kopf.timer(
        GROUP, VERSION, PLURAL, registry=registry, interval=config.rollout_check_seconds, when=canary_running
    )
    async def rollout_check(namespace: str | None, name: str, memo: kopf.Memo, **kwargs: Any) -> None:
        key = _key(namespace, name)
        for cm_body in list(kwargs["chatmodel_bodies"].get(key, [])):
            await memo.reconciler.reconcile(cm_body, *_children(kwargs, key), troubles=_troubles(kwargs, key))

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def chatmodel_deleted(
        event: kopf.RawEvent,
        body: kopf.Body,
        namespace: str | None,
        name: str,
        memo: kopf.Memo,
        **kwargs: Any,
    ) -> None:
        # No finalizer: ownerReferences let the garbage collector clean up even when the operator is down.
        if event["type"] == "DELETED":
            await memo.reconciler.cleanup(dict(body), *_children(kwargs, _key(namespace, name)))

    @kopf.on.event("batch", "v1", "jobs", labels=OURS, registry=registry)
    @kopf.on.event("trainer.kubeflow.org", "v1alpha1", "trainjobs", labels=OURS, registry=registry)
    @kopf.on.event("apps", "v1", "deployments", labels=OURS, registry=registry)
    async def child_changed(
        namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any
    ) -> None:
        await _reconcile_owner(_key(namespace, labels.get(NAME_LABEL)), memo, kwargs)

    # A pod's event matters only for the stuck-pod reason (the Deployment's own events carry readiness),
    # so most pod events (created, scheduled, ready) skip the reconcile entirely.
    @kopf.on.event("", "v1", "pods", labels=OURS, registry=registry)
    async def pod_changed(
        body: kopf.Body, namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **kwargs: Any
    ) -> None:
        key = _key(namespace, labels.get(NAME_LABEL))
        if _is_stuck(body) or memo.reconciler.knew_stuck_pods(key):
            await _reconcile_owner(key, memo, kwargs)
