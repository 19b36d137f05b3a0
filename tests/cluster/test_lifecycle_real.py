"""Must-show 4 of the real-cluster issue: ChatModel lifecycles with the real controllers (Deployment →
ReplicaSet → pods, Job → pods, garbage collector, scheduler) and kwok's pods, the operator as a process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.cluster.devcluster import UNPULLABLE_IMAGE, LocalCluster
from tests.cluster.operator_process import running_operator

NS = "lifecycle"
FAILS = "kwok.invalid/exits-1:1"  # tests/cluster/stages.yaml: its container exits 1
UNPULLABLE = UNPULLABLE_IMAGE
FINE_TUNE = {"dataset": {"source": "builtin://tidewell-faq"}, "method": "full", "backoffLimit": 0}


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    cluster.kubectl("create", "namespace", NS)
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with running_operator(cluster.kubeconfig, log, namespaces=[NS]) as proc:
        yield proc


def chatmodel(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "chatmodel.dev/v1alpha1",
        "kind": "ChatModel",
        "metadata": {"name": name},
        "spec": spec,
    }


def get(cluster: LocalCluster, *what: str) -> Any:
    out = cluster.kubectl("get", *what, "-n", NS, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def wait_for(
    cluster: LocalCluster, name: str, ok: Callable[[dict[str, Any]], bool], what: str, timeout: float = 90
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = get(cluster, "chatmodel", name) or {}
        if ok(body.get("status") or {}):
            return body
        time.sleep(0.5)
    children = cluster.kubectl(
        "get", "deploy,rs,pods,jobs", "-n", NS, "-l", f"chatmodel.dev/name={name}"
    ).stdout
    raise AssertionError(f"{name}: {what} not within {timeout} s; status {body.get('status')}\n{children}")


def phase(p: str) -> Callable[[dict[str, Any]], bool]:
    return lambda s: s.get("phase") == p


def children(cluster: LocalCluster, name: str) -> list[str]:
    kinds = "deployments,replicasets,pods,jobs,services,horizontalpodautoscalers,poddisruptionbudgets,pvc"
    out = cluster.kubectl("get", kinds, "-n", NS, "-l", f"chatmodel.dev/name={name}", "-o", "name")
    return out.stdout.split()


def test_base_model_to_ready_through_the_real_deployment(cluster: LocalCluster, operator: Any) -> None:
    cluster.apply([chatmodel("base", {"serving": {"replicas": {"min": 2}}})], "-n", NS)
    body = wait_for(
        cluster, "base", lambda s: s.get("phase") == "Ready" and s.get("readyReplicas") == 2, "Ready"
    )
    status = body["status"]
    dep = get(cluster, "deployment", "-l", "chatmodel.dev/name=base")["items"][0]
    assert dep["status"]["readyReplicas"] == status["readyReplicas"] == 2
    rs = get(cluster, "replicaset", "-l", "chatmodel.dev/name=base")["items"]
    assert [r["metadata"]["ownerReferences"][0]["name"] for r in rs] == [dep["metadata"]["name"]]
    pods = get(cluster, "pods", "-l", "chatmodel.dev/name=base")["items"]
    assert len(pods) == 2 and all(p["status"]["phase"] == "Running" for p in pods)
    # No GPU asked: never on the GPU node (its taint keeps them off).
    assert {p["spec"]["nodeName"] for p in pods} <= {"kwok-cpu-0", "kwok-cpu-1"}
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Ready"] == "True" and conditions["Available"] == "True"
    # The scale subresource reads what the operator wrote from the real Deployment.
    scale = get(cluster, "chatmodel", "base", "--subresource=scale")
    assert scale["status"]["replicas"] == 2 and "chatmodel.dev/name=base" in scale["status"]["selector"]


def test_gpu_pods_land_only_on_gpu_nodes(cluster: LocalCluster, operator: Any) -> None:
    cluster.apply([chatmodel("gpu", {"serving": {"resources": {"gpu": 1}}})], "-n", NS)
    wait_for(cluster, "gpu", phase("Ready"), "Ready")
    pods = get(cluster, "pods", "-l", "chatmodel.dev/name=gpu")["items"]
    assert [p["spec"]["nodeName"] for p in pods] == ["kwok-gpu-0"]


def test_fine_tune_job_completes_then_new_version_is_served(cluster: LocalCluster, operator: Any) -> None:
    cluster.apply(
        [chatmodel("tuned", {"fineTune": FINE_TUNE, "rollout": {"gate": {"requireImprovement": True}}})],
        "-n",
        NS,
    )
    wait_for(cluster, "tuned", phase("Ready"), "Ready after training", timeout=120)
    job = get(cluster, "jobs", "-l", "chatmodel.dev/name=tuned")["items"][0]
    assert any(c["type"] == "Complete" and c["status"] == "True" for c in job["status"]["conditions"])
    status = get(cluster, "chatmodel", "tuned")["status"]
    version = next(v for v in status["versions"] if v["name"] == status["activeVersion"])
    # The eval loss came from the training pod's termination message through the real Job.
    assert version["fineTuned"] and version["evalLoss"] == pytest.approx(0.8)

    # A model change makes a new version; Replace moves the Service only once it is Ready.
    old = status["activeVersion"]
    tuned = {**FINE_TUNE, "hyperparameters": {"epochs": 2}}
    cluster.apply(
        [chatmodel("tuned", {"fineTune": tuned, "rollout": {"gate": {"requireImprovement": True}}})], "-n", NS
    )
    body = wait_for(
        cluster,
        "tuned",
        lambda s: s.get("phase") == "Ready" and s.get("activeVersion") != old,
        "the new version active",
        timeout=120,
    )
    new = body["status"]["activeVersion"]
    service = get(cluster, "service", "tuned")
    assert service["spec"]["selector"]["chatmodel.dev/version"] == new
    states = {v["name"]: v["state"] for v in body["status"]["versions"]}
    assert states[old] == "Retired"
    deps = {
        d["metadata"]["labels"]["chatmodel.dev/version"]: d
        for d in get(cluster, "deploy", "-l", "chatmodel.dev/name=tuned")["items"]
    }
    deadline = time.monotonic() + 60
    while deps[old]["spec"]["replicas"] != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        deps[old] = get(cluster, "deploy", deps[old]["metadata"]["name"])
    assert deps[old]["spec"]["replicas"] == 0, "the old version keeps its replicas"


def test_failed_job_fails_the_chatmodel_with_its_reason(cluster: LocalCluster, operator: Any) -> None:
    cluster.apply([chatmodel("broken", {"fineTune": {**FINE_TUNE, "image": FAILS}})], "-n", NS)
    body = wait_for(cluster, "broken", phase("Failed"), "Failed")
    assert "training data line 3" in body["status"]["message"]
    conditions = {c["type"]: c for c in body["status"]["conditions"]}
    assert (
        conditions["FineTuned"]["status"] == "False" and conditions["FineTuned"]["reason"] == "TrainingFailed"
    )


@pytest.mark.parametrize(
    ("name", "serving", "reason", "says"),
    [
        ("nowhere", {"nodeSelector": {"pool": "nowhere"}}, "Unschedulable", "node affinity/selector"),
        ("too-big", {"resources": {"gpu": 8}}, "Unschedulable", "Insufficient nvidia.com/gpu"),
        ("no-image", {"image": UNPULLABLE}, "ImagePullBackOff", UNPULLABLE),
        ("crashing", {"image": FAILS}, "CrashLoopBackOff", "restarting failed container"),
    ],
)
def test_a_pod_that_cannot_run_says_why(
    cluster: LocalCluster, operator: Any, name: str, serving: dict[str, Any], reason: str, says: str
) -> None:
    cluster.apply([chatmodel(name, {"serving": serving})], "-n", NS)
    body = wait_for(
        cluster, name, lambda s: reason in (s.get("message") or ""), f"the {reason} reason", timeout=60
    )
    status = body["status"]
    assert status["phase"] in ("Pending", "Deploying") and says in status["message"], status["message"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["PodsHealthy"]["status"] == "False" and conditions["PodsHealthy"]["reason"] == reason
    assert conditions["Progressing"]["reason"] == reason


def test_a_training_pod_that_cannot_be_scheduled_says_why(cluster: LocalCluster, operator: Any) -> None:
    ft = {**FINE_TUNE, "nodeSelector": {"pool": "nowhere"}}
    cluster.apply([chatmodel("stuck-train", {"fineTune": ft})], "-n", NS)
    body = wait_for(
        cluster, "stuck-train", lambda s: "Unschedulable" in (s.get("message") or ""), "Unschedulable"
    )
    assert body["status"]["phase"] == "FineTuning" and "training pod" in body["status"]["message"]


def test_delete_lets_the_garbage_collector_remove_every_child(cluster: LocalCluster, operator: Any) -> None:
    cluster.apply([chatmodel("gone", {"fineTune": FINE_TUNE})], "-n", NS)
    wait_for(cluster, "gone", phase("Ready"), "Ready", timeout=120)
    assert children(cluster, "gone")
    operator.pause()  # the garbage collector alone, as with the operator down
    try:
        cluster.kubectl("delete", "chatmodel", "gone", "-n", NS, "--wait=true")
        deadline = time.monotonic() + 60
        while children(cluster, "gone") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert children(cluster, "gone") == []
    finally:
        operator.resume()


@pytest.mark.parametrize("outcome", ["Complete", "Failed"])
def test_a_kubeflow_trainjob_is_read_like_a_job(cluster: LocalCluster, operator: Any, outcome: str) -> None:
    name = f"kf-{outcome.lower()}"
    cluster.apply([chatmodel(name, {"fineTune": {**FINE_TUNE, "engine": "kubeflow"}})], "-n", NS)
    wait_for(cluster, name, phase("FineTuning"), "FineTuning")
    trainjob = get(cluster, "trainjobs.trainer.kubeflow.org", "-l", f"chatmodel.dev/name={name}")["items"][0]
    # What Trainer's controller would write (none runs here): the real server takes it through /status.
    condition = {
        "type": outcome,
        "status": "True",
        "reason": "JobsCompleted" if outcome == "Complete" else "TrainingFailed",
        "message": "node 0 ran out of memory",
        "lastTransitionTime": "2026-12-02T00:00:00Z",
    }
    cluster.kubectl(
        "patch",
        "trainjobs.trainer.kubeflow.org",
        trainjob["metadata"]["name"],
        "-n",
        NS,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"conditions": [condition]}}),
    )
    if outcome == "Complete":
        wait_for(cluster, name, phase("Ready"), "Ready after the TrainJob completed")
    else:
        body = wait_for(cluster, name, phase("Failed"), "Failed after the TrainJob failed")
        assert "node 0 ran out of memory" in body["status"]["message"]
