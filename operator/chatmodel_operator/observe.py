"""Pure summaries of live objects: what the operator needs to know of a ChatModel, a Job, a Deployment."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, cast

from chatmodel_operator.builders.meta import (
    COMPLETION_INDEX_ANNOTATION,
    COMPONENT_LABEL,
    DOMAIN,
    VERSION_LABEL,
)
from chatmodel_operator.builders.training import TRAINJOB_API

# The trainer's termination message, copied onto the Job once it finishes (pods may be gone later).
RESULT_ANNOTATION = f"{DOMAIN}/result"


# What trains a version: a batch/v1 Job, or a Kubeflow Trainer TrainJob (whose pods a JobSet of the same
# name owns). Both report Complete/Failed conditions.
TRAINERS: dict[str, tuple[str, str]] = {
    "Job": ("batch/v1", "batch.kubernetes.io/job-name"),
    "TrainJob": (TRAINJOB_API, "jobset.sigs.k8s.io/jobset-name"),
}


# The metadata a reconcile reads (uid for ownerReferences, generation for observedGeneration, and
# deletionTimestamp: a ChatModel on its way out is left to the garbage collector).
CHATMODEL_METADATA = ("name", "namespace", "uid", "generation", "deletionTimestamp")


def chatmodel(body: dict[str, Any]) -> dict[str, Any]:
    """A ChatModel without what only the API server needs: managedFields and kopf's annotations (a copy of
    the whole spec) were most of each indexed body, and every reconcile parsed them."""
    meta = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta[k] for k in CHATMODEL_METADATA if k in meta},
        "spec": body.get("spec"),
        "status": body.get("status"),
    }


@dataclass(frozen=True)
class JobObs:
    version: str
    name: str
    state: Literal["Running", "Succeeded", "Failed"]
    result: str | None  # the trainer's termination message, once recorded
    reason: str  # the Job's own failure message, if any
    kind: str = "Job"  # a key of TRAINERS

    @property
    def api_version(self) -> str:
        return TRAINERS[self.kind][0]

    @property
    def pod_selector(self) -> dict[str, str]:
        """The label its pods carry."""
        return {TRAINERS[self.kind][1]: self.name}


@dataclass(frozen=True)
class DeploymentObs:
    version: str
    name: str
    replicas: int
    ready_replicas: int
    desired_replicas: int | None = None  # spec.replicas; None while an autoscaler owns it


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in status.get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return cast(dict[str, Any], c)
    return None


def job(body: dict[str, Any]) -> JobObs:
    meta, status = body.get("metadata", {}), body.get("status") or {}
    failed = _condition(status, "Failed")
    if _condition(status, "Complete") or status.get("succeeded"):
        state: Literal["Running", "Succeeded", "Failed"] = "Succeeded"
    elif failed:
        state = "Failed"
    else:
        state = "Running"
    return JobObs(
        version=meta.get("labels", {}).get(VERSION_LABEL, ""),
        name=meta.get("name", ""),
        state=state,
        result=(meta.get("annotations") or {}).get(RESULT_ANNOTATION),
        reason=(failed or {}).get("message") or (failed or {}).get("reason") or "",
        kind=body.get("kind") or "Job",
    )


def deployment(body: dict[str, Any]) -> DeploymentObs:
    meta, spec, status = body.get("metadata", {}), body.get("spec") or {}, body.get("status") or {}
    return DeploymentObs(
        version=meta.get("labels", {}).get(VERSION_LABEL, ""),
        name=meta.get("name", ""),
        replicas=int(status.get("replicas") or spec.get("replicas") or 0),
        ready_replicas=int(status.get("readyReplicas") or 0),
        desired_replicas=spec.get("replicas"),
    )


@dataclass(frozen=True)
class PodTrouble:
    """Why one of our pods cannot run: what a kubelet or the scheduler reported."""

    version: str
    component: str  # training | serving
    pod: str
    reason: str  # Unschedulable, ImagePullBackOff, CrashLoopBackOff, ...
    message: str

    def describe(self) -> str:
        return f"{self.component} pod {self.pod}: {self.reason}" + (
            f": {self.message}" if self.message else ""
        )


# Container waiting reasons that do not clear by themselves (ContainerCreating and PodInitializing do).
STUCK_REASONS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "CrashLoopBackOff",
    }
)


def pod_trouble(body: dict[str, Any]) -> PodTrouble | None:
    """Why a pod is stuck (unschedulable, an image or config it cannot start, a crash loop), or None."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") in ("Succeeded", "Failed"):
        return None
    labels = meta.get("labels") or {}

    def trouble(reason: str, message: str) -> PodTrouble:
        return PodTrouble(
            labels.get(VERSION_LABEL, ""),
            labels.get(COMPONENT_LABEL, ""),
            meta.get("name", ""),
            reason,
            message,
        )

    for c in status.get("conditions") or []:
        if (
            c.get("type") == "PodScheduled"
            and c.get("status") == "False"
            and c.get("reason") == "Unschedulable"
        ):
            return trouble("Unschedulable", (c.get("message") or "").strip())
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STUCK_REASONS:
            said = (waiting.get("message") or "").strip()
            return trouble(waiting["reason"], f"container {cs.get('name')}" + (f": {said}" if said else ""))
    return None


_GENERIC_REASONS = ("Error", "Completed")


@dataclass(frozen=True)
class _Ended:
    finished_at: str
    index: str | None  # the node, in an Indexed Job
    exit_code: int
    text: str


def _ended(pods: list[dict[str, Any]]) -> list[_Ended]:
    out = []
    for pod in pods:
        index = ((pod.get("metadata") or {}).get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION)
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            message, reason = (term.get("message") or "").strip(), term.get("reason") or ""
            if reason in _GENERIC_REASONS or reason in message:
                reason = ""
            text = ": ".join(t for t in (reason, message) if t)  # e.g. "OOMKilled" with no message
            if text:
                out.append(_Ended(term.get("finishedAt") or "", index, int(term.get("exitCode") or 0), text))
    return out


def termination_message(pods: list[dict[str, Any]]) -> str | None:
    """What the trainer said. One pod: its newest terminated container's message. Several nodes (an
    Indexed Job): rank 0's result (node 0 runs rank 0, the only rank that writes one on success), or
    else the first node to fail, named (the other nodes mostly fail because it went away)."""
    ended = _ended(pods)
    if not ended:
        return None
    if all(e.index is None for e in ended):
        return max(ended, key=lambda e: e.finished_at).text
    results = [e for e in ended if e.index == "0" and e.exit_code == 0]
    if results:
        return max(results, key=lambda e: e.finished_at).text
    failures = [e for e in ended if e.exit_code != 0] or ended
    first = min(failures, key=lambda e: e.finished_at)
    return f"node {first.index}: {first.text}"


@dataclass(frozen=True)
class TrainResult:
    eval_loss: float | None = None
    eval_loss_before: float | None = None
    message: str | None = None


def parse_result(text: str | None) -> TrainResult:
    """The trainer writes a JSON summary on success and a plain reason on failure."""
    if not text:
        return TrainResult()
    try:
        data = json.loads(text)
    except ValueError:
        return TrainResult(message=text)
    if not isinstance(data, dict):
        return TrainResult(message=text)

    def num(key: str) -> float | None:
        value = data.get(key)
        return float(value) if isinstance(value, int | float) else None

    msg = data.get("error") or data.get("message")
    return TrainResult(num("eval_loss"), num("eval_loss_before"), str(msg) if msg else None)


@dataclass(frozen=True)
class AdapterPods:
    """serving.lora.shared: what the ready pods of the base Deployment said on /ready (the served models,
    adapters among them, and the adapters they refused)."""

    ready: int  # ready pods that answered
    loaded: dict[str, int]  # served model name -> pods serving it
    errors: dict[str, str]  # adapter name -> why a pod refused it

    @classmethod
    def of(cls, answers: list[dict[str, Any]]) -> AdapterPods:
        loaded: dict[str, int] = {}
        errors: dict[str, str] = {}
        for body in answers:
            for name in body.get("models") or []:
                loaded[str(name)] = loaded.get(str(name), 0) + 1
            errors.update({str(k): str(v) for k, v in (body.get("adapter_errors") or {}).items()})
        return cls(len(answers), loaded, errors)

    def on_every_pod(self, name: str) -> bool:
        return self.ready > 0 and self.loaded.get(name, 0) == self.ready

    def share(self, name: str) -> str:
        return f"{self.loaded.get(name, 0)}/{self.ready}"


def ready_pod_ips(pods: list[dict[str, Any]]) -> list[str]:
    """The pod IPs of the Ready, running pods among `pods` (not being deleted)."""
    out = []
    for p in pods:
        status = p.get("status") or {}
        if p.get("metadata", {}).get("deletionTimestamp") or not status.get("podIP"):
            continue
        if _condition(status, "Ready"):
            out.append(str(status["podIP"]))
    return out
