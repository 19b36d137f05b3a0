"""Pure summaries of live children (what the operator needs to know about a Job or a Deployment)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from chatmodel_operator.builders.meta import DOMAIN, VERSION_LABEL

# The trainer's termination message, copied onto the Job once it finishes (pods may be gone later).
RESULT_ANNOTATION = f"{DOMAIN}/result"


@dataclass(frozen=True)
class JobObs:
    version: str
    name: str
    state: Literal["Running", "Succeeded", "Failed"]
    result: str | None  # the trainer's termination message, once recorded
    reason: str  # the Job's own failure message, if any


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
            return c
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


def termination_message(pods: list[dict[str, Any]]) -> str | None:
    """The newest terminated container's message among a Job's pods."""
    found: list[tuple[str, str]] = []
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term.get("message"):
                found.append((term.get("finishedAt") or "", term["message"].strip()))
    return max(found)[1] if found else None


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
