"""A namespace for `chatmodel gateway` to serve, without a cluster: kmock's emulator in a process of its
own holds the ChatModels (their status says which versions take traffic) and the EndpointSlices (which
pods are ready), and the pods are real `chatmodel serve` processes on loopback ports. The gateway finds
all of it through the same list + watch calls it makes on a cluster."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from chatmodel_serving.launch import ReadyProcess, ServerProcess, free_port

NS = "team-a"
CHATMODELS = f"/apis/chatmodel.dev/v1alpha1/namespaces/{NS}/chatmodels"
SLICES = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NS}/deployments"
MERGE = {"Content-Type": "application/merge-patch+json"}


class Emulator(ReadyProcess):
    what = "kmock emulator"

    def __init__(self, log_path: Path | None = None) -> None:
        super().__init__(log_path, ready_timeout=60)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tests.e2e.kmock_server", str(self.port)]

    @property
    def ready_url(self) -> str:
        return self.url + CHATMODELS


class GatewayProcess(ReadyProcess):
    what = "chatmodel gateway"

    def __init__(self, kube: str, args: Iterable[str] = (), log_path: Path | None = None) -> None:
        super().__init__(log_path, ready_timeout=60)
        self.port, self.kube, self.args = free_port(), kube, list(args)

    def command(self) -> list[str]:
        cli = [sys.executable, "-m", "chatmodel_serving.cli", "gateway", "--namespace", NS]
        return [*cli, "--kube-api", self.kube, "--port", str(self.port), *self.args]

    @property
    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ready"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def log_lines(self) -> list[dict[str, Any]]:
        assert self.log_path is not None
        out = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out


class Namespace:
    """The emulator's API, as the operator and the EndpointSlice controller would write it."""

    def __init__(self, url: str) -> None:
        self.api = httpx.Client(base_url=url, timeout=10)

    def put(self, collection: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if self.api.get(f"{collection}/{name}").status_code == 200:
            r = self.api.patch(f"{collection}/{name}", content=json.dumps(obj), headers=MERGE)
        else:
            r = self.api.post(collection, json=obj)
        assert r.status_code < 300, r.text

    def delete(self, collection: str, name: str) -> None:
        self.api.delete(f"{collection}/{name}")

    def chatmodel(self, name: str, serving: str, canary: str | None = None, percent: int = 0) -> None:
        """A ChatModel whose status serves `serving` and, with `canary`, gives it `percent` of traffic."""
        versions: list[dict[str, Any]] = [{"name": serving, "state": "Serving", "baseModel": "builtin://x"}]
        if canary:
            versions.append({"name": canary, "state": "Canary", "trafficPercent": percent, "baseModel": "x"})
        obj = {
            "apiVersion": "chatmodel.dev/v1alpha1",
            "kind": "ChatModel",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"baseModel": {"source": "builtin://smollm2-135m"}},
            "status": {"phase": "Ready", "versions": versions},
        }
        self.put(CHATMODELS, obj)

    def pods(self, model: str, version: str, ports: Iterable[int], ready: bool = True) -> None:
        """One EndpointSlice per pod (each listens on its own loopback port), labelled as the
        EndpointSlice controller labels the slices of a per-version Service."""
        for port in ports:
            self.put(SLICES, {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{model}-{version}-{port}", "namespace": NS,
                    "labels": {"chatmodel.dev/name": model, "chatmodel.dev/version": version,
                               "kubernetes.io/service-name": f"{model}-{version}"},
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": ready}}],
            })  # fmt: skip

    def deployment(self, model: str, version: str, replicas: int) -> None:
        self.put(DEPLOYMENTS, {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"{model}-{version}", "namespace": NS}, "spec": {"replicas": replicas},
        })  # fmt: skip

    def replicas(self, deployment: str) -> int:
        return int(self.api.get(f"{DEPLOYMENTS}/{deployment}").json()["spec"].get("replicas") or 0)


def start_servers(args: list[str], count: int, folder: Path) -> list[ServerProcess]:
    """`count` serving processes started side by side (each takes seconds to import torch)."""
    servers = [ServerProcess(args, log_path=folder / f"pod-{i}.log") for i in range(count)]
    errors: list[BaseException] = []

    def start(s: ServerProcess) -> None:
        try:
            s.start()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for s in servers:
            s.stop()
        raise errors[0]
    return servers


def wait_for(check: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise TimeoutError(f"{what} not met after {timeout}s")
