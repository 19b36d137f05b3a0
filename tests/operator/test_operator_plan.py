"""plan(): the reconcile decision as a pure function of the spec and what is observed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from chatmodel_operator.config import Config
from chatmodel_operator.observe import (
    AdapterPods,
    DeploymentObs,
    JobObs,
    PodTrouble,
    parse_result,
    pod_trouble,
    termination_message,
)
from chatmodel_operator.plan import Plan, plan
from chatmodel_operator.refs import Ref
from chatmodel_operator.spec import ChatModel, model_version

NOW = "2026-01-01T00:00:00Z"
NO_PROM, PROM = Config(), Config(prometheus_url="http://prometheus:9090")
FT = {"dataset": {"source": "pvc://d/train.jsonl"}, "method": "full"}


def cm(spec: dict[str, Any], status: dict[str, Any] | None = None) -> ChatModel:
    return ChatModel.model_validate(
        {"metadata": {"name": "x", "namespace": "ns"}, "spec": spec, "status": status}
    )


def run(
    c: ChatModel,
    jobs: Sequence[JobObs] = (),
    deps: Sequence[DeploymentObs] = (),
    config: Config = NO_PROM,
) -> Plan:
    return plan(c, {j.version: j for j in jobs}, {d.version: d for d in deps}, config, NOW, generation=4)


def done(version: str, result: str, ok: bool = True) -> JobObs:
    return JobObs(version, f"x-{version}-train", "Succeeded" if ok else "Failed", result, "")


def test_gate_rejects_a_worse_version_and_keeps_the_old_one_serving() -> None:
    spec = {"fineTune": FT, "rollout": {"gate": {"maxEvalLoss": 1.0}}}
    v = model_version(cm(spec).spec)
    old = DeploymentObs("old", "x-old", 1, 1)
    p = run(cm(spec, {"activeVersion": "old"}), [done(v, '{"eval_loss": 1.5}')], [old])
    assert p.phase == "Degraded"
    assert "maxEvalLoss" in p.message
    assert not any(o["kind"] == "Deployment" for o in p.apply)  # the rejected version never serves
    service = next(o for o in p.apply if o["kind"] == "Service")
    assert service["spec"]["selector"]["chatmodel.dev/version"] == "old"
    assert p.status["versions"][0]["state"] == "Rejected"
    # Without an older version to fall back on, it is Failed.
    assert run(cm(spec), [done(v, '{"eval_loss": 1.5}')]).phase == "Failed"


def test_require_improvement() -> None:
    spec = {"fineTune": FT, "rollout": {"gate": {"requireImprovement": True}}}
    v = model_version(cm(spec).spec)
    assert run(cm(spec), [done(v, '{"eval_loss": 2.0, "eval_loss_before": 1.9}')]).phase == "Failed"
    assert run(cm(spec), [done(v, '{"eval_loss": 1.0, "eval_loss_before": 1.9}')]).phase == "Deploying"


def test_degraded_when_a_ready_model_loses_replicas() -> None:
    spec = {"serving": {"replicas": {"min": 2, "max": 2}}}
    v = model_version(cm(spec).spec)
    ready = run(cm(spec), deps=[DeploymentObs(v, f"x-{v}", 2, 2)])
    assert ready.phase == "Ready" and ready.status["observedGeneration"] == 4
    later = run(cm(spec, ready.status), deps=[DeploymentObs(v, f"x-{v}", 2, 1)])
    assert later.phase == "Degraded"
    # Conditions keep their transition time while their status holds.
    again = run(cm(spec, later.status), deps=[DeploymentObs(v, f"x-{v}", 2, 1)])
    assert again.status["conditions"] == later.status["conditions"]


def test_hpa_and_pdb_are_removed_when_no_longer_wanted() -> None:
    wide = {"serving": {"replicas": {"min": 2, "max": 4}}}
    v = model_version(cm(wide).spec)
    dep = DeploymentObs(v, f"x-{v}", 2, 2)
    served = plan(cm(wide), {}, {v: dep}, NO_PROM, NOW, generation=4).status
    spec = {"serving": {"replicas": {"min": 1, "max": 1}}}  # the next generation wants neither
    p = plan(cm(spec, served), {}, {v: dep}, NO_PROM, NOW, generation=5)
    assert Ref("autoscaling/v2", "HorizontalPodAutoscaler", f"x-{v}") in p.delete
    assert Ref("policy/v1", "PodDisruptionBudget", f"x-{v}") in p.delete
    assert Ref("apps/v1", "Deployment", f"x-{v}") not in p.delete


def test_a_new_chatmodel_deletes_nothing() -> None:
    """Its first status-writing reconcile has nothing from an earlier spec to remove (no DELETE, no 404)."""
    spec = {"serving": {"replicas": {"min": 1}}}
    v = model_version(cm(spec).spec)
    assert run(cm(spec), deps=[DeploymentObs(v, f"x-{v}", 1, 0)]).delete == []


def test_a_first_rollout_deletes_nothing_and_its_ready_event_says_it_all() -> None:
    """Deploying, then Ready: no DELETE answered 404 on the way, and no RolledOut Event beside Ready's;
    the next version's rollout replaces one, and says so."""
    spec = {"serving": {"replicas": {"min": 1}}}
    v = model_version(cm(spec).spec)
    deploying = run(cm(spec), deps=[DeploymentObs(v, f"x-{v}", 1, 0)])
    ready = run(cm(spec, deploying.status), deps=[DeploymentObs(v, f"x-{v}", 1, 1)])
    assert ready.phase == "Ready", ready.message
    assert deploying.delete == ready.delete == []
    assert deploying.event is None and ready.event is None
    spec2 = {**spec, "baseModel": {"source": "pvc://models/other"}}  # a new version
    v2 = model_version(cm(spec2).spec)
    assert v2 != v
    status = ready.status
    for ready_replicas in (0, 1):  # the new version's pod starting, then ready
        deps = [DeploymentObs(v, f"x-{v}", 1, 1), DeploymentObs(v2, f"x-{v2}", 1, ready_replicas)]
        p = plan(cm(spec2, status), {}, {d.version: d for d in deps}, NO_PROM, NOW, generation=5)
        status = p.status
    assert p.event is not None and p.event[1] == "RolledOut", p.event


def test_history_limit_trims_versions_and_their_jobs() -> None:
    spec = {"fineTune": FT, "rollout": {"historyLimit": 2}}
    v = model_version(cm(spec).spec)
    history = [{"name": n, "baseModel": "b", "state": "Retired"} for n in ("a", "b", "c")]
    jobs = [done(n, "{}") for n in ("a", "b", "c")] + [JobObs(v, f"x-{v}-train", "Running", None, "")]
    p = run(cm(spec, {"versions": history}), jobs)
    assert [x["name"] for x in p.status["versions"]] == [v, "a"]
    assert {r.name for r in p.delete if r.kind == "Job"} == {"x-b-train", "x-c-train"}
    assert p.phase == "FineTuning"


def test_termination_message_and_result_parsing() -> None:
    pods = [
        {"status": {"containerStatuses": [{"state": {"terminated": {"message": "old", "finishedAt": "1"}}}]}},
        {
            "status": {
                "containerStatuses": [{"state": {"terminated": {"message": " new\n", "finishedAt": "2"}}}]
            }
        },
    ]
    assert termination_message(pods) == "new"
    assert termination_message([{}]) is None
    assert parse_result('{"eval_loss": 0.5, "eval_loss_before": 1}').eval_loss_before == 1.0
    assert parse_result("CUDA out of memory").message == "CUDA out of memory"
    assert parse_result('{"error": "bad data"}').message == "bad data"


def test_max_regression_compares_with_the_serving_version() -> None:
    spec = {"fineTune": FT, "rollout": {"gate": {"maxRegression": 0.1}}}
    v = model_version(cm(spec).spec)
    history = {
        "activeVersion": "old",
        "versions": [{"name": "old", "baseModel": "b", "state": "Serving", "evalLoss": 1.0}],
    }
    old = DeploymentObs("old", "x-old", 1, 1)
    worse = run(cm(spec, history), [done(v, '{"eval_loss": 1.2}')], [old])
    assert worse.status["versions"][0]["state"] == "Rejected"
    assert "maxRegression 0.1" in worse.message and "1.0" in worse.message
    close = run(cm(spec, history), [done(v, '{"eval_loss": 1.05}')], [old])
    assert close.status["versions"][0]["state"] == "Trained"


def test_canary_replica_ratio() -> None:
    from chatmodel_operator.rollout import canary_replicas

    assert [canary_replicas(n, 10) for n in (1, 9, 18)] == [1, 1, 2]
    assert canary_replicas(3, 50) == 3


def test_canary_waits_for_figures_and_never_promotes_blind() -> None:
    from chatmodel_operator.rollout import LiveFigures, needs_live_figures

    spec: dict[str, Any] = {
        "serving": {"replicas": {"min": 3, "max": 3}},
        "rollout": {"strategy": "Canary", "canaryPercent": 25, "analysisSeconds": 60, "liveGate": {}},
    }
    v = model_version(cm(spec).spec)
    old = DeploymentObs("old", "x-old", 3, 3)
    new = DeploymentObs(v, f"x-{v}", 1, 1, desired_replicas=1)
    history = {"activeVersion": "old", "versions": [{"name": "old", "baseModel": "b", "state": "Serving"}]}
    started = run(cm(spec, history), deps=[old, new], config=PROM)
    top = started.status["versions"][0]
    assert top["state"] == "Canary" and top["canaryStartedAt"] == NOW and top["trafficPercent"] == 25
    assert next(o for o in started.apply if o["kind"] == "Deployment")["spec"]["replicas"] == 1
    # Not due yet at NOW; due 60 s later, and with no figures it keeps waiting.
    assert needs_live_figures(cm(spec, started.status), NOW) is None
    later = "2026-01-01T00:01:00Z"
    assert needs_live_figures(cm(spec, started.status), later) == v
    waiting = plan(cm(spec, started.status), {}, {"old": old, v: new}, PROM, later, 4)
    assert waiting.status["activeVersion"] == "old"
    assert (
        next(c for c in waiting.status["conditions"] if c["type"] == "RolledOut")["reason"]
        == "WaitingForFigures"
    )
    failing = LiveFigures(requests=100, error_rate=0.0, p95_latency_seconds=99.0)
    spec["rollout"]["liveGate"] = {"maxP95LatencySeconds": 30}
    back = plan(cm(spec, started.status), {}, {"old": old, v: new}, PROM, later, 4, failing)
    assert back.status["versions"][0]["state"] == "RolledBack"
    assert "maxP95LatencySeconds 30" in back.status["conditions"][-1]["message"]
    assert any(r.kind == "Deployment" and r.name == f"x-{v}" for r in back.delete)


def test_prometheus_features_without_a_prometheus_url_fail_naming_the_setting() -> None:
    keda = {"serving": {"replicas": {"min": 0, "max": 2}, "autoscaling": {"engine": "KEDA"}}}
    live = {"rollout": {"strategy": "Canary", "liveGate": {"maxErrorRate": 0.05}}}
    for spec, field in ((keda, "spec.serving.autoscaling.engine KEDA"), (live, "spec.rollout.liveGate")):
        p = run(cm(spec))
        assert p.phase == "Failed" and field in p.message and "prometheusUrl" in p.message, p.message
        assert not any(o["kind"] == "Deployment" for o in p.apply)
        # The same spec goes on once the operator knows where Prometheus is.
        ok = run(cm(spec), config=PROM)
        assert ok.phase != "Failed" and any(o["kind"] == "Deployment" for o in ok.apply)


def test_a_version_the_status_lost_stays_in_the_history() -> None:
    """Found by the chaos test: the operator created v1's Job, stopped before its status write landed, and
    the spec moved on to v2; v1's Job and artifacts must not be pruned as if v1 had left the history."""
    spec = {"fineTune": FT, "rollout": {"historyLimit": 2}}
    v2 = model_version(cm(spec).spec)
    p = run(cm(spec, {"versions": []}), [done("v1", "{}")])
    assert [x["name"] for x in p.status["versions"]] == [v2, "v1"]
    lost = p.status["versions"][1]
    assert lost["state"] == "Retired" and lost["fineTuned"] and "recovered" in lost["message"]
    assert not [r for r in p.delete if r.kind == "Job"]
    assert not [o for o in p.create_only if o["metadata"]["name"].endswith("-prune")]
    # Beyond the limit it goes the normal way: Job deleted, artifacts pruned.
    p = run(cm(spec, {"versions": [{"name": "a", "baseModel": "b", "state": "Retired"}]}), [done("v1", "{}")])
    assert [x["name"] for x in p.status["versions"]] == [v2, "a"]
    assert {r.name for r in p.delete if r.kind == "Job"} == {"x-v1-train"}
    assert [o["metadata"]["name"] for o in p.create_only if o["metadata"]["name"].endswith("-prune")] == [
        "x-v1-prune"
    ]


def pod(labels: dict[str, str], status: dict[str, Any], deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "x-abc-1", "labels": labels}
    if deleting:
        meta["deletionTimestamp"] = NOW
    return {"metadata": meta, "status": status}


def test_pod_trouble_names_what_holds_a_pod_back() -> None:
    labels = {"chatmodel.dev/version": "v1", "app.kubernetes.io/component": "serving"}
    unschedulable = {
        "phase": "Pending",
        "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3"}
        ],
    }
    t = pod_trouble(pod(labels, unschedulable))
    assert t == PodTrouble("v1", "serving", "x-abc-1", "Unschedulable", "0/3")
    pulling = {
        "phase": "Pending",
        "containerStatuses": [{"name": "c", "state": {"waiting": {"reason": "ImagePullBackOff"}}}],
    }
    t = pod_trouble(pod(labels, pulling))
    assert t is not None and t.reason == "ImagePullBackOff"
    # Passing states are not trouble: still creating, running, finished, or on the way out.
    creating = {
        "phase": "Pending",
        "containerStatuses": [{"name": "c", "state": {"waiting": {"reason": "ContainerCreating"}}}],
    }
    for status in (creating, {"phase": "Running"}, {"phase": "Succeeded"}):
        assert pod_trouble(pod(labels, status)) is None
    assert pod_trouble(pod(labels, unschedulable, deleting=True)) is None


def test_a_stuck_pod_of_the_target_version_is_the_status_message() -> None:
    spec: dict[str, Any] = {"serving": {"nodeSelector": {"pool": "gpu"}}}
    v = model_version(cm(spec).spec)
    dep = DeploymentObs(v, f"x-{v}", 1, 0)
    stuck = PodTrouble(v, "serving", "x-1", "Unschedulable", "0/3 nodes are available")
    other = PodTrouble("older", "serving", "x-2", "CrashLoopBackOff", "")
    p = plan(cm(spec), {}, {v: dep}, NO_PROM, NOW, 4, None, [stuck, other])
    assert p.status["message"] == "serving pod x-1: Unschedulable: 0/3 nodes are available"
    conditions = {c["type"]: c for c in p.status["conditions"]}
    assert (
        conditions["PodsHealthy"]["status"] == "False"
        and conditions["Progressing"]["reason"] == "Unschedulable"
    )
    # Another version's trouble, or none, leaves the message as it was.
    calm = plan(cm(spec), {}, {v: dep}, NO_PROM, NOW, 4, None, [other])
    assert "PodsHealthy" not in {c["type"] for c in calm.status["conditions"]}
    assert calm.status["message"] == "0 of 1 replicas ready"


def test_shared_lora_versions_are_adapter_table_entries_of_one_base_deployment() -> None:
    """serving.lora.shared: the same one Deployment for every version; the version's adapter goes into the
    table, and it serves once every ready pod has it (adapterLoaded k/n)."""
    spec = {"fineTune": {**FT, "method": "lora"}, "serving": {"lora": {"shared": True}}}
    c = cm(spec)
    v = model_version(c.spec)
    base = DeploymentObs("shared", "x-shared", 2, 2)
    jobs = {v: done(v, "{}")}

    def table(p: Plan) -> dict[str, Any]:
        (configmap,) = [o for o in p.apply if o["kind"] == "ConfigMap"]
        loaded: dict[str, Any] = json.loads(configmap["data"]["adapters.json"])
        return loaded

    def step(pods: AdapterPods, status: dict[str, Any] | None = None) -> Plan:
        return plan(cm(spec, status), jobs, {"shared": base}, NO_PROM, NOW, 4, pods=pods)

    loading = step(AdapterPods(2, {"x-base": 2, f"x-{v}": 1}, {}))
    assert [o["metadata"]["name"] for o in loading.apply if o["kind"] == "Deployment"] == ["x-shared"]
    assert table(loading) == {"adapters": {f"x-{v}": f"/artifacts/{v}"}, "aliases": {"x": {f"x-{v}": 100}}}
    assert loading.status["activeVersion"] is None and loading.status["versions"][0]["adapterLoaded"] == "1/2"
    assert "on 1/2 ready pods" in loading.message
    refused = step(AdapterPods(2, {"x-base": 2}, {f"x-{v}": "rank 128 is above --max-lora-rank 64"}))
    assert "rank 128" in refused.status["versions"][0]["message"]
    served = step(AdapterPods(2, {"x-base": 2, f"x-{v}": 2}, {}))
    assert served.phase == "Ready" and served.status["activeVersion"] == v
    assert served.status["versions"][0]["adapterLoaded"] == "2/2"
    service = next(o for o in served.apply if o["kind"] == "Service")
    assert service["spec"]["selector"]["chatmodel.dev/version"] == "shared"
    assert served.status["selector"].endswith("chatmodel.dev/version=shared")
