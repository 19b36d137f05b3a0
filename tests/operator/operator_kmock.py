"""Run the real kopf operator against kmock's Kubernetes emulator, in a thread of the test process or as a
process of its own (docs/operator.md, "Tests and benchmark", says what kmock does and does not emulate)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kmock
import kopf

from chatmodel_operator.config import Config
from chatmodel_operator.main import build_registry
from chatmodel_serving.launch import free_port

VERBS = {"list", "watch", "get", "create", "patch", "update", "delete"}
RESOURCES: dict[str, tuple[str, bool, set[str]]] = {
    "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition", False, set()),
    "v1/namespaces": ("Namespace", False, set()),
    "chatmodel.dev/v1alpha1/chatmodels": ("ChatModel", True, {"status"}),
    "batch/v1/jobs": ("Job", True, {"status"}),
    "apps/v1/deployments": ("Deployment", True, {"status", "scale"}),
    "v1/services": ("Service", True, set()),
    "discovery.k8s.io/v1/endpointslices": ("EndpointSlice", True, set()),
    "v1/configmaps": ("ConfigMap", True, set()),
    "v1/persistentvolumeclaims": ("PersistentVolumeClaim", True, set()),
    "v1/pods": ("Pod", True, {"status"}),
    "v1/events": ("Event", True, set()),
    "autoscaling/v2/horizontalpodautoscalers": ("HorizontalPodAutoscaler", True, set()),
    "policy/v1/poddisruptionbudgets": ("PodDisruptionBudget", True, set()),
    "keda.sh/v1alpha1/scaledobjects": ("ScaledObject", True, set()),
    "inference.networking.k8s.io/v1/inferencepools": ("InferencePool", True, set()),
    "gateway.networking.k8s.io/v1/httproutes": ("HTTPRoute", True, set()),
    "trainer.kubeflow.org/v1alpha1/trainjobs": ("TrainJob", True, set()),
    "networking.k8s.io/v1/networkpolicies": ("NetworkPolicy", True, set()),
}
MERGE = {"Content-Type": "application/merge-patch+json"}


def declare(emulator: kmock.KubernetesEmulator) -> None:
    for path, (kind, namespaced, subresources) in RESOURCES.items():
        emulator.resources[path] = kmock.ResourceInfo(
            namespaced=namespaced, kind=kind, verbs=VERBS, subresources=subresources
        )


def path(api_version: str, plural: str, ns: str, name: str = "", sub: str = "") -> str:
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return "/".join(p for p in (root, "namespaces", ns, plural, name, sub) if p)


class Cluster:
    """Small async helpers over the emulator's HTTP API (so that watchers see every change)."""

    def __init__(self, emulator: Any) -> None:
        self.k = emulator

    async def get(self, url: str) -> Any:
        async with self.k.get(url) as resp:
            return await resp.json() if resp.status == 200 else None

    async def items(self, url: str) -> list[dict[str, Any]]:
        found = await self.get(url)
        items: list[dict[str, Any]] = (found or {}).get("items", [])
        return items

    async def create(self, url: str, obj: dict[str, Any]) -> None:
        async with self.k.post(url, json=obj) as resp:
            assert resp.status < 300, await resp.text()

    async def patch(self, url: str, body: dict[str, Any]) -> None:
        if "spec" in body and "/chatmodels/" in url:  # the API server bumps generation on a spec change;
            current = (await self.get(url)) or {}  # kmock does not, so the test does it for it
            generation = current.get("metadata", {}).get("generation", 1) + 1
            body = {**body, "metadata": {**body.get("metadata", {}), "generation": generation}}
        async with self.k.patch(url, json=body, headers=MERGE) as resp:
            assert resp.status < 300, await resp.text()

    async def delete(self, url: str) -> None:
        async with self.k.delete(url) as resp:
            assert resp.status < 300, await resp.text()

    def posts(self, fragment: str) -> list[Any]:
        return [r for r in self.k if str(r.method.value).upper() == "POST" and fragment in str(r.url)]


async def eventually(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll an async check until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met in {timeout}s; last value: {last!r}")


@contextlib.asynccontextmanager
async def operator(emulator: Any, config: Config | None = None, server: str = "") -> AsyncIterator[None]:
    """The operator in a thread with its own event loop: on exit kopf cancels every task of its loop
    created after it started, which in a shared loop would include the emulator's connection handlers.
    `server` points it elsewhere than the emulator (e.g. an authorizing proxy in front of it)."""
    config = config or Config()
    registry = build_registry(config)
    server = server or str(emulator.url).rstrip("/")

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=server)

    stop = threading.Event()
    ready = threading.Event()

    def run() -> None:
        asyncio.run(
            kopf.operator(
                registry=registry,
                # As main.py: named namespaces, else cluster-wide.
                clusterwide=not config.namespaces,
                namespaces=config.namespaces,
                standalone=True,
                stop_flag=stop,
                ready_flag=ready,
            )
        )

    thread = threading.Thread(target=run, name="operator", daemon=True)
    thread.start()
    try:
        await asyncio.to_thread(ready.wait, 15)
        yield
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 15)
        assert not thread.is_alive(), "the operator did not stop"


def operator_process(
    emulator: Any, workdir: Path, log_name: str = "operator.log"
) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    """The real entry point, `python -m chatmodel_operator`, as its own process: a kubeconfig login to the
    emulator, metrics and liveness ports. Returns the process and its ports; the caller stops it."""
    kubeconfig = workdir / "kubeconfig"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "k", "cluster": {"server": str(emulator.url).rstrip("/")}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "current-context": "c",
    }
    kubeconfig.write_text(json.dumps(config))  # JSON is YAML
    ports = {"metrics": free_port(), "health": free_port()}
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "operator"),
        "KUBECONFIG": str(kubeconfig),
        "CHATMODEL_METRICS_PORT": str(ports["metrics"]),
        "CHATMODEL_HEALTH_PORT": str(ports["health"]),
    }
    with open(workdir / log_name, "ab") as log:
        cmd = [sys.executable, "-m", "chatmodel_operator"]
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, ports
