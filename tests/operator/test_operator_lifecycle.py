"""The real kopf operator on kmock: a ChatModel's whole life, from creation to deletion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import REGISTRY

from chatmodel_operator.spec import ChatModel, model_version
from tests.operator.operator_kmock import Cluster, eventually, operator, operator_process, path

NS = "team"
CM = path("chatmodel.dev/v1alpha1", "chatmodels", NS)


def manifest(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "chatmodel.dev/v1alpha1",
        "kind": "ChatModel",
        "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "generation": 1},
        "spec": spec,
    }


def version(name: str, spec: dict[str, Any]) -> str:
    return model_version(ChatModel.model_validate(manifest(name, spec)).spec)


FINE_TUNE = {"fineTune": {"dataset": {"source": "pvc://data/train.jsonl"}, "method": "full"}}


async def status(c: Cluster, name: str) -> dict[str, Any]:
    return ((await c.get(f"{CM}/{name}")) or {}).get("status") or {}


async def phase_is(c: Cluster, name: str, *phases: str) -> dict[str, Any] | None:
    st = await status(c, name)
    return st if st.get("phase") in phases else None


async def event_posted(c: Cluster, reason: str, kind: str = "Normal") -> bool:
    return any(r.data.get("reason") == reason and r.data.get("type") == kind for r in c.posts("/events"))


async def make_ready(c: Cluster, deployment: str, replicas: int = 1) -> None:
    url = path("apps/v1", "deployments", NS, deployment, "status")
    await c.patch(url, {"status": {"replicas": replicas, "readyReplicas": replicas}})


async def finish_job(c: Cluster, job: str, ok: bool, message: str) -> None:
    """What the Job controller and kubelet would do: a terminated pod with a message, then Job status."""
    term = {"exitCode": 0 if ok else 1, "message": message, "finishedAt": "2026-01-01T00:00:00Z"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{job}-abcde",
            "namespace": NS,
            "labels": {"batch.kubernetes.io/job-name": job},
        },
        "status": {"containerStatuses": [{"name": "trainer", "state": {"terminated": term}}]},
    }
    await c.create(path("v1", "pods", NS), pod)
    kind = "Complete" if ok else "Failed"
    job_status: dict[str, Any] = {
        "conditions": [{"type": kind, "status": "True", "reason": "BackoffLimitExceeded"}]
    }
    if ok:
        job_status["succeeded"] = 1
    await c.patch(path("batch/v1", "jobs", NS, job, "status"), {"status": job_status})


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_base_model_gets_deployment_and_service_then_ready(cluster: Cluster) -> None:
    c = cluster
    ready_before = sample("chatmodel_operator_time_to_ready_seconds_count")
    reconciles_before = sample("chatmodel_operator_reconcile_duration_seconds_count")
    v = version("bot", {})
    dep_url = path("apps/v1", "deployments", NS, f"bot-{v}")
    async with operator(c.k):
        await c.create(CM, manifest("bot", {}))
        dep = await eventually(lambda: c.get(dep_url))
        svc = await eventually(lambda: c.get(path("v1", "services", NS, "bot")))
        assert dep["metadata"]["ownerReferences"][0]["uid"] == "uid-bot"
        assert svc["spec"]["selector"]["chatmodel.dev/version"] == v
        st = await eventually(lambda: phase_is(c, "bot", "Pending", "Deploying"))
        assert st.get("endpoint") is None
        assert c.posts("/jobs") == []  # no fine-tune, no Job

        await make_ready(c, f"bot-{v}")
        st = await eventually(lambda: phase_is(c, "bot", "Ready"))
        assert st["endpoint"] == f"http://bot.{NS}.svc:8000/v1"
        assert st["activeVersion"] == v and st["readyReplicas"] == 1
        assert {x["type"]: x["status"] for x in st["conditions"]} == {
            "Ready": "True",
            "Available": "True",
            "Progressing": "False",
            "RolledOut": "True",
        }
        assert st["observedGeneration"] == 1
        await eventually(lambda: event_posted(c, "Ready"))  # an Event on each transition
        # Operator metrics: time to Ready observed once, reconciles timed, the model counted as Ready.
        assert sample("chatmodel_operator_time_to_ready_seconds_count") == ready_before + 1
        assert sample("chatmodel_operator_reconcile_duration_seconds_count") > reconciles_before
        assert sample("chatmodel_operator_chatmodels", phase="Ready") >= 1


async def test_fine_tune_runs_the_job_first_then_serves_the_artifact(cluster: Cluster) -> None:
    c = cluster
    v = version("ft", FINE_TUNE)
    job = f"ft-{v}-train"
    async with operator(c.k):
        await c.create(CM, manifest("ft", FINE_TUNE))
        await eventually(lambda: c.get(path("batch/v1", "jobs", NS, job)))
        await eventually(lambda: c.get(path("v1", "persistentvolumeclaims", NS, "ft-artifacts")))
        await eventually(lambda: phase_is(c, "ft", "FineTuning"))
        assert await c.items(path("apps/v1", "deployments", NS)) == []  # nothing serves before training

        await finish_job(c, job, ok=True, message='{"eval_loss": 0.9, "eval_loss_before": 1.7}')
        dep = await eventually(lambda: c.get(path("apps/v1", "deployments", NS, f"ft-{v}")))
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--model") + 1] == f"/artifacts/{v}"
        await eventually(lambda: phase_is(c, "ft", "Deploying"))
        await make_ready(c, f"ft-{v}")
        st = await eventually(lambda: phase_is(c, "ft", "Ready"))
        assert st["versions"][0]["evalLoss"] == 0.9 and st["versions"][0]["state"] == "Serving"
        job_obj = await c.get(path("batch/v1", "jobs", NS, job))
        assert "eval_loss" in job_obj["metadata"]["annotations"]["chatmodel.dev/result"]


async def test_failed_job_gives_failed_with_its_reason(cluster: Cluster) -> None:
    c = cluster
    v = version("bad", FINE_TUNE)
    job = f"bad-{v}-train"
    async with operator(c.k):
        await c.create(CM, manifest("bad", FINE_TUNE))
        await eventually(lambda: c.get(path("batch/v1", "jobs", NS, job)))
        await finish_job(c, job, ok=False, message="dataset line 3: not valid JSON")
        st = await eventually(lambda: phase_is(c, "bad", "Failed"))
        assert st["message"] == "dataset line 3: not valid JSON"
        tuned = next(x for x in st["conditions"] if x["type"] == "FineTuned")
        assert tuned["status"] == "False" and tuned["reason"] == "TrainingFailed"
        assert tuned["message"] == "dataset line 3: not valid JSON"
        assert await c.items(path("apps/v1", "deployments", NS)) == []
        await eventually(lambda: event_posted(c, "Failed", "Warning"))


async def test_serving_change_patches_and_model_change_makes_a_version(cluster: Cluster) -> None:
    c = cluster
    v1 = version("m", FINE_TUNE)
    async with operator(c.k):
        await c.create(CM, manifest("m", FINE_TUNE))
        await eventually(lambda: c.get(path("batch/v1", "jobs", NS, f"m-{v1}-train")))
        await finish_job(c, f"m-{v1}-train", ok=True, message="{}")
        dep_url = path("apps/v1", "deployments", NS, f"m-{v1}")
        await eventually(lambda: c.get(dep_url))
        await make_ready(c, f"m-{v1}")
        await eventually(lambda: phase_is(c, "m", "Ready"))

        # Serving-only change: the Deployment is patched, no Job is created.
        await c.patch(f"{CM}/m", {"spec": {"serving": {"replicas": {"min": 2, "max": 2}}}})

        async def two_replicas() -> bool:
            return bool(((await c.get(dep_url)) or {}).get("spec", {}).get("replicas") == 2)

        await eventually(two_replicas)
        await eventually(lambda: c.get(path("policy/v1", "poddisruptionbudgets", NS, f"m-{v1}")))
        assert len(c.posts("/jobs")) == 1

        # Model change: a new version, a new Job; the old version keeps serving meanwhile.
        new_ft = {"fineTune": {**FINE_TUNE["fineTune"], "dataset": {"source": "pvc://data/v2.jsonl"}}}
        await c.patch(f"{CM}/m", {"spec": new_ft})
        v2 = version("m", {**new_ft, "serving": {"replicas": {"min": 2, "max": 2}}})
        assert v2 != v1
        await eventually(lambda: c.get(path("batch/v1", "jobs", NS, f"m-{v2}-train")))
        st = await eventually(lambda: phase_is(c, "m", "FineTuning"))
        assert st["activeVersion"] == v1 and st["targetVersion"] == v2
        svc = await c.get(path("v1", "services", NS, "m"))
        assert svc["spec"]["selector"]["chatmodel.dev/version"] == v1

        await finish_job(c, f"m-{v2}-train", ok=True, message="{}")
        await eventually(lambda: c.get(path("apps/v1", "deployments", NS, f"m-{v2}")))
        await make_ready(c, f"m-{v2}", replicas=2)
        st = await eventually(lambda: phase_is(c, "m", "Ready"))
        assert st["activeVersion"] == v2
        assert [x["name"] for x in st["versions"]] == [v2, v1]
        assert st["versions"][1]["state"] == "Retired"

        async def old_parked() -> bool:
            return bool(((await c.get(dep_url)) or {}).get("spec", {}).get("replicas") == 0)

        await eventually(old_parked)  # traffic moved: the old Deployment is scaled to zero, kept for rollback
        svc = await c.get(path("v1", "services", NS, "m"))
        assert svc["spec"]["selector"]["chatmodel.dev/version"] == v2


async def test_deletion_cleans_up(cluster: Cluster) -> None:
    c = cluster
    v = version("gone", FINE_TUNE)
    async with operator(c.k):
        await c.create(CM, manifest("gone", FINE_TUNE))
        await eventually(lambda: c.get(path("batch/v1", "jobs", NS, f"gone-{v}-train")))
        await finish_job(c, f"gone-{v}-train", ok=True, message="{}")
        await eventually(lambda: c.get(path("apps/v1", "deployments", NS, f"gone-{v}")))
        await c.delete(f"{CM}/gone")

        async def all_gone() -> bool:
            urls = [
                path("apps/v1", "deployments", NS, f"gone-{v}"),
                path("batch/v1", "jobs", NS, f"gone-{v}-train"),
                path("v1", "services", NS, "gone"),
                path("v1", "persistentvolumeclaims", NS, "gone-artifacts"),
            ]
            return all([await c.get(u) is None for u in urls])

        await eventually(all_gone)


async def test_restart_mid_way_creates_no_duplicates(cluster: Cluster) -> None:
    c = cluster
    v = version("rs", FINE_TUNE)
    job = f"rs-{v}-train"
    async with operator(c.k):
        await c.create(CM, manifest("rs", FINE_TUNE))
        await eventually(lambda: phase_is(c, "rs", "FineTuning"))
    # The operator is down while the Job finishes.
    await finish_job(c, job, ok=True, message="{}")
    async with operator(c.k):
        await eventually(lambda: c.get(path("apps/v1", "deployments", NS, f"rs-{v}")))
        await make_ready(c, f"rs-{v}")
        await eventually(lambda: phase_is(c, "rs", "Ready"))
    async with operator(c.k):  # and once more, with nothing left to do
        await eventually(lambda: phase_is(c, "rs", "Ready"))
    assert len(await c.items(path("batch/v1", "jobs", NS))) == 1
    assert len(await c.items(path("apps/v1", "deployments", NS))) == 1
    assert len(c.posts("/jobs")) == 1  # the restarted operators saw the Job and did not try again
    assert len([r for r in c.posts("/deployments")]) <= 3


async def test_python_m_chatmodel_operator_runs_the_operator(cluster: Cluster, tmp_path: Path) -> None:
    """The real entry point: kubeconfig login, metrics and liveness ports, then a ChatModel gets served."""
    c = cluster
    proc, ports = operator_process(c.k, tmp_path)
    try:
        v = version("cli", {})
        await c.create(CM, manifest("cli", {}))
        await eventually(lambda: c.get(path("apps/v1", "deployments", NS, f"cli-{v}")), timeout=30)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{ports['health']}/healthz") as resp:
                assert resp.status == 200
            async with http.get(f"http://127.0.0.1:{ports['metrics']}/metrics") as resp:
                assert "chatmodel_operator_reconcile_duration_seconds" in await resp.text()
    finally:
        proc.terminate()
        proc.wait(20)
