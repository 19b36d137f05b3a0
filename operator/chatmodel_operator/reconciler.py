"""Carries out plan.py for one ChatModel: reads observations, applies, deletes, writes status and Events."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp
from pydantic import ValidationError

from chatmodel_operator import downloads, metrics, observe, prometheus, rollout
from chatmodel_operator.builders import meta
from chatmodel_operator.builders.adapters import SHARED, shares_adapters, table_name
from chatmodel_operator.builders.model_cache import cache_prune_job
from chatmodel_operator.builders.serving import serves_https
from chatmodel_operator.config import Config
from chatmodel_operator.k8s import Applier, Client
from chatmodel_operator.observe import DeploymentObs, JobObs, PodTrouble
from chatmodel_operator.plan import plan
from chatmodel_operator.refs import Ref, serving_refs
from chatmodel_operator.spec import ChatModel, ChatModelStatus, adapters_pending, canary_running

Key = tuple[str, str]
log = logging.getLogger("chatmodel.reconciler")


async def pod_ready(url: str) -> dict[str, Any] | None:
    """A serving pod's /ready body, or None. Its certificate is not checked: the pod is addressed by IP and
    only says what it serves."""
    timeout = aiohttp.ClientTimeout(total=3)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url, ssl=False) as resp:
            body = await resp.json() if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _compact(status: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if v is not None}


def _of(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def parse(body: Mapping[str, Any], status: Mapping[str, Any] | None) -> ChatModel:
    """The ChatModel with `status` in place of the body's; an unreadable status counts as none."""
    cm = ChatModel.model_validate({**body, "status": None})
    try:
        cm.status = ChatModelStatus.model_validate(status or {})
    except ValidationError:
        cm.status = ChatModelStatus()
    return cm


@dataclasses.dataclass
class Memory:
    """What this process remembers of one ChatModel between reconciles."""

    first_seen: float
    lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    # The status this process last wrote: fresher than a watched body, which lags our own patches.
    written: dict[str, Any] | None = None
    # The child observations (and stuck pods) the last reconcile acted on...
    acted_on: set[JobObs | DeploymentObs | PodTrouble] | None = None
    # ...and the (uid, spec) it acted on: with both unchanged, a reconcile would change nothing.
    spec_seen: tuple[Any, Any] | None = None


class Reconciler:
    def __init__(self, config: Config, client: Client) -> None:
        self.config = config
        self.client = client
        self.applier = Applier(client)
        self.phases = metrics.PhaseTracker()
        self._memory: dict[Key, Memory] = {}
        # Deleted ChatModels (key -> uid): a child event may still carry their last body.
        self._gone: dict[Key, str | None] = {}
        self._posting: set[asyncio.Task[None]] = set()  # Events on their way (a reconcile does not wait)

    def _event(self, body: Mapping[str, Any], type: str, reason: str, message: str) -> None:
        task = asyncio.create_task(self.client.event(dict(body), type, reason, message))
        self._posting.add(task)
        task.add_done_callback(self._posting.discard)

    async def stop(self) -> None:
        """Let the Events on their way land (a few seconds at most), then drop the rest."""
        if self._posting:
            await asyncio.wait(self._posting, timeout=5)
        for task in self._posting:
            task.cancel()

    def _memory_of(self, key: Key) -> Memory:
        if key not in self._memory:
            self._memory[key] = Memory(first_seen=asyncio.get_running_loop().time())
        return self._memory[key]

    def last_status(self, key: Key) -> dict[str, Any] | None:
        """The status this process last wrote for the ChatModel, if any."""
        m = self._memory.get(key)
        return m.written if m else None

    async def reconcile(
        self,
        body: Mapping[str, Any],
        jobs: Iterable[JobObs],
        deployments: Iterable[DeploymentObs],
        troubles: Callable[[], Iterable[PodTrouble]] = tuple,
    ) -> dict[str, Any] | None:
        """Reconcile one ChatModel and write its status (through /status) while holding its lock, so two
        reconciles' writes land in the order they were made (the work queue runs one per key at a time;
        cleanup takes the lock too). Returns the status written, or None when unchanged. `troubles` reads
        the stuck pods once the lock is held: a stuck pod has one event only, and a reconcile that started
        before it must not write a status that forgets it."""
        key: Key = (body["metadata"].get("namespace") or "default", body["metadata"]["name"])
        if body["metadata"].get("deletionTimestamp"):
            return None  # being deleted (foreground): a reconcile would re-create what the collector removes
        uid = body["metadata"].get("uid")
        if key in self._gone:
            if self._gone[key] == uid:
                return None  # a deleted ChatModel's last body
            del self._gone[key]  # re-created: another uid
        memory = self._memory_of(key)
        async with memory.lock:
            if key in self._gone and self._gone[key] == uid:
                return None  # deleted while this reconcile waited
            with metrics.RECONCILE_SECONDS.time():
                try:
                    jobs_by, deps_by = {j.version: j for j in jobs}, {d.version: d for d in deployments}
                    stuck = frozenset(troubles())
                    return await self._reconcile(key, memory, body, jobs_by, deps_by, stuck)
                except Exception as e:
                    metrics.RECONCILE_ERRORS.labels(type(e).__name__).inc()
                    raise

    async def _reconcile(
        self,
        key: Key,
        memory: Memory,
        body: Mapping[str, Any],
        jobs: dict[str, JobObs],
        deps: dict[str, DeploymentObs],
        troubles: frozenset[PodTrouble],
    ) -> dict[str, Any] | None:
        # Compared with ==, not encoded: most triggers are repeats, and the spec is usually the same object.
        spec_seen = (body["metadata"].get("uid"), body.get("spec"))
        previous = memory.written or body.get("status") or {}
        # A canary's live gate is time-based, a download's progress is polled: their requeues get through.
        if (
            not canary_running(previous)
            and not downloads.in_progress(previous)
            and not adapters_pending(previous)
            and memory.spec_seen == spec_seen
            and memory.acted_on == {*jobs.values(), *deps.values(), *troubles}
        ):
            return None  # a repeated trigger (kopf re-delivers events; children echo our own writes)
        generation = body["metadata"].get("generation")
        try:
            cm = parse(body, previous)
        except ValidationError as e:
            # The CRD normally refuses these; without it (or with an older CRD) say why here.
            status = {"phase": "Failed", "message": f"invalid spec: {e}", "observedGeneration": generation}
            return await self._write_status(key, memory, body, previous, status)
        jobs = await self._record_results(key[0], jobs)
        at = now()
        live = await self._live_figures(cm, at)
        download = await downloads.observe_download(self.client, cm, generation)
        pods = await self._adapter_pods(cm) if shares_adapters(cm) else None
        p = plan(cm, jobs, deps, self.config, at, generation, live, troubles, download, pods)
        created = []
        for obj in p.create_only:
            if await self.applier.apply(obj, create_only=True) == "created":
                created.append(obj)
        for obj in p.apply:
            if await self.applier.apply(obj) == "created":
                created.append(obj)
        for ref in p.delete:
            await self.applier.remove(key[0], ref)
        for name in p.scale_to_zero:
            await self.applier.scale(key[0], name, 0)
        if p.event is not None:
            kind, reason, message = p.event
            self._event(body, kind, reason, message)
        if any(o["kind"] in (*observe.TRAINERS, "Deployment") for o in created):
            # What was just created exists: say so now rather than in one more status write after its event.
            trainers = [o for o in created if o["kind"] in observe.TRAINERS]
            jobs = {**jobs, **{j.version: j for j in map(observe.job, trainers)}}
            deps = {**deps, **{d.version: d for d in map(observe.deployment, _of(created, "Deployment"))}}
            p = plan(cm, jobs, deps, self.config, at, generation, live, troubles, download, pods)
        written = await self._write_status(key, memory, body, previous, p.status)
        # Only once the status landed: a refused write (raised) must not make the retry look like a repeat.
        memory.acted_on = {*jobs.values(), *deps.values(), *troubles}
        memory.spec_seen = spec_seen
        return written

    async def _live_figures(self, cm: ChatModel, at: str) -> rollout.LiveFigures | None:
        """Prometheus' figures for a canary whose live gate is due; None when none is, or on no answer (the
        canary then waits, and says so in its condition)."""
        version = rollout.needs_live_figures(cm, at)
        gate = cm.spec.rollout.live_gate
        if version is None or gate is None or not self.config.prometheus_url:
            return None
        ns = cm.metadata.namespace or "default"
        try:
            return await prometheus.live_figures(
                self.config.prometheus_url,
                cm.spec.serving.runtime,
                ns,
                cm.metadata.name,
                version,
                gate.window_seconds,
            )
        except Exception as e:  # an unreachable Prometheus must not stop the reconcile
            log.warning("live gate of %s/%s: Prometheus query failed: %s", ns, cm.metadata.name, e)
            return None

    async def _adapter_pods(self, cm: ChatModel) -> observe.AdapterPods:
        """What each ready pod of the shared Deployment serves, from its /ready (no API key needed; a pod
        that does not answer counts as not ready)."""
        ns = meta.namespace(cm)
        pods = await self.client.list("v1", "Pod", ns, meta.selector(cm, "serving", SHARED))
        scheme = "https" if serves_https(cm) else "http"
        urls = [f"{scheme}://{ip}:{self.config.service_port}/ready" for ip in observe.ready_pod_ips(pods)]
        answers = await asyncio.gather(*(pod_ready(u) for u in urls))
        return observe.AdapterPods.of([a for a in answers if a is not None])

    async def _record_results(self, ns: str, jobs: dict[str, JobObs]) -> dict[str, JobObs]:
        """Copy a finished Job's termination message onto the Job, once: its pods may not last."""
        out = dict(jobs)
        for version, job in jobs.items():
            if job.state == "Running" or job.result is not None:
                continue
            pods = await self.client.list("v1", "Pod", ns, job.pod_selector)
            text = observe.termination_message(pods) or job.reason or f"the training Job {job.state.lower()}"
            annotation = {"metadata": {"annotations": {observe.RESULT_ANNOTATION: text}}}
            await self.client.patch(job.api_version, job.kind, ns, job.name, annotation)
            out[version] = dataclasses.replace(job, result=text)
            metrics.TRAINING_JOBS.labels(job.state).inc()
        return out

    async def _write_status(
        self,
        key: Key,
        memory: Memory,
        body: Mapping[str, Any],
        previous: Mapping[str, Any],
        status: dict[str, Any],
    ) -> dict[str, Any] | None:
        """Patch the status and post an Event when the phase changes."""
        if _compact(status) == _compact(previous):
            return None
        await self.client.patch(
            "chatmodel.dev/v1alpha1", "ChatModel", key[0], key[1], {"status": status}, sub="status"
        )
        memory.written = status
        phase, old = status["phase"], previous.get("phase")
        self.phases.set(key, phase)
        if phase != old:
            log.info("%s/%s: %s (%s)", key[0], key[1], phase, status.get("message") or "")
            kind = "Warning" if phase in ("Failed", "Degraded") else "Normal"
            self._event(body, kind, phase, status.get("message") or phase)
            if phase == "Ready" and old != "Degraded":
                metrics.TIME_TO_READY.observe(asyncio.get_running_loop().time() - memory.first_seen)
        return status

    async def cleanup(
        self,
        body: Mapping[str, Any],
        jobs: Iterable[JobObs],
        deps: Iterable[DeploymentObs],
        others: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        """Delete a deleted ChatModel's children. ownerReferences make the garbage collector do the same;
        this covers clusters (and emulators) without one, and clears this process's memory. Its download
        stays in the model cache unless its cachePolicy is Delete and none of `others` (the namespace's
        other ChatModels) uses it."""
        namespace, name = body["metadata"].get("namespace") or "default", body["metadata"]["name"]
        key = (namespace, name)
        self._gone[key] = body["metadata"].get("uid")
        async with self._memory_of(key).lock:  # let an in-flight reconcile finish first
            await self._delete_children(namespace, name, jobs, deps)
            await self._drop_download(namespace, body, others)
        self.phases.drop(key)
        self._memory.pop(key, None)

    async def _drop_download(
        self, namespace: str, body: Mapping[str, Any], others: Iterable[Mapping[str, Any]]
    ) -> None:
        policy = ((body.get("spec") or {}).get("baseModel") or {}).get("cachePolicy", "Keep")
        status = self.last_status((namespace, body["metadata"]["name"])) or body.get("status") or {}
        download = status.get("download") or {}
        job, path = download.get("job"), download.get("path")
        if policy != "Delete" or not job:
            return
        if any(((o.get("status") or {}).get("download") or {}).get("job") == job for o in others):
            log.info("%s: download %s kept: another ChatModel uses it", namespace, job)
            return
        if path:  # created before the Job goes: the cache entry is never left behind
            await self.applier.apply(cache_prune_job(namespace, path, self.config), create_only=True)
        await self.client.delete("batch/v1", "Job", namespace, job)

    async def _delete_children(
        self, namespace: str, name: str, jobs: Iterable[JobObs], deps: Iterable[DeploymentObs]
    ) -> None:
        refs = [Ref(j.api_version, j.kind, j.name) for j in jobs]
        for d in deps:
            refs += serving_refs(d.name)
        cm = ChatModel.model_validate({"metadata": {"name": name, "namespace": namespace}})
        refs += [
            Ref("v1", "Service", meta.service_name(cm)),
            Ref("gateway.networking.k8s.io/v1", "HTTPRoute", meta.service_name(cm)),
            Ref("v1", "PersistentVolumeClaim", meta.pvc_name(cm)),
            Ref("v1", "ConfigMap", table_name(cm)),
        ]
        self.applier.forget(namespace, name)
        for ref in refs:
            await self.client.delete(ref.api_version, ref.kind, namespace, ref.name)
