"""Versions and rollout on the real kopf operator against kmock; the live gate reads a real Prometheus
scraping an exporter whose numbers the test sets (the PromQL itself meets real servers in
test_operator_promql.py)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from chatmodel_operator.config import Config
from chatmodel_serving.launch import free_port
from tests.operator.operator_kmock import Cluster, eventually, operator, path
from tests.operator.operator_prom import prometheus
from tests.operator.test_operator_lifecycle import (
    CM,
    FINE_TUNE,
    NS,
    event_posted,
    finish_job,
    make_ready,
    manifest,
    phase_is,
    status,
)
from tests.operator.test_operator_lifecycle import version as version_of

FAST = Config(rollout_check_seconds=0.3)
OTHER_BASE = {"baseModel": {"source": "pvc://models/other-model"}}


def dep(name: str, v: str) -> str:
    return path("apps/v1", "deployments", NS, f"{name}-{v}")


async def selector(c: Cluster, name: str) -> dict[str, str]:
    found: dict[str, str] = ((await c.get(path("v1", "services", NS, name))) or {})["spec"]["selector"]
    return found


def condition(st: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(x for x in st["conditions"] if x["type"] == kind)


async def rolled_out(c: Cluster, name: str, reason: str) -> dict[str, Any] | None:
    st = await status(c, name)
    found = [x for x in st.get("conditions", []) if x["type"] == "RolledOut" and x["reason"] == reason]
    return st if found else None


async def gone(c: Cluster, url: str) -> bool:
    return await c.get(url) is None


async def replicas_are(c: Cluster, url: str, n: int) -> bool:
    return bool(((await c.get(url)) or {}).get("spec", {}).get("replicas") == n)


async def history_is(c: Cluster, name: str, versions: list[str]) -> bool:
    return [v["name"] for v in (await status(c, name)).get("versions", [])] == versions


async def serve_v1(c: Cluster, name: str, spec: dict[str, Any], replicas: int = 1) -> str:
    v1 = version_of(name, spec)
    await c.create(CM, manifest(name, spec))
    await eventually(lambda: c.get(dep(name, v1)))
    await make_ready(c, f"{name}-{v1}", replicas)
    await eventually(lambda: rolled_out(c, name, "RolledOut"))
    return v1


async def test_dataset_change_makes_v2_while_v1_serves_then_replace_switches(cluster: Cluster) -> None:
    c = cluster
    async with operator(c.k, FAST):
        v1 = version_of("rp", FINE_TUNE)
        await c.create(CM, manifest("rp", FINE_TUNE))
        await eventually(lambda: c.get(path("batch/v1", "jobs", NS, f"rp-{v1}-train")))
        await finish_job(c, f"rp-{v1}-train", ok=True, message='{"eval_loss": 1.1}')
        await eventually(lambda: c.get(dep("rp", v1)))
        await make_ready(c, f"rp-{v1}")
        await eventually(lambda: rolled_out(c, "rp", "RolledOut"))

        v2_ft = {"fineTune": {**FINE_TUNE["fineTune"], "dataset": {"source": "pvc://data/v2.jsonl"}}}
        v2 = version_of("rp", v2_ft)
        await c.patch(f"{CM}/rp", {"spec": v2_ft})
        await eventually(lambda: c.get(path("batch/v1", "jobs", NS, f"rp-{v2}-train")))
        st = await eventually(lambda: phase_is(c, "rp", "FineTuning"))
        assert st["activeVersion"] == v1 and st["targetVersion"] == v2
        assert (await selector(c, "rp"))["chatmodel.dev/version"] == v1
        await finish_job(c, f"rp-{v2}-train", ok=True, message='{"eval_loss": 0.9}')
        await eventually(lambda: c.get(dep("rp", v2)))
        # v2 exists but is not ready: v1 keeps all the traffic.
        assert (await selector(c, "rp"))["chatmodel.dev/version"] == v1
        await make_ready(c, f"rp-{v2}")
        st = await eventually(lambda: rolled_out(c, "rp", "RolledOut"))
        assert st["activeVersion"] == v2
        assert (await selector(c, "rp"))["chatmodel.dev/version"] == v2
        assert [(v["name"], v["state"], v["evalLoss"]) for v in st["versions"]] == [
            (v2, "Serving", 0.9),
            (v1, "Retired", 1.1),
        ]
        assert all(v["createdAt"] for v in st["versions"])
        # v1 is within the history limit: scaled to zero, kept for a rollback.
        await eventually(lambda: replicas_are(c, dep("rp", v1), 0))

        # historyLimit 1: v1 leaves the history; its Deployment and Job go, a Job prunes its artifacts.
        await c.patch(f"{CM}/rp", {"spec": {"rollout": {"historyLimit": 1}}})
        prune = await eventually(lambda: c.get(path("batch/v1", "jobs", NS, f"rp-{v1}-prune")))
        pod = prune["spec"]["template"]["spec"]
        assert pod["containers"][0]["command"][-1] == v1
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "rp-artifacts"
        await eventually(lambda: gone(c, dep("rp", v1)))
        await eventually(lambda: gone(c, path("batch/v1", "jobs", NS, f"rp-{v1}-train")))
        await eventually(lambda: history_is(c, "rp", [v2]))
        assert await c.get(path("batch/v1", "jobs", NS, f"rp-{v2}-train")) is not None
        assert await c.get(path("batch/v1", "jobs", NS, f"rp-{v2}-prune")) is None


async def test_gate_failure_leaves_v1_serving_and_names_the_loss_and_limit(cluster: Cluster) -> None:
    c = cluster
    spec = {**FINE_TUNE, "rollout": {"gate": {"maxEvalLoss": 1.0}}}
    async with operator(c.k, FAST):
        v1 = version_of("gt", spec)
        await c.create(CM, manifest("gt", spec))
        await eventually(lambda: c.get(path("batch/v1", "jobs", NS, f"gt-{v1}-train")))
        await finish_job(c, f"gt-{v1}-train", ok=True, message='{"eval_loss": 0.8}')
        await eventually(lambda: c.get(dep("gt", v1)))
        await make_ready(c, f"gt-{v1}")
        await eventually(lambda: rolled_out(c, "gt", "RolledOut"))

        v2_ft = {"fineTune": {**FINE_TUNE["fineTune"], "dataset": {"source": "pvc://data/noisy.jsonl"}}}
        v2 = version_of("gt", {**spec, **v2_ft})
        await c.patch(f"{CM}/gt", {"spec": v2_ft})
        await eventually(lambda: c.get(path("batch/v1", "jobs", NS, f"gt-{v2}-train")))
        await finish_job(c, f"gt-{v2}-train", ok=True, message='{"eval_loss": 1.7}')
        st = await eventually(lambda: rolled_out(c, "gt", "GateRejected"))
        cond = condition(st, "RolledOut")
        assert cond["status"] == "False"
        assert "1.7" in cond["message"] and "maxEvalLoss 1.0" in cond["message"]
        assert st["phase"] == "Degraded" and st["activeVersion"] == v1
        assert st["versions"][0]["name"] == v2 and st["versions"][0]["state"] == "Rejected"
        assert (await selector(c, "gt"))["chatmodel.dev/version"] == v1
        assert await c.get(dep("gt", v2)) is None  # a rejected version never gets a pod
        await eventually(lambda: event_posted(c, "GateRejected", "Warning"))


class Exporter:
    """The two metrics the live gate reads, served on a port, grown by a thread at a set error share."""

    def __init__(self, error_share: float) -> None:
        self.registry = CollectorRegistry()
        self.http = Counter("chatmodel_http_requests", "", ["route", "code"], registry=self.registry)
        self.e2e = Histogram(
            "chatmodel_e2e_request_latency_seconds",
            "",
            ["model"],
            registry=self.registry,
            buckets=(0.1, 1, 10),
        )
        self.error_share = error_share
        self.port = free_port()
        self.stop = threading.Event()

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            errors = round(10 * self.error_share)
            self.http.labels("/v1/chat/completions", "200").inc(10 - errors)
            self.http.labels("/v1/chat/completions", "500").inc(errors)
            self.http.labels("/metrics", "200").inc(5)  # scrapes: never counted as API traffic
            for _ in range(10):
                self.e2e.labels("m").observe(0.05)

    @contextlib.contextmanager
    def running(self) -> Iterator[Exporter]:
        server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            thread.join(5)
            server.shutdown()


CANARY: dict[str, Any] = {
    "serving": {"replicas": {"min": 2, "max": 2}},
    "rollout": {
        "strategy": "Canary",
        "canaryPercent": 25,
        "analysisSeconds": 1,
        "historyLimit": 1,
        "liveGate": {"maxErrorRate": 0.05, "windowSeconds": 10},
    },
}


@contextlib.contextmanager
def canary_metrics(tmp: Path, name: str, version: str, error_share: float) -> Iterator[Config]:
    exporter = Exporter(error_share)
    labels = {"namespace": NS, "chatmodel": name, "version": version}
    with exporter.running(), prometheus(tmp, [(f"127.0.0.1:{exporter.port}", labels)]) as url:
        yield Config(rollout_check_seconds=0.3, prometheus_url=url)


async def start_canary(c: Cluster, name: str) -> tuple[str, str]:
    v1 = await serve_v1(c, name, CANARY, replicas=2)
    v2 = version_of(name, {**CANARY, **OTHER_BASE})
    await c.patch(f"{CM}/{name}", {"spec": OTHER_BASE})
    canary = await eventually(lambda: c.get(dep(name, v2)))
    assert canary["spec"]["replicas"] == 1  # 1 of 3 pods: the replica ratio behind one Service
    await make_ready(c, f"{name}-{v2}", 1)
    st = await eventually(lambda: rolled_out(c, name, "Canary"), timeout=20)
    assert st["activeVersion"] == v1
    assert st["versions"][0]["state"] == "Canary" and st["versions"][0]["trafficPercent"] == 33
    assert "chatmodel.dev/version" not in await selector(c, name)  # both versions behind the Service
    await eventually(lambda: event_posted(c, "Canary"))
    return v1, v2


async def test_passing_canary_goes_to_100_percent_and_retires_v1(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    v2 = version_of("cy", {**CANARY, **OTHER_BASE})
    with canary_metrics(tmp_path, "cy", v2, error_share=0.0) as config:
        async with operator(c.k, config):
            v1, _ = await start_canary(c, "cy")
            # The live gate passes: v2 is scaled to full size, and takes all traffic once ready.
            st = await eventually(lambda: rolled_out(c, "cy", "Promoting"), timeout=30)
            assert "live gate passed" in condition(st, "RolledOut")["message"]
            await eventually(lambda: replicas_are(c, dep("cy", v2), 2))
            await make_ready(c, f"cy-{v2}", 2)
            st = await eventually(lambda: rolled_out(c, "cy", "RolledOut"))
            assert st["activeVersion"] == v2
            assert (await selector(c, "cy"))["chatmodel.dev/version"] == v2
            top = st["versions"][0]
            assert top["state"] == "Serving" and top["errorRate"] == 0.0 and top["requests"] > 0
            assert top["p95LatencySeconds"] <= 0.1
            # historyLimit 1: v1 leaves the history and its Deployment goes.
            assert [v["name"] for v in st["versions"]] == [v2]
            await eventually(lambda: gone(c, dep("cy", v1)))


async def test_live_gate_failure_rolls_back(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    v2 = version_of("lg", {**CANARY, **OTHER_BASE})
    with canary_metrics(tmp_path, "lg", v2, error_share=0.3) as config:
        async with operator(c.k, config):
            v1, _ = await start_canary(c, "lg")
            st = await eventually(lambda: rolled_out(c, "lg", "LiveGateFailed"), timeout=30)
            cond = condition(st, "RolledOut")
            assert cond["status"] == "False"
            assert "maxErrorRate 0.05" in cond["message"] and f"rolled back to {v1}" in cond["message"]
            assert st["activeVersion"] == v1 and st["phase"] == "Degraded"
            top = st["versions"][0]
            assert top["state"] == "RolledBack" and top["errorRate"] == pytest.approx(0.3, abs=0.05)
            assert (await selector(c, "lg"))["chatmodel.dev/version"] == v1
            await eventually(lambda: gone(c, dep("lg", v2)))
            await eventually(lambda: event_posted(c, "LiveGateFailed", "Warning"))


async def test_pinning_an_old_version_restores_it(cluster: Cluster) -> None:
    c = cluster
    async with operator(c.k, FAST):
        v1 = await serve_v1(c, "pn", {})
        v2 = version_of("pn", OTHER_BASE)
        await c.patch(f"{CM}/pn", {"spec": OTHER_BASE})
        await eventually(lambda: c.get(dep("pn", v2)))
        await make_ready(c, f"pn-{v2}")
        await eventually(lambda: replicas_are(c, dep("pn", v1), 0))
        await make_ready(c, f"pn-{v1}", 0)  # what the Deployment controller would report

        await c.patch(f"{CM}/pn", {"spec": {"rollout": {"pinVersion": v1}}})
        await eventually(lambda: replicas_are(c, dep("pn", v1), 1))  # back up
        v1_dep = await c.get(dep("pn", v1))
        args = v1_dep["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "builtin://smollm2-135m" in args[args.index("--model") + 1]  # v1's own base model
        assert (await selector(c, "pn"))["chatmodel.dev/version"] == v2  # until v1 is ready
        await make_ready(c, f"pn-{v1}", 1)
        st = await eventually(lambda: rolled_out(c, "pn", "Pinned"))
        assert st["activeVersion"] == v1 and st["targetVersion"] == v1
        assert (await selector(c, "pn"))["chatmodel.dev/version"] == v1
        await eventually(lambda: replicas_are(c, dep("pn", v2), 0))
        await eventually(lambda: event_posted(c, "Pinned"))


ROUTED = {"gateway": {"name": "inference-gateway", "endpointPicker": "gw-epp"}}
GATEWAY = {"serving": {**CANARY["serving"], **ROUTED}}


async def route_weights(c: Cluster, name: str) -> dict[str, int]:
    route = await c.get(path("gateway.networking.k8s.io/v1", "httproutes", NS, name)) or {}
    backends = route.get("spec", {}).get("rules", [{}])[0].get("backendRefs", [])
    return {b["name"]: b["weight"] for b in backends}


async def test_gateway_canary_splits_by_route_weights_then_promotes(cluster: Cluster, tmp_path: Path) -> None:
    c = cluster
    spec = {**CANARY, **GATEWAY}
    v2 = version_of("gw", {**spec, **OTHER_BASE})

    def pool(v: str) -> str:
        return path("inference.networking.k8s.io/v1", "inferencepools", NS, f"gw-{v}")

    with canary_metrics(tmp_path, "gw", v2, error_share=0.0) as config:
        async with operator(c.k, config):
            v1 = await serve_v1(c, "gw", spec, replicas=2)
            assert await route_weights(c, "gw") == {f"gw-{v1}": 100}
            await c.patch(f"{CM}/gw", {"spec": OTHER_BASE})
            canary = await eventually(lambda: c.get(dep("gw", v2)))
            # Sized for its share (1 pod beside v1's 2); the route, not the pod count, splits traffic.
            assert canary["spec"]["replicas"] == 1
            await make_ready(c, f"gw-{v2}", 1)
            st = await eventually(lambda: rolled_out(c, "gw", "Canary"), timeout=60)
            assert st["versions"][0]["trafficPercent"] == 25
            assert await route_weights(c, "gw") == {f"gw-{v1}": 75, f"gw-{v2}": 25}
            assert await c.get(pool(v1)) and await c.get(pool(v2))
            # The live gate passes: the route sends everything to v2; v1 and its pool go (historyLimit 1).
            st = await eventually(lambda: rolled_out(c, "gw", "Promoting"), timeout=30)
            await eventually(lambda: replicas_are(c, dep("gw", v2), 2))
            await make_ready(c, f"gw-{v2}", 2)
            await eventually(lambda: rolled_out(c, "gw", "RolledOut"), timeout=30)
            await eventually(lambda: route_is(c, "gw", {f"gw-{v2}": 100}))
            await eventually(lambda: gone(c, pool(v1)))
            await eventually(lambda: gone(c, dep("gw", v1)))


async def route_is(c: Cluster, name: str, weights: dict[str, int]) -> bool:
    return await route_weights(c, name) == weights
