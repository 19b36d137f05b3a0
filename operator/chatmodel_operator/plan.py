"""The reconcile decision, as a pure function: (ChatModel, observed children) -> objects to apply,
objects to delete, and the new status. handlers.py only carries it out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from chatmodel_operator.builders import meta, service, serving_objects, training_objects
from chatmodel_operator.builders.meta import Obj
from chatmodel_operator.config import Config
from chatmodel_operator.observe import DeploymentObs, JobObs, TrainResult, parse_result
from chatmodel_operator.spec import ChatModel, ChatModelStatus, Gate, VersionStatus, model_version

VersionState = Literal["Training", "Trained", "Failed", "Rejected", "Serving", "Retired"]


@dataclass(frozen=True)
class Ref:
    api_version: str
    kind: str
    name: str


@dataclass
class Plan:
    apply: list[Obj] = field(default_factory=list)  # created, or patched where they differ
    create_only: list[Obj] = field(default_factory=list)  # Jobs and PVCs: created once, never patched
    delete: list[Ref] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    phase: str = "Pending"
    message: str = ""


def gate_failure(gate: Gate | None, result: TrainResult) -> str | None:
    """Why a trained version may not serve, or None."""
    if gate is None:
        return None
    loss, before = result.eval_loss, result.eval_loss_before
    if gate.max_eval_loss is not None and (loss is None or loss > gate.max_eval_loss):
        return f"eval loss {loss} is above the gate's maxEvalLoss {gate.max_eval_loss}"
    if gate.require_improvement and (loss is None or before is None or loss >= before):
        return f"eval loss {loss} does not improve on the base model's {before}"
    return None


def _target_state(cm: ChatModel, job: JobObs | None, result: TrainResult) -> tuple[VersionState, str]:
    if cm.spec.fine_tune is None:
        return "Trained", ""
    if job is None or job.state == "Running":
        return "Training", ""
    if job.state == "Failed":
        return "Failed", result.message or job.reason or "the training Job failed"
    rejected = gate_failure(cm.spec.rollout.gate, result)
    return ("Rejected", rejected) if rejected else ("Trained", "")


def _serving_refs(name: str) -> list[Ref]:
    return [
        Ref("apps/v1", "Deployment", name),
        Ref("autoscaling/v2", "HorizontalPodAutoscaler", name),
        Ref("policy/v1", "PodDisruptionBudget", name),
    ]


def _phase(
    cm: ChatModel, state: VersionState, job: JobObs | None, dep: DeploymentObs | None, active: str | None,
    prev: ChatModelStatus,
) -> tuple[str, str]:  # fmt: skip
    target = model_version(cm.spec)
    if state in ("Failed", "Rejected"):
        return ("Degraded" if active else "Failed"), ""
    if state == "Training":
        return (
            ("FineTuning", f"training version {target}") if job else ("Pending", "starting the training Job")
        )
    want = max(cm.spec.serving.replicas.min, 1)
    if dep is None:
        return ("Deploying" if cm.spec.fine_tune else "Pending"), f"creating the Deployment of {target}"
    if dep.ready_replicas >= want:
        return "Ready", f"version {target} serves with {dep.ready_replicas} ready replicas"
    if prev.phase in ("Ready", "Degraded") and prev.active_version == target and dep.ready_replicas < want:
        return "Degraded", f"{dep.ready_replicas} of {want} replicas ready"
    return "Deploying", f"{dep.ready_replicas} of {want} replicas ready"


def _versions(
    cm: ChatModel, prev: ChatModelStatus, target: VersionStatus, active: str | None, now: str
) -> list[dict[str, Any]]:
    """Target first, then earlier versions (Serving or Retired), trimmed to the history limit."""
    out = [target]
    for v in prev.versions:
        if v.name == target.name:
            continue
        state: VersionState = (
            "Serving" if v.name == active else ("Retired" if v.state == "Serving" else v.state)
        )
        out.append(v.model_copy(update={"state": state}))
    if target.created_at is None:
        out[0] = target.model_copy(update={"created_at": now})
    keep = out[: cm.spec.rollout.history_limit]
    if active and all(v.name != active for v in keep):
        keep += [v for v in out if v.name == active]
    return [v.model_dump(by_alias=True, exclude_none=True) for v in keep]


def _condition(
    kind: str, ok: bool | None, reason: str, message: str, prev: ChatModelStatus, now: str, gen: int | None
):
    status = "Unknown" if ok is None else ("True" if ok else "False")
    since = next(
        (c.last_transition_time for c in prev.conditions if c.type == kind and c.status == status), now
    )
    out: dict[str, Any] = {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }
    if gen is not None:
        out["observedGeneration"] = gen
    return out


def plan(
    cm: ChatModel,
    jobs: dict[str, JobObs],
    deployments: dict[str, DeploymentObs],
    config: Config,
    now: str,
    generation: int | None = None,
) -> Plan:
    prev = cm.status or ChatModelStatus()
    target = model_version(cm.spec)
    job = jobs.get(target)
    result = parse_result(job.result) if job else TrainResult()
    state, why = _target_state(cm, job, result)
    servable = state == "Trained"
    dep = deployments.get(target) if servable else None

    # Traffic goes to the target once it has a ready pod; until then the previous version keeps serving.
    if dep is not None and dep.ready_replicas > 0:
        active: str | None = target
    elif prev.active_version in deployments and prev.active_version != target:
        active = prev.active_version
    else:
        active = None

    out = Plan()
    if cm.spec.fine_tune is not None:
        pvc, *workload = training_objects(cm, target, config)
        out.create_only.append(pvc)
        if job is None:
            out.create_only += workload
    if servable:
        out.apply += serving_objects(cm, target, config)
        # An HPA or PDB the spec no longer wants can only exist beside an existing Deployment, and only goes
        # away after a spec change: checking just then saves two requests per ChatModel and reconcile.
        if dep is not None and (generation is None or generation != prev.observed_generation):
            kinds = {o["kind"] for o in out.apply}
            out.delete += [r for r in _serving_refs(dep.name) if r.kind not in kinds]
    out.apply.append(service(cm, active or target, config))
    keep = {target, active} if servable else {active}
    for version, obs in deployments.items():
        if version not in keep:
            out.delete += _serving_refs(obs.name)

    phase, message = _phase(cm, state, job, dep, active, prev)
    message = why or message
    prior = next((v for v in prev.versions if v.name == target), None)
    target_status = VersionStatus(
        name=target,
        base_model=cm.spec.base_model.source,
        state="Serving" if active == target else state,
        eval_loss=result.eval_loss,
        eval_loss_before=result.eval_loss_before,
        message=why or None,
        created_at=prior.created_at if prior else None,
    )
    versions = _versions(cm, prev, target_status, active, now)
    kept = {v["name"] for v in versions}
    for v, j in jobs.items():
        if v not in kept:  # the Job and, if it spanned nodes, its rendezvous Service (same name)
            out.delete += [Ref("batch/v1", "Job", j.name), Ref("v1", "Service", j.name)]

    serving = deployments.get(active) if active else None
    want = max(cm.spec.serving.replicas.min, 1)
    ft = cm.spec.fine_tune

    def cond(kind: str, ok: bool | None, reason: str, msg: str = message) -> dict[str, Any]:
        return _condition(kind, ok, reason, msg, prev, now, generation)

    conditions = [
        cond("Ready", active is not None, "Serving" if active else phase),
        cond("Available", dep is not None and dep.ready_replicas >= want, phase),
        cond("Progressing", phase in ("Pending", "FineTuning", "Deploying"), phase),
    ]
    if ft is not None:
        trained = {"Training": None, "Failed": False, "Rejected": False}.get(state, True)
        reason = {"Training": "Training", "Failed": "TrainingFailed", "Rejected": "GateRejected"}.get(
            state, "Trained"
        )
        conditions.insert(1, cond("FineTuned", trained, reason, why))
    endpoint = f"http://{meta.service_name(cm)}.{meta.namespace(cm)}.svc:{config.service_port}/v1"
    selector = meta.selector(cm, "serving", active or target)
    out.status = {
        "phase": phase,
        "message": message,
        "observedGeneration": generation,
        "activeVersion": active,
        "targetVersion": target,
        "versions": versions,
        "endpoint": endpoint if active else None,
        "replicas": serving.replicas if serving else 0,
        "readyReplicas": serving.ready_replicas if serving else 0,
        "selector": ",".join(f"{k}={v}" for k, v in selector.items()),
        "conditions": conditions,
    }
    out.phase, out.message = phase, message
    return out
