"""Which version gets which share of traffic: Replace, Canary with a live gate, and pinning. Pure."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from chatmodel_operator.builders.adapters import shares_adapters
from chatmodel_operator.observe import DeploymentObs
from chatmodel_operator.spec import ChatModel, ChatModelStatus, LiveGate, VersionState, VersionStatus


@dataclass(frozen=True)
class LiveFigures:
    """What Prometheus says about a canary's pods over the live gate's window."""

    requests: float
    error_rate: float | None
    p95_latency_seconds: float | None


@dataclass(frozen=True)
class Decision:
    active: str | None  # the version behind the Service (all traffic, or the stable share of a canary)
    canary: str | None  # the version sharing traffic with `active`, if any
    percent: int  # the canary's share of traffic
    target_replicas: int | None  # None: do not deploy the target; else its replica count
    state: VersionState  # the target's state
    reason: str  # the RolledOut condition's reason
    message: str
    started_at: str | None = None  # when the canary first got traffic
    figures: LiveFigures | None = None


def _seconds(since: str, now: str) -> float:
    def parse(t: str) -> datetime.datetime:
        return datetime.datetime.fromisoformat(t.replace("Z", "+00:00"))

    return (parse(now) - parse(since)).total_seconds()


def canary_replicas(stable: int, percent: int) -> int:
    """Replicas that give the canary about `percent` of the pods beside `stable` ones (at least one)."""
    return max(1, round(stable * percent / (100 - percent)))


def live_gate_failure(gate: LiveGate, f: LiveFigures) -> str | None:
    if f.error_rate is not None and f.error_rate > gate.max_error_rate:
        return f"error rate {f.error_rate:.4f} is above liveGate.maxErrorRate {gate.max_error_rate}"
    limit = gate.max_p95_latency_seconds
    if limit is not None and f.p95_latency_seconds is not None and f.p95_latency_seconds > limit:
        return f"p95 latency {f.p95_latency_seconds:.3f}s is above liveGate.maxP95LatencySeconds {limit}"
    return None


def _figures(f: LiveFigures) -> str:
    p95 = "n/a" if f.p95_latency_seconds is None else f"{f.p95_latency_seconds:.3f}s"
    rate = "n/a" if f.error_rate is None else f"{f.error_rate:.4f}"
    return f"{f.requests:.0f} requests, error rate {rate}, p95 {p95}"


def needs_live_figures(cm: ChatModel, now: str) -> str | None:
    """The canary version whose live gate is due (the reconciler then asks Prometheus), or None."""
    ro, st = cm.spec.rollout, cm.status or ChatModelStatus()
    if ro.live_gate is None:
        return None
    for v in st.versions:
        if (
            v.state == "Canary"
            and v.canary_started_at
            and _seconds(v.canary_started_at, now) >= ro.analysis_seconds
        ):
            return v.name
    return None


def decide(
    cm: ChatModel,
    target: str,
    state: VersionState,
    record: VersionStatus | None,
    stable: str | None,
    dep: DeploymentObs | None,
    want: int,
    now: str,
    live: LiveFigures | None,
) -> Decision:
    """Traffic for one reconcile. `stable` is the version serving now (None when it is the target or none)."""
    ro = cm.spec.rollout
    pinned = ro.pin_version is not None
    if state != "Trained":
        return Decision(stable, None, 0, None, state, "Gated" if stable else state, "")
    if record is not None and record.state == "RolledBack" and stable and not pinned:
        return Decision(stable, None, 0, None, "RolledBack", "LiveGateFailed", record.message or "")
    ready = dep.ready_replicas if dep else 0
    if ro.strategy == "Replace" or stable is None or pinned:
        # The new version takes all traffic once it is fully ready (nothing serving: at its first ready pod).
        # With min 0 (KEDA) a serving version keeps its traffic while scaled to zero: KEDA wakes it.
        parked = cm.spec.serving.replicas.min == 0 and dep is not None and stable is None
        if ready >= want or (stable is None and ready > 0) or parked:
            why = f"version {target} is pinned" if pinned else f"version {target} serves all traffic"
            return Decision(target, None, 0, want, "Serving", "Pinned" if pinned else "RolledOut", why)
        return Decision(stable, None, 0, want, "Trained", "Deploying", f"{ready} of {want} replicas ready")
    return _canary(cm, target, record, stable, ready, want, now, live)


def _canary(
    cm: ChatModel,
    target: str,
    record: VersionStatus | None,
    stable: str,
    ready: int,
    want: int,
    now: str,
    live: LiveFigures | None,
) -> Decision:
    ro = cm.spec.rollout
    replicas = canary_replicas(want, ro.canary_percent)
    if ready < replicas:
        return Decision(stable, None, 0, replicas, "Trained", "Deploying", f"starting canary {target}")
    # With a gateway, HTTPRoute weights give the exact share, and so does a shared LoRA Deployment's alias;
    # behind one Service it is the pod ratio.
    exact = cm.spec.serving.gateway is not None or shares_adapters(cm)
    percent = ro.canary_percent if exact else round(100 * replicas / (replicas + want))
    started = (record.canary_started_at if record else None) or now
    due = _seconds(started, now) >= ro.analysis_seconds
    msg = f"canary {target} gets {percent}% of traffic since {started}"
    if not due:
        return Decision(stable, target, percent, replicas, "Canary", "Canary", msg, started)
    gate = ro.live_gate
    if gate is not None:
        if live is None or live.requests < gate.min_requests:
            wait = f"{msg}; waiting for {gate.min_requests} requests in Prometheus for the live gate"
            return Decision(
                stable, target, percent, replicas, "Canary", "WaitingForFigures", wait, started, live
            )
        failure = live_gate_failure(gate, live)
        if failure:
            why = f"rolled back to {stable}: {failure} ({_figures(live)})"
            return Decision(stable, None, 0, None, "RolledBack", "LiveGateFailed", why, started, live)
    # Promote: scale the canary to full size; the Service moves once it is fully ready.
    passed = f"live gate passed ({_figures(live)})" if live and gate else "analysis time passed"
    if ready >= want:
        return Decision(
            target, None, 0, want, "Serving", "RolledOut", f"{passed}; {target} promoted", started, live
        )
    msg = f"{passed}; scaling {target} to {want} replicas"
    return Decision(stable, target, percent, want, "Canary", "Promoting", msg, started, live)
