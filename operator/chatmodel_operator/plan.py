"""The reconcile decision, as a pure function: (ChatModel, observed children) -> objects to apply,
objects to delete, and the new status. handlers.py only carries it out; rollout.py decides traffic."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from chatmodel_operator import rollout
from chatmodel_operator.builders import gateway_objects, meta, service, serving_objects, training_objects
from chatmodel_operator.builders.adapters import (
    SHARED,
    adapter_name,
    adapter_table,
    shares_adapters,
    table_configmap,
)
from chatmodel_operator.builders.meta import Obj
from chatmodel_operator.builders.model_cache import cache_pvc, cached_source, download_job
from chatmodel_operator.builders.network import network_policy
from chatmodel_operator.builders.serving import serves_https, uses_hpa
from chatmodel_operator.builders.storage import prune_job
from chatmodel_operator.config import Config
from chatmodel_operator.observe import (
    AdapterPods,
    DeploymentObs,
    JobObs,
    PodTrouble,
    TrainResult,
    parse_result,
)
from chatmodel_operator.refs import Ref, serving_refs
from chatmodel_operator.rollout import Decision, LiveFigures
from chatmodel_operator.spec import (
    SERVABLE,
    ChatModel,
    ChatModelStatus,
    DownloadStatus,
    Gate,
    ModelSource,
    VersionState,
    VersionStatus,
    model_version,
)


@dataclass
class Plan:
    apply: list[Obj] = field(default_factory=list)  # created, or patched where they differ
    create_only: list[Obj] = field(default_factory=list)  # Jobs and PVCs: created once, never patched
    delete: list[Ref] = field(default_factory=list)
    scale_to_zero: list[str] = field(
        default_factory=list
    )  # Deployments of retired versions kept for rollback
    status: dict[str, Any] = field(default_factory=dict)
    phase: str = "Pending"
    message: str = ""
    event: tuple[str, str, str] | None = None  # (type, reason, message) of a rollout decision


def gate_failure(gate: Gate | None, result: TrainResult, serving_loss: float | None = None) -> str | None:
    """Why a trained version may not serve, or None."""
    return None if gate is None else gate.refusal(result.eval_loss, result.eval_loss_before, serving_loss)


PROMETHEUS_SETTING = "the operator's Prometheus URL (Helm value prometheusUrl, env CHATMODEL_PROMETHEUS_URL)"


def missing_prometheus(cm: ChatModel, config: Config) -> str | None:
    """What in the spec reads Prometheus when the operator was given none (else None): said, not guessed."""
    if config.prometheus_url:
        return None
    sv, ro = cm.spec.serving, cm.spec.rollout
    if uses_hpa(sv) and sv.autoscaling.engine == "KEDA":
        return f"spec.serving.autoscaling.engine KEDA queries Prometheus, but {PROMETHEUS_SETTING} is not set"
    if ro.strategy == "Canary" and ro.live_gate is not None:
        return f"spec.rollout.liveGate reads Prometheus, but {PROMETHEUS_SETTING} is not set"
    return None


def _download_state(download: DownloadStatus | None) -> tuple[VersionState, str] | None:
    """A remote base model's download holds its version back until it is in the cache."""
    if download is None or download.state == "Succeeded":
        return None
    if download.state == "Failed":
        said = download.message or "failed"
        if said.startswith(download.requested.split("@")[0]):  # the downloader names its source itself
            return "Failed", f"downloading {said}"
        return "Failed", f"downloading {download.requested}: {said}"
    return "Downloading", ""


def describe_download(d: DownloadStatus) -> str:
    done = ""
    if d.bytes_total:
        done = f": {(d.bytes_done or 0) / 1e6:,.1f} of {d.bytes_total / 1e6:,.1f} MB"
        if d.files_total:
            done += f", {d.files_done or 0} of {d.files_total} files"
    return f"downloading {d.source} into the model cache{done}"


def _target_state(
    cm: ChatModel, job: JobObs | None, result: TrainResult, serving_loss: float | None
) -> tuple[VersionState, str]:
    if cm.spec.fine_tune is None:
        return "Trained", ""
    if job is None or job.state == "Running":
        return "Training", ""
    if job.state == "Failed":
        return "Failed", result.message or job.reason or "the training Job failed"
    rejected = gate_failure(cm.spec.rollout.gate, result, serving_loss)
    return ("Rejected", rejected) if rejected else ("Trained", "")


def _pinned_state(pin: str, record: VersionStatus | None) -> tuple[VersionState, str]:
    if record is None or record.state not in SERVABLE:
        return "Failed", f"spec.rollout.pinVersion {pin} is not a servable version in status.versions"
    return "Trained", ""


def _source_of(cm: ChatModel, record: VersionStatus | None, download: DownloadStatus | None) -> ChatModel:
    """The ChatModel as its pods see it: a pinned version's own base model (tuned weights are on the PVC),
    and a downloaded base model as its folder on the model cache PVC."""
    if download is not None and download.state == "Succeeded" and download.path:
        base = ModelSource(source=cached_source(download.path))
    elif record is not None:
        base = ModelSource(source=record.base_model)
    else:
        return cm
    spec = cm.spec.model_copy(update={"base_model": base})
    return cm.model_copy(update={"spec": spec})


def _phase(
    cm: ChatModel, target: str, state: VersionState, job: JobObs | None, dep: DeploymentObs | None,
    d: Decision, prev: ChatModelStatus, download: DownloadStatus | None,
) -> tuple[str, str]:  # fmt: skip
    if state in ("Failed", "Rejected", "RolledBack"):
        return ("Degraded" if d.active else "Failed"), ""
    if state == "Downloading" and download is not None:
        return "Pending", describe_download(download)
    if state == "Training":
        return (
            ("FineTuning", f"training version {target}") if job else ("Pending", "starting the training Job")
        )
    if state == "Canary":
        return "Ready", d.message
    want = cm.spec.serving.replicas.min
    if dep is None:
        return ("Deploying" if cm.spec.fine_tune else "Pending"), f"creating the Deployment of {target}"
    if dep.ready_replicas >= want and d.active == target:
        return "Ready", f"version {target} serves with {dep.ready_replicas} ready replicas"
    if prev.phase in ("Ready", "Degraded") and prev.active_version == target and dep.ready_replicas < want:
        return "Degraded", f"{dep.ready_replicas} of {want} replicas ready"
    return "Deploying", f"{dep.ready_replicas} of {max(want, 1)} replicas ready"


def _versions(
    cm: ChatModel, prev: ChatModelStatus, target: VersionStatus, d: Decision, now: str
) -> list[VersionStatus]:
    """Target first, then earlier versions, trimmed to the history limit (the serving ones always kept)."""
    out = [target if target.created_at else target.model_copy(update={"created_at": now})]
    for v in prev.versions:
        if v.name == target.name:
            continue
        state: VersionState = v.state
        if v.name == d.active:
            state = "Serving"
        elif v.state in ("Serving", "Canary"):
            state = "Retired"
        out.append(v.model_copy(update={"state": state}))
    keep = out[: cm.spec.rollout.history_limit]
    keep += [v for v in out[len(keep) :] if v.name in (d.active, d.canary)]
    return keep


def _condition(
    kind: str, ok: bool | None, reason: str, message: str, prev: ChatModelStatus, now: str, gen: int | None
) -> dict[str, Any]:
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


def _with_rollout(v: VersionStatus, target: str, d: Decision, why: str) -> VersionStatus:
    """The target's record with this reconcile's canary share, live figures and message."""
    update: dict[str, Any] = {"message": why or (d.message if d.state in ("RolledBack", "Canary") else None)}
    if d.started_at:
        update["canary_started_at"] = d.started_at
    if d.canary:
        update["traffic_percent"] = d.percent
    elif d.active == target:
        update["traffic_percent"] = 100
    elif d.state != "RolledBack":
        update["traffic_percent"] = None
    if d.figures:
        f = d.figures
        update.update(requests=f.requests, error_rate=f.error_rate, p95_latency_seconds=f.p95_latency_seconds)
    return v.model_copy(update=update)


def _retire(
    out: Plan,
    deployments: dict[str, DeploymentObs],
    versions: list[VersionStatus],
    live: set[str | None],
) -> None:
    """Versions without traffic: scaled to zero while in the history (a fast pinVersion), else deleted
    (a rolled-back version too: it never comes back under the same digest)."""
    keep = {v.name for v in versions if v.state != "RolledBack"}
    for version, obs in deployments.items():
        if version in live:
            continue
        if version in keep:
            if obs.desired_replicas != 0:
                out.scale_to_zero.append(obs.name)
                out.delete += [r for r in serving_refs(obs.name) if r.kind != "Deployment"]
        else:
            out.delete += serving_refs(obs.name)


# Rollout decisions worth an Event (the others are steps of these).
EVENT_REASONS = {"Canary", "Promoting", "RolledOut", "Pinned", "GateRejected", "LiveGateFailed"}
WARNING_REASONS = {"GateRejected", "LiveGateFailed"}


def _rollout_condition(
    d: Decision, why: str, prev: ChatModelStatus
) -> tuple[tuple[bool | None, str, str], tuple[str, str, str] | None]:
    """The RolledOut condition's (status, reason, message), and an Event when its reason changes."""
    ok = {"RolledOut": True, "Pinned": True, "LiveGateFailed": False}.get(d.reason)
    if d.state == "Rejected":
        ok, reason, message = False, "GateRejected", why
    elif d.state == "Failed":
        reason, message = "NotServable", why
    elif d.state == "Training":
        reason, message = "Training", why
    else:
        reason, message = d.reason, d.message or why
    before = next((c.reason for c in prev.conditions if c.type == "RolledOut"), None)
    # The first version of a ChatModel replaces nothing: its Ready Event says it all.
    first = reason == "RolledOut" and all(v.name == d.active for v in prev.versions)
    event = None
    if reason != before and reason in EVENT_REASONS and not first:
        event = ("Warning" if reason in WARNING_REASONS else "Normal", reason, message)
    return (ok, reason, message), event


def _with_unrecorded(
    cm: ChatModel,
    prev: ChatModelStatus,
    jobs: dict[str, JobObs],
    deployments: dict[str, DeploymentObs],
    target: str,
) -> ChatModelStatus:
    """Versions whose Job or Deployment exists but that the status does not list (the operator stopped
    after creating them and before its status write landed) join the history as its oldest entries, so
    that only the history limit, never a lost status write, retires a version and prunes its artifacts."""
    known = {v.name for v in prev.versions} | {target}
    lost = [
        VersionStatus(
            name=v,
            base_model=cm.spec.base_model.source,
            state="Retired",
            fine_tuned=v in jobs,
            message="recovered from its Job or Deployment: the status that listed it was lost",
        )
        for v in sorted({*jobs, *deployments} - known)
    ]
    return prev.model_copy(update={"versions": [*prev.versions, *lost]}) if lost else prev


def _stuck_pod(troubles: Iterable[PodTrouble], target: str, state: str, phase: str) -> PodTrouble | None:
    """The stuck pod holding the target version back: a training pod while it trains, else a serving pod."""
    if phase not in ("Pending", "FineTuning", "Deploying", "Degraded"):
        return None
    component = "training" if state == "Training" else "serving"
    mine = [t for t in troubles if t.version == target and t.component == component]
    return min(mine, key=lambda t: t.pod) if mine else None


@dataclass(frozen=True)
class Target:
    """The version this reconcile works toward, and what is known of it."""

    name: str
    pin: str | None  # spec.rollout.pinVersion, when it names the target
    record: VersionStatus | None  # its entry in status.versions, if any
    job: JobObs | None  # its training Job (none for a pinned version)
    result: TrainResult
    state: VersionState
    why: str  # why it failed or was rejected
    fine_tuned: bool
    dep: DeploymentObs | None
    want: int  # spec.serving.replicas.min
    download: DownloadStatus | None  # its base model's download, when remote


def _target(
    cm: ChatModel,
    prev: ChatModelStatus,
    jobs: dict[str, JobObs],
    deployments: dict[str, DeploymentObs],
    config: Config,
    stable_loss: float | None,
    download: DownloadStatus | None,
) -> Target:
    pin = cm.spec.rollout.pin_version
    name = pin or target_version(cm, download)
    record = {v.name: v for v in prev.versions}.get(name)
    job = None if pin else jobs.get(name)
    result = parse_result(job.result) if job else TrainResult()
    if pin:
        state, why = _pinned_state(pin, record)
        fine_tuned = bool(record and record.fine_tuned)
    else:
        state, why = _download_state(download) or _target_state(cm, job, result, stable_loss)
        fine_tuned = cm.spec.fine_tune is not None
    missing = missing_prometheus(cm, config)
    if missing and state != "Failed":  # re-checked every reconcile: setting the URL lets it go on
        state, why = "Failed", missing
    want = cm.spec.serving.replicas.min
    if pin and state != "Failed":
        state, why = _download_state(download) or (state, why)
    return Target(
        name, pin, record, job, result, state, why, fine_tuned, deployments.get(name), want, download
    )


def target_version(cm: ChatModel, download: DownloadStatus | None) -> str:
    """The version the spec asks for; an hf:// base model's resolved commit is part of it."""
    if download is not None and download.revision and download.requested.startswith("hf://"):
        return model_version(cm.spec, {download.requested: download.revision})
    return model_version(cm.spec)


def _download(out: Plan, cm: ChatModel, t: Target, config: Config) -> None:
    """The namespace's model cache and the download Job, until the Job exists."""
    d = t.download
    if d is not None and d.state == "Pending":
        ns = meta.namespace(cm)
        out.create_only += [cache_pvc(ns, config), download_job(ns, d.source, cm.spec.base_model, config)]


def _train(out: Plan, cm: ChatModel, t: Target, config: Config) -> None:
    """The artifacts PVC, and the training Job until it exists (once the base model is there)."""
    if cm.spec.fine_tune is not None and not t.pin and t.state != "Downloading":
        pvc, *workload = training_objects(_source_of(cm, None, t.download), t.name, config)
        out.create_only.append(pvc)
        if t.job is None:
            out.create_only += workload


def _serve(
    out: Plan, cm: ChatModel, t: Target, d: Decision, config: Config, generation: int | None,
    prev: ChatModelStatus,
) -> None:  # fmt: skip
    """The target's Deployment and its companions (HPA or ScaledObject, PDB, InferencePool), once the
    rollout deploys it; companions the spec no longer wants are deleted."""
    if shares_adapters(cm):
        _serve_shared(out, cm, t, d, config)
        return
    if d.target_replicas is None:
        return
    canary = d.target_replicas != max(t.want, 1)
    restore = t.dep is not None and t.dep.desired_replicas == 0
    source = _source_of(cm, t.record if t.pin else None, t.download)
    objs = serving_objects(
        source,
        t.name,
        config,
        t.fine_tuned,
        canary_replicas=d.target_replicas if canary else None,
        restore=restore,
    )
    out.apply += objs
    # An HPA, ScaledObject or PDB the spec no longer wants can only exist beside an existing Deployment,
    # and only goes away after a spec change or during and at the end of a canary: check just then.
    # A version not yet in the status, or one becoming Serving for the first time, was never rendered
    # otherwise: nothing to remove (sparing each new ChatModel three DELETEs answered 404).
    if (
        t.dep is not None
        and t.record is not None
        and (generation != prev.observed_generation or canary or t.record.state == "Canary")
    ):
        kinds = {o["kind"] for o in objs}
        out.delete += [
            r for r in serving_refs(t.dep.name) if r.kind not in kinds and r.kind != "InferencePool"
        ]


def live_versions(t: Target, d: Decision) -> list[str]:
    """The versions whose adapter a shared Deployment loads: serving, in canary, or being deployed."""
    deploying = t.name if d.target_replicas is not None else None
    return [v for v in dict.fromkeys([d.active, d.canary, deploying]) if v is not None]


def _serve_shared(out: Plan, cm: ChatModel, t: Target, d: Decision, config: Config) -> None:
    """serving.lora.shared: the adapter table (ConfigMap) first, then the base Deployment (and its HPA, PDB):
    the same objects for every version, so a rollout only changes the table."""
    # The name goes to the serving version (and the canary its share); with nothing serving yet, to the
    # version being deployed, so that it answers as soon as a pod has it.
    first = live_versions(t, d)[:1]
    shares = {d.active: 100 - d.percent, d.canary: d.percent} if d.active and d.canary else {}
    if not shares and first:
        shares = {first[0]: 100}
    out.apply.append(table_configmap(cm, adapter_table(cm, live_versions(t, d), shares)))
    source = _source_of(cm, None, t.download)
    out.apply += serving_objects(source, SHARED, config, fine_tuned=False)


def _adapter_views(
    cm: ChatModel, base: DeploymentObs | None, pods: AdapterPods | None, versions: Iterable[str]
) -> dict[str, DeploymentObs]:
    """serving.lora.shared: each version as the rollout sees a Deployment of its own, ready once every
    ready pod of the base Deployment has its adapter (a pod without it would refuse the alias' share)."""
    if base is None or pods is None:
        return {}
    out = {}
    for v in versions:
        ready = pods.ready if pods.on_every_pod(adapter_name(cm, v)) else 0
        out[v] = DeploymentObs(v, base.name, pods.ready, ready, base.desired_replicas)
    return out


def _route(
    out: Plan, cm: ChatModel, t: Target, d: Decision, config: Config, generation: int | None,
    prev: ChatModelStatus,
) -> None:  # fmt: skip
    """The Service (and Gateway routes) in front of the serving version(s), and the NetworkPolicy."""
    version = None if d.canary and not cm.spec.serving.gateway else (d.active or t.name)
    out.apply.append(service(cm, SHARED if shares_adapters(cm) else version, config))
    if cm.spec.serving.gateway is not None:
        out.apply += gateway_objects(cm, d.active or t.name, d.canary, d.percent, config)
    policy = network_policy(cm, config)
    if policy is not None:
        out.apply.append(policy)
    elif prev.observed_generation is not None and generation != prev.observed_generation:
        # only a spec change can remove it
        out.delete.append(Ref("networking.k8s.io/v1", "NetworkPolicy", meta.service_name(cm)))


def _history(
    out: Plan, cm: ChatModel, prev: ChatModelStatus, t: Target, d: Decision, jobs: dict[str, JobObs],
    deployments: dict[str, DeploymentObs], config: Config, now: str,
) -> list[VersionStatus]:  # fmt: skip
    """status.versions after this reconcile; versions out of it are retired and their artifacts pruned."""
    if t.pin and t.record is not None:
        target_status = t.record.model_copy(update={"state": d.state})
    else:
        fresh = VersionStatus(
            name=t.name,
            base_model=t.download.source if t.download else cm.spec.base_model.source,
            state=d.state,
            fine_tuned=t.fine_tuned,
            eval_loss=t.result.eval_loss,
            eval_loss_before=t.result.eval_loss_before,
        )
        # Keep what earlier reconciles recorded (createdAt, canary start, live figures).
        target_status = (
            t.record.model_copy(update=fresh.model_dump(exclude_unset=True)) if t.record else fresh
        )
    target_status = _with_rollout(target_status, t.name, d, t.why)
    versions = _versions(cm, prev, target_status, d, now)
    kept = {v.name for v in versions}
    _retire(out, deployments, versions, {d.active, d.canary, t.name if d.target_replicas else None})
    for v, j in jobs.items():
        if v not in kept:  # the Job and, if it spanned nodes, its rendezvous Service (same name)
            out.delete += [Ref(j.api_version, j.kind, j.name), Ref("v1", "Service", j.name)]
            out.create_only.append(prune_job(cm, v, config))  # created before the deletes: never lost
    return versions


def _status(
    out: Plan, cm: ChatModel, prev: ChatModelStatus, t: Target, d: Decision, versions: list[VersionStatus],
    deployments: dict[str, DeploymentObs], troubles: Iterable[PodTrouble], config: Config, now: str,
    generation: int | None, pods: AdapterPods | None,
) -> None:  # fmt: skip
    """The phase, conditions and status to write, and the rollout Event, if any."""
    phase, message = _phase(cm, t.name, d.state, t.job, t.dep, d, prev, t.download)
    message = t.why or message
    shared = shares_adapters(cm)
    if shared:
        versions, loading = _with_adapters(cm, versions, live_versions(t, d), pods or AdapterPods(0, {}, {}))
        message = loading.get(t.name, message) if phase in ("Deploying", "Ready") else message
    stuck = _stuck_pod(troubles, t.name, d.state, phase)
    if stuck is not None:  # say why the version does not progress, not only that it does not
        message = stuck.describe()
    serving = deployments.get(SHARED) if shared else deployments.get(d.active) if d.active else None

    def cond(kind: str, ok: bool | None, reason: str, msg: str = message) -> dict[str, Any]:
        return _condition(kind, ok, reason, msg, prev, now, generation)

    available = t.dep is not None and t.dep.ready_replicas >= t.want and d.active == t.name
    conditions = [
        cond("Ready", d.active is not None, "Serving" if d.active else phase),
        cond("Available", available, phase),
        cond(
            "Progressing",
            phase in ("Pending", "FineTuning", "Deploying") or d.canary is not None,
            stuck.reason if stuck else phase,
        ),
    ]
    if stuck is not None:
        conditions.append(cond("PodsHealthy", False, stuck.reason))
    if t.download is not None:
        ok = {"Succeeded": True, "Failed": False}.get(t.download.state)
        reason = {"Succeeded": "Downloaded", "Failed": "DownloadFailed"}.get(t.download.state, "Downloading")
        conditions.insert(1, cond("Downloaded", ok, reason, t.download.message or ""))
    if cm.spec.fine_tune is not None and not t.pin:
        trained = {"Training": None, "Failed": False, "Rejected": False}.get(t.state, True)
        reason = {"Training": "Training", "Failed": "TrainingFailed", "Rejected": "GateRejected"}.get(
            t.state, "Trained"
        )
        conditions.insert(1, cond("FineTuned", trained, reason, t.why))
    rolled_out, out.event = _rollout_condition(d, t.why or message, prev)
    conditions.append(cond("RolledOut", *rolled_out))
    scheme = "https" if serves_https(cm) else "http"
    endpoint = f"{scheme}://{meta.service_name(cm)}.{meta.namespace(cm)}.svc:{config.service_port}/v1"
    selector = meta.selector(cm, "serving", SHARED if shared else d.active or t.name)
    out.status = {
        "phase": phase,
        "message": message,
        "observedGeneration": generation,
        "activeVersion": d.active,
        "targetVersion": t.name,
        "versions": [v.model_dump(by_alias=True, exclude_none=True) for v in versions],
        "endpoint": endpoint if d.active else None,
        "replicas": serving.replicas if serving else 0,
        "readyReplicas": serving.ready_replicas if serving else 0,
        "selector": ",".join(f"{k}={v}" for k, v in selector.items()),
        "conditions": conditions,
    }
    if t.download is not None:
        out.status["download"] = t.download.model_dump(by_alias=True, exclude_none=True)
    out.phase, out.message = phase, message


def _with_adapters(
    cm: ChatModel, versions: list[VersionStatus], live: list[str], pods: AdapterPods
) -> tuple[list[VersionStatus], dict[str, str]]:
    """Each loaded version's adapterLoaded (ready pods with it / ready pods), and for those not on every pod
    yet what holds them (a pod's refusal, or the pods still loading)."""
    out, waiting = [], {}
    for v in versions:
        name = adapter_name(cm, v.name)
        update: dict[str, Any] = {"adapter_loaded": pods.share(name) if v.name in live else None}
        if v.name in live and name in pods.errors:
            update["message"] = f"its adapter {name} was refused: {pods.errors[name]}"
            waiting[v.name] = update["message"]
        elif v.name in live and not pods.on_every_pod(name):
            waiting[v.name] = f"loading the adapter of version {v.name}: on {pods.share(name)} ready pods"
        out.append(v.model_copy(update=update))
    return out, waiting


def plan(
    cm: ChatModel,
    jobs: dict[str, JobObs],
    deployments: dict[str, DeploymentObs],
    config: Config,
    now: str,
    generation: int | None = None,
    live: LiveFigures | None = None,
    troubles: Iterable[PodTrouble] = (),
    download: DownloadStatus | None = None,
    pods: AdapterPods | None = None,
) -> Plan:
    """What to create, apply, delete and scale down for one ChatModel, and the status to write.
    `download`: the remote base model's download (downloads.py), None for other sources; `pods`: what the
    base Deployment's ready pods serve (serving.lora.shared), None otherwise."""
    target = cm.spec.rollout.pin_version or target_version(cm, download)
    own = {v: o for v, o in deployments.items() if v != SHARED}  # one Deployment per version
    prev = _with_unrecorded(cm, cm.status or ChatModelStatus(), jobs, own, target)
    records = {v.name: v for v in prev.versions}
    # What the rollout reads: each version's Deployment, or with shared adapters its adapter's presence.
    views = own
    if shares_adapters(cm):
        views = _adapter_views(cm, deployments.get(SHARED), pods, [*records, target])
    # The version serving now (a rollout's fallback), when it is not the target.
    stable = prev.active_version if prev.active_version in views and prev.active_version != target else None
    stable_loss = records[stable].eval_loss if stable in records else None
    t = _target(cm, prev, jobs, views, config, stable_loss, download)
    d = rollout.decide(cm, t.name, t.state, t.record, stable, t.dep, max(t.want, 1), now, live)
    out = Plan()
    _download(out, cm, t, config)
    _train(out, cm, t, config)
    _serve(out, cm, t, d, config, generation, prev)
    _route(out, cm, t, d, config, generation, prev)
    versions = _history(out, cm, prev, t, d, jobs, own, config, now)
    _status(out, cm, prev, t, d, versions, deployments, troubles, config, now, generation, pods)
    return out
