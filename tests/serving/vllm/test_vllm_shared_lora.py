"""serving.lora.shared with runtime vllm, end to end: the real kopf operator on kmock, and as the base
Deployment's pod the real vLLM CPU server (from .venv-vllm) beside our `chatmodel vllm-sidecar`, each
started with its container's own arguments from the Deployment the operator wrote. The scenario is the
pytorch runtime's (tests/serving/lora/test_lora_operator.py): v1's adapter loaded into the running pod
(adapterLoaded 1/1), v2 loaded beside it for a 50% canary of the name, promotion unloads v1 from vLLM,
no new Deployment and no restart, a pod killed and recreated comes back with the kept adapter.

One pod (two would mean two vLLM warm-ups on CI's 2 cores); a tiny random Llama with 64-wide heads (vLLM's
CPU attention has no 16-wide kernel) and two adapters our trainer writes for it in seconds."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from chatmodel_operator.runtime_args import VllmSidecarOptions
from chatmodel_serving.cli.vllm import vllm_python
from chatmodel_serving.launch import ReadyProcess, free_port
from tests.fuzz.tiny_model import write_tiny_model
from tests.operator.operator_kmock import Cluster
from tests.serving.lora.adapters import train_adapter
from tests.serving.lora.test_lora_operator import Kubelet, Pod, shared_lora_scenario
from tests.serving.vllm.test_vllm_server import _skip_or_fail

pytestmark = pytest.mark.slow

SPEC: dict[str, Any] = {
    "fineTune": {"dataset": {"source": "pvc://data/v1.jsonl"}, "method": "lora"},
    "serving": {"runtime": "vllm", "dtype": "float32", "lora": {"shared": True, "maxRank": 8, "maxLoras": 4}},
    "rollout": {"strategy": "Canary", "canaryPercent": 50, "analysisSeconds": 8},
}


class Vllm(ReadyProcess):
    """The pod's vLLM container: its arguments, with the local base model and this pod's address."""

    what = "vLLM server"

    def __init__(self, container: dict[str, Any], model: Path, ip: str, log: Path):
        super().__init__(log, ready_timeout=900.0)
        self.port = free_port()
        self.args = [*container["command"][1:], *container["args"]]  # after python3: -m vllm...
        for flag, value in (("--model", str(model)), ("--host", ip), ("--port", str(self.port))):
            self.args[self.args.index(flag) + 1] = value
        self.args += ["--max-num-seqs", "8"]  # the last one wins: a small CPU KV cache is enough
        self.env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        self.env |= {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
        self.url = f"http://{ip}:{self.port}"

    def command(self) -> list[str]:
        return [str(vllm_python()), *self.args]

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    @property
    def ready_url(self) -> str:
        return f"{self.url}/health"


class VllmPod:
    """vLLM, then the sidecar in front of it on the Service's port; ready when the sidecar's /ready is."""

    def __init__(self, vllm: Vllm, sidecar: Pod):
        self.vllm, self.sidecar = vllm, sidecar
        self.url = sidecar.url

    def alive(self) -> tuple[int, int] | None:
        """Both process ids while both run."""
        vllm, sidecar = self.vllm.proc, self.sidecar.alive()
        if vllm is None or vllm.poll() is not None or sidecar is None:
            return None
        return vllm.pid, sidecar

    def served(self) -> list[str]:
        """What vLLM itself lists (not the sidecar's view of it)."""
        cards = httpx.get(f"{self.vllm.url}/v1/models", timeout=10).json()["data"]
        return [str(c["id"]) for c in cards]

    def kill(self) -> None:
        for p in (self.sidecar, self.vllm):
            if p.proc is not None:
                p.proc.kill()
        self.stop()

    def stop(self) -> None:
        self.sidecar.stop()
        self.vllm.stop()


class VllmKubelet(Kubelet):
    def launch(self, ip: str, template: dict[str, Any]) -> Any:
        server, adapters = template["spec"]["containers"]
        assert server["command"][-1] == "vllm.entrypoints.openai.api_server"
        assert "--lora-modules" not in server["args"]  # the sidecar loads every adapter, at start too
        vllm = Vllm(server, self.base_model, ip, self.folder / f"{ip}-vllm.log").start()
        assert adapters["args"][0] == "vllm-sidecar"
        parser = argparse.ArgumentParser()
        VllmSidecarOptions.add_arguments(parser)
        opts = VllmSidecarOptions.from_args(parser.parse_args(adapters["args"][1:]))
        opts.adapters_file, opts.vllm_url = str(self.table_file(ip)), vllm.url
        sidecar = Pod(ip, opts.to_argv(exclude=("host", "port")), self.port, self.folder, "vllm-sidecar")
        try:
            sidecar.start()
        except BaseException:
            vllm.stop()
            raise
        return VllmPod(vllm, sidecar)


@pytest.fixture(scope="module")
def vllm_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _skip_or_fail()
    return write_tiny_model(tmp_path_factory.mktemp("vllm-lora-base") / "model", context=512, hidden_size=256)


async def test_a_second_lora_version_loads_into_the_running_vllm_pod_and_takes_over_by_name(
    kmock: Any, vllm_base: Path, tmp_path: Path
) -> None:
    trained = [train_adapter(vllm_base, tmp_path, word) for word in ("amber", "basalt")]
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    k = VllmKubelet(Cluster(kmock), vllm_base, artifacts, tmp_path, free_port())
    await shared_lora_scenario(kmock, k, SPEC, trained, replicas=1)
