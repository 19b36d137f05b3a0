"""serving.lora.shared end to end: the real kopf operator on kmock, and real `chatmodel serve` processes as
the base Deployment's pods (each on a loopback address of its own, started with the Deployment's own
arguments). The test plays the kubelet (the ConfigMap projected into each pod's file, /artifacts mounted)
and the trainer (an adapter published at /artifacts/VERSION). It shows: a second LoRA version becomes
servable with no new Deployment and no pod restart; status says on how many ready pods each version's
adapter is; a canary splits the ChatModel's name between the versions; promotion retires and unloads the
old one; a pod killed and recreated comes back with every kept adapter."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from chatmodel_operator.builders.adapters import SHARED
from chatmodel_operator.builders.meta import ARTIFACTS_MOUNT
from chatmodel_operator.config import Config
from chatmodel_serving.launch import ServerProcess, free_port
from tests.operator.operator_kmock import Cluster, declare, eventually, operator, path
from tests.operator.test_operator_lifecycle import CM, NS, finish_job, manifest, status, version
from tests.serving.lora.adapters import WORDS

pytestmark = pytest.mark.slow

SPEC: dict[str, Any] = {
    "fineTune": {"dataset": {"source": "pvc://data/v1.jsonl"}, "method": "lora"},
    "serving": {"lora": {"shared": True, "maxRank": 8}},
    "rollout": {"strategy": "Canary", "canaryPercent": 50, "analysisSeconds": 8},
}
DEPLOYMENT = f"m-{SHARED}"


class Pod(ServerProcess):
    """One serving pod: `chatmodel serve` with the Deployment's arguments on its own loopback IP."""

    def __init__(self, ip: str, args: list[str], port: int, folder: Path, subcommand: str = "serve"):
        log = folder / f"{ip}-{subcommand}.log"
        super().__init__([*args, "--host", ip], port=port, log_path=log, subcommand=subcommand)
        self.ip = ip

    @property
    def base(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def alive(self) -> int | None:
        """Its process id while it runs."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def served(self) -> list[str]:
        models: list[str] = httpx.get(self.ready_url, timeout=10).json()["models"]
        return models

    def kill(self) -> None:
        """No drain: the node went away."""
        if self.proc is not None:
            self.proc.kill()
        self.stop()


class Kubelet:
    """What the kubelet and the ReplicaSet controller do for the shared Deployment: each pod's copy of the
    ConfigMap (paths under /artifacts mounted from `artifacts`), pod objects with their IPs, and the
    Deployment's ready count. `launch` starts one pod's processes from the pod template (ours here)."""

    def __init__(self, c: Cluster, base_model: Path, artifacts: Path, folder: Path, port: int):
        self.c, self.base_model, self.artifacts, self.folder, self.port = (
            c,
            base_model,
            artifacts,
            folder,
            port,
        )
        self.pods: dict[str, Any] = {}

    def launch(self, ip: str, template: dict[str, Any]) -> Pod:
        args = template["spec"]["containers"][0]["args"][1:]  # after the `serve` subcommand
        args[args.index("--model") + 1] = str(self.base_model)
        args[args.index("--adapters-file") + 1] = str(self.table_file(ip))
        args[args.index("--port") + 1] = str(self.port)
        return Pod(ip, [*args, "--dtype", "float32"], self.port, self.folder).start()

    async def table(self) -> str:
        cm = await self.c.get(path("v1", "configmaps", NS, "m-adapters"))
        text: str = (cm or {}).get("data", {}).get("adapters.json", "")
        return text.replace(f'"{ARTIFACTS_MOUNT}/', f'"{self.artifacts}/')

    def table_file(self, ip: str) -> Path:
        return self.folder / f"{ip}-adapters.json"

    async def project(self) -> None:
        """The ConfigMap into every pod's file, renamed in whole as the kubelet's atomic writer does."""
        text = await self.table()
        for ip in self.pods:
            tmp = self.table_file(ip).with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(self.table_file(ip))

    async def start_pod(self, ip: str) -> Any:
        dep = await self.c.get(path("apps/v1", "deployments", NS, DEPLOYMENT))
        template = dep["spec"]["template"]
        self.table_file(ip).write_text(await self.table())
        pod = await asyncio.to_thread(self.launch, ip, template)
        self.pods[ip] = pod
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{DEPLOYMENT}-{ip.split('.')[-1]}", "namespace": NS,
                         "labels": template["metadata"]["labels"]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
        }  # fmt: skip
        await self.c.create(path("v1", "pods", NS), body)
        await self.ready_count()
        return pod

    async def kill_pod(self, ip: str) -> None:
        await asyncio.to_thread(self.pods.pop(ip).kill)
        await self.c.delete(path("v1", "pods", NS, f"{DEPLOYMENT}-{ip.split('.')[-1]}"))
        await self.ready_count()

    async def ready_count(self) -> None:
        n = len(self.pods)
        url = path("apps/v1", "deployments", NS, DEPLOYMENT, "status")
        await self.c.patch(url, {"status": {"replicas": n, "readyReplicas": n}})

    def stop(self) -> None:
        for pod in self.pods.values():
            pod.stop()


@contextlib.asynccontextmanager
async def kubelet_running(k: Kubelet) -> AsyncIterator[None]:
    async def sync() -> None:
        while True:
            await k.project()
            await asyncio.sleep(0.3)

    task = asyncio.create_task(sync())
    try:
        yield
    finally:
        task.cancel()
        k.stop()


@pytest.fixture
def artifacts(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "artifacts"
    d.mkdir()
    yield d


def publish(artifacts: Path, adapter: Path, version_name: str) -> None:
    """What the trainer leaves on the artifacts PVC: the adapter folder, renamed in whole."""
    shutil.copytree(adapter, artifacts / f".{version_name}.tmp")
    (artifacts / f".{version_name}.tmp").rename(artifacts / version_name)


def version_status(st: dict[str, Any], name: str) -> dict[str, Any]:
    return next((v for v in st.get("versions") or [] if v["name"] == name), {})


async def test_a_second_lora_version_loads_into_the_running_pods_and_takes_over_by_name(
    kmock: Any, tiny_base: Path, adapters: dict[str, Path], artifacts: Path, tmp_path: Path
) -> None:
    port = free_port()
    k = Kubelet(Cluster(kmock), tiny_base, artifacts, tmp_path, port)
    await shared_lora_scenario(kmock, k, SPEC, [adapters[w] for w in WORDS[:2]], replicas=2)


async def shared_lora_scenario(
    kmock: Any, k: Kubelet, spec: dict[str, Any], trained: list[Path], replicas: int
) -> None:
    """The ChatModel `spec` (shared LoRA, canary 50%) with `replicas` pods started by `k`: v1's adapter
    (trained[0]) on every pod, v2's (trained[1]) loaded beside it for the canary, then promoted."""
    declare(kmock)
    c, artifacts, every = k.c, k.artifacts, f"{replicas}/{replicas}"
    config = Config(service_port=k.port, rollout_check_seconds=1.0, adapter_poll_seconds=0.5)
    spec = {**spec, "serving": {**spec["serving"], "replicas": {"min": replicas}}}
    spec_v2 = {**spec, "fineTune": {**spec["fineTune"], "dataset": {"source": "pvc://data/v2.jsonl"}}}
    v1, v2 = version("m", spec), version("m", spec_v2)
    async with operator(kmock, config), kubelet_running(k):
        await c.create(CM, manifest("m", spec))
        # The base Deployment and its (empty) table come at once; its pods warm up while v1 trains.
        await eventually(lambda: c.get(path("apps/v1", "deployments", NS, DEPLOYMENT)))
        first = [await k.start_pod(f"127.0.0.{2 + i}") for i in range(replicas)]
        publish(artifacts, trained[0], v1)
        await finish_job(c, f"m-{v1}-train", ok=True, message="{}")

        async def serving(v: str) -> dict[str, Any] | None:
            st = await status(c, "m")
            ok = st.get("activeVersion") == v and version_status(st, v).get("adapterLoaded") == every
            return st if ok and st.get("phase") == "Ready" else None

        await eventually(lambda: serving(v1), timeout=60)
        pids = [p.alive() for p in first]
        clients = [openai.OpenAI(base_url=p.url, api_key="none", max_retries=0) for p in first]

        def answered_by(client: openai.OpenAI) -> str:
            out = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], max_tokens=1
            )
            return out.model

        await eventually(
            lambda: asyncio.to_thread(lambda: all(answered_by(cl) == f"m-{v1}" for cl in clients))
        )
        # Version 2: trained, then loaded into the same pods; a canary shares the name "m".
        await c.patch(f"{CM}/m", {"spec": spec_v2})
        await eventually(lambda: c.get(path("batch/v1", "jobs", NS, f"m-{v2}-train")))
        publish(artifacts, trained[1], v2)
        await finish_job(c, f"m-{v2}-train", ok=True, message="{}")

        async def canary() -> dict[str, Any] | None:
            st = await status(c, "m")
            v = version_status(st, v2)
            return st if v.get("state") == "Canary" and v.get("adapterLoaded") == every else None

        st = await eventually(canary, timeout=60)
        assert version_status(st, v2)["trafficPercent"] == 50
        # The pods follow the table within a second or two of its change: both versions answer to "m".
        seen: set[str] = set()

        async def both() -> bool:
            seen.update(
                await asyncio.to_thread(lambda: {answered_by(cl) for cl in clients for _ in range(4)})
            )
            return seen == {f"m-{v1}", f"m-{v2}"}

        await eventually(both)
        assert all(f"m-{v2}" in p.served() for p in first)
        # Promoted after the analysis time: v1 retired and unloaded, every answer from v2.
        await eventually(lambda: serving(v2), timeout=60)
        await eventually(lambda: asyncio.to_thread(lambda: all(f"m-{v1}" not in p.served() for p in first)))
        assert {answered_by(cl) for cl in clients for _ in range(5)} == {f"m-{v2}"}
        assert version_status(await status(c, "m"), v1).get("state") == "Retired"
        # No new Deployment, no restart.
        deployments = await c.items(path("apps/v1", "deployments", NS))
        assert [d["metadata"]["name"] for d in deployments] == [DEPLOYMENT]
        assert [p.alive() for p in first] == pids and None not in pids
        # A pod killed and replaced: the new one comes up with the kept adapter before it is ready.
        await k.kill_pod("127.0.0.2")
        fresh = await k.start_pod(f"127.0.0.{2 + replicas}")
        assert f"m-{v2}" in fresh.served()
        await eventually(lambda: serving(v2), timeout=30)
        table = json.loads(await k.table())
        assert set(table["adapters"]) == {f"m-{v2}"} and table["aliases"] == {"m": {f"m-{v2}": 100}}
