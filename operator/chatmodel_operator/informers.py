"""Every watch of the operator: the ChatModels and their children (training Jobs and TrainJobs,
Deployments, stuck pods), through kopf's own list-and-watch stream (`kopf._cogs.clients.watching`: paging,
bookmarks, reconnects, restarts after "410 Gone", kopf's credentials) but kept out of kopf's per-object
handler machinery. An event needs only its observation stored and its ChatModel's key queued; as a kopf
handler (a worker task per object, a cause, kwargs, loggers and an index per event) it cost several times
the JSON decode: a ChatModel's three events (created, and our two status writes) were a seventh of the
operator's CPU at 1,000 ChatModels, its children's nine (a Deployment five, a pod four) more.

Each children's watch filters by label on the server (only this operator's children travel), keeps one
slim observation per object, and calls back with the ChatModel's key when an observation changes (a status
update that changes no replica count queues nothing). A ChatModel that is gone (deleted, or missing from a
fresh listing) calls `deleted` with its last observation instead."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import kopf
from kopf._cogs.clients import errors as kopf_errors
from kopf._cogs.clients import watching
from kopf._cogs.structs import references

from chatmodel_operator import observe
from chatmodel_operator.builders.meta import COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL, NAME_LABEL
from chatmodel_operator.observe import DeploymentObs, JobObs, PodTrouble
from chatmodel_operator.spec import GROUP, PLURAL, VERSION

Key = tuple[str, str]
T = TypeVar("T")
log = logging.getLogger("chatmodel.informers")

OURS = {MANAGED_BY_LABEL: MANAGED_BY}
TRAINING = {**OURS, COMPONENT_LABEL: "training"}
# A kind that is not served (Kubeflow Trainer's CRD not installed) is looked up again this often.
ABSENT_RETRY_SECONDS = 60.0
FAILED_RETRY_SECONDS = 5.0


@dataclass
class Store(Generic[T]):
    """One kind's observations: ChatModel key -> object name -> observation."""

    by_key: dict[Key, dict[str, T]] = field(default_factory=dict)

    def get(self, key: Key) -> list[T]:
        return list(self.by_key.get(key, {}).values())

    def put(self, key: Key, name: str, obs: T | None) -> bool:
        """Store (or, with None, drop) one object's observation; whether anything changed."""
        objs = self.by_key.get(key)
        if obs is None:
            if objs is None or name not in objs:
                return False
            del objs[name]
            if not objs:
                del self.by_key[key]
            return True
        if objs is None:
            objs = self.by_key[key] = {}
        elif objs.get(name) == obs:
            return False
        objs[name] = obs
        return True


def child_key(meta: Mapping[str, Any], labels: Mapping[str, str]) -> Key:
    """A child's ChatModel: the name label every child carries."""
    return meta.get("namespace") or "default", labels.get(NAME_LABEL) or ""


def own_key(meta: Mapping[str, Any], labels: Mapping[str, str]) -> Key:
    return meta.get("namespace") or "default", meta.get("name") or ""


@dataclass(frozen=True)
class Kind(Generic[T]):
    group: str
    version: str
    plural: str
    labels: Mapping[str, str]
    observe: Callable[[dict[str, Any]], T | None]  # None: nothing to keep (a pod that is not stuck)
    key: Callable[[Mapping[str, Any], Mapping[str, str]], Key] = child_key  # whose ChatModel
    # The part of an observation whose change queues the ChatModel (None: all of it).
    queues_on: Callable[[T], Any] | None = None

    @property
    def resource(self) -> references.Resource:
        return references.Resource(self.group, self.version, self.plural, namespaced=True)

    @property
    def selector(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))


def _not_status(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "status"}


# A ChatModel's status is ours: its echo (two of a ChatModel's three events) queues nothing, as
# controller-runtime's GenerationChangedPredicate; the store still keeps the newest body.
CHATMODELS = Kind[dict[str, Any]](GROUP, VERSION, PLURAL, {}, observe.chatmodel, own_key, _not_status)
JOBS = Kind[JobObs]("batch", "v1", "jobs", TRAINING, observe.job)
# fineTune.engine kubeflow: TrainJobs report Complete/Failed like Jobs.
TRAINJOBS = Kind[JobObs]("trainer.kubeflow.org", "v1alpha1", "trainjobs", TRAINING, observe.job)
DEPLOYMENTS = Kind[DeploymentObs]("apps", "v1", "deployments", OURS, observe.deployment)
# Only stuck pods are kept: a pod's event matters only for the stuck-pod reason in the status (the
# Deployment's and Job's own events carry readiness); one that comes unstuck leaves and queues.
PODS = Kind[PodTrouble]("", "v1", "pods", OURS, observe.pod_trouble)


class Informer(Generic[T]):
    """One kind's watch in one namespace (None: cluster-wide) into its store."""

    def __init__(
        self,
        kind: Kind[T],
        store: Store[T],
        namespace: references.NamespaceName | None,
        changed: Callable[[Key], None],
        gone: Callable[[Key, T], None] | None = None,
    ) -> None:
        self.kind, self.store, self.namespace, self.changed = kind, store, namespace, changed
        self.gone = gone  # called instead of `changed` when an object goes
        self.listed = asyncio.Event()

    def _matches(self, labels: Mapping[str, str]) -> bool:
        # Also on the client: not every API (or emulator) honours labelSelector.
        return all(labels.get(k) == v for k, v in self.kind.labels.items())

    def _event(self, event: Mapping[str, Any], listing: set[tuple[Key, str]] | None) -> None:
        obj = event["object"]
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        if not self._matches(labels):
            return
        key = self.kind.key(meta, labels)
        name = meta.get("name") or ""
        if listing is not None:
            listing.add((key, name))
        obs = None if event["type"] == "DELETED" else self.kind.observe(obj)
        self._put(key, name, obs)

    def _put(self, key: Key, name: str, obs: T | None) -> None:
        old = self.store.by_key.get(key, {}).get(name)
        if not self.store.put(key, name, obs):
            return
        if obs is None and old is not None and self.gone is not None:
            self.gone(key, old)
        elif obs is None or old is None or (q := self.kind.queues_on) is None or q(obs) != q(old):
            self.changed(key)

    def _keep_only(self, listed: set[tuple[Key, str]]) -> None:
        """After a fresh listing: drop what it no longer shows (deleted while the watch was down)."""
        gone = [(k, n) for k, objs in self.store.by_key.items() for n in objs if (k, n) not in listed]
        for k, n in gone:
            self._put(k, n, None)

    async def run(self, settings: kopf.OperatorSettings) -> None:
        kind = self.kind
        selector = references.Selector(group=kind.group, version=kind.version, plural=kind.plural)
        if kind.labels:
            settings.watching.label_selectors[selector] = kind.selector
        while True:
            try:
                await self._watch(settings)
            except kopf_errors.APINotFoundError:
                self.listed.set()  # nothing of a kind the API does not serve
                await asyncio.sleep(ABSENT_RETRY_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning(
                    "watch of %s failed, restarting in %s s: %s", self.kind.plural, FAILED_RETRY_SECONDS, e
                )
                await asyncio.sleep(FAILED_RETRY_SECONDS)

    async def _watch(self, settings: kopf.OperatorSettings) -> None:
        listing: set[tuple[Key, str]] | None = None
        stream = watching.infinite_watch(
            settings=settings, resource=self.kind.resource, namespace=self.namespace
        )
        async for event in stream:
            if event is watching.Bookmark.LISTED:
                self._keep_only(listing or set())
                listing = None
                self.listed.set()
            elif event["type"] is None:  # a listed object (kopf's convention)
                listing = set() if listing is None else listing
                self._event(event, listing)
            elif event["type"] != "BOOKMARK":
                self._event(event, None)


@dataclass
class Children:
    """The stores the reconciler reads, and the informers that fill them."""

    chatmodels: Store[dict[str, Any]] = field(default_factory=Store)  # observe.chatmodel's slim bodies
    jobs: Store[JobObs] = field(default_factory=Store)
    trainjobs: Store[JobObs] = field(default_factory=Store)
    deployments: Store[DeploymentObs] = field(default_factory=Store)
    stuck_pods: Store[PodTrouble] = field(default_factory=Store)
    informers: list[Informer[Any]] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def of(self, key: Key) -> tuple[list[JobObs], list[DeploymentObs]]:
        """The observed Jobs (and TrainJobs) and Deployments of one ChatModel."""
        return [*self.jobs.get(key), *self.trainjobs.get(key)], self.deployments.get(key)

    def chatmodel(self, key: Key) -> dict[str, Any] | None:
        """The ChatModel's slim body, None once it is gone."""
        return self.chatmodels.by_key.get(key, {}).get(key[1])

    def start(
        self,
        settings: kopf.OperatorSettings,
        namespaces: Iterable[str],
        changed: Callable[[Key], None],
        deleted: Callable[[Key, dict[str, Any]], None],
    ) -> None:
        """Watch the ChatModels and their children in `namespaces` (none: cluster-wide); `changed` gets
        the key of each ChatModel whose body or children changed, `deleted` each ChatModel that went."""
        pairs: list[tuple[Kind[Any], Store[Any]]] = [
            (JOBS, self.jobs),
            (TRAINJOBS, self.trainjobs),
            (DEPLOYMENTS, self.deployments),
            (PODS, self.stuck_pods),
        ]
        names: list[references.NamespaceName | None] = [references.NamespaceName(n) for n in namespaces]
        for ns in names or [None]:
            self.informers.append(Informer(CHATMODELS, self.chatmodels, ns, changed, deleted))
            self.informers += [Informer(kind, store, ns, changed) for kind, store in pairs]
        self.tasks = [asyncio.create_task(i.run(settings)) for i in self.informers]

    async def listed(self) -> None:
        """Returns once every informer has listed its kind (the stores hold what exists)."""
        for i in self.informers:
            await i.listed.wait()

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
