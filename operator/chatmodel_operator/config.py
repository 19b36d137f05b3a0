"""One Config for the operator, read from the environment once (CHATMODEL_* variables)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

_PREFIX = "CHATMODEL_"


@dataclass(frozen=True)
class Config:
    # Namespaces to watch; empty means cluster-wide.
    namespaces: tuple[str, ...] = ()
    runtime_image: str = "ghcr.io/chatmodel/runtime:0.1.0"
    # The same runtime with a CUDA build of torch, for pods that ask for a GPU (resources.gpu > 0); the CPU
    # image stays slim for CPU pools.
    runtime_cuda_image: str = "ghcr.io/chatmodel/runtime-cuda:0.1.0"
    triton_image: str = "ghcr.io/chatmodel/runtime-triton:0.1.0"
    operator_image: str = "ghcr.io/chatmodel/operator:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    # The operator's own /metrics and its liveness endpoint (/healthz).
    metrics_port: int = 8080
    health_port: int = 8081
    # preStop sleep lets endpoints drop the pod before SIGTERM; the runtime then drains in-flight requests.
    prestop_seconds: int = 5
    drain_seconds: int = 60
    # Non-root identity for every pod (restricted Pod Security Standard); fsGroup makes PVCs writable.
    run_as_user: int = 1000
    service_port: int = 8000
    # Prometheus HTTP API for the canary live gate and KEDA triggers (e.g. http://prometheus.monitoring:9090).
    prometheus_url: str = ""
    # How often a ChatModel with a canary in progress is re-checked (the live gate is time-based).
    rollout_check_seconds: float = 30.0
    # The namespace's model cache (builders/model_cache.py): one PVC that hf:// and s3:// models are
    # downloaded into once; ReadWriteMany so that every replica on every node mounts it.
    model_cache_size: str = "100Gi"
    model_cache_storage_class: str = ""
    model_cache_access_mode: str = "ReadWriteMany"
    # A download that receives no byte for this long fails (its message says so) instead of hanging.
    download_stall_seconds: float = 300.0
    # How often a ChatModel whose model is downloading re-reads the download's progress.
    download_poll_seconds: float = 5.0
    # serving.lora.shared: how often a version whose adapter is not on every ready pod yet is re-checked
    # (the kubelet takes up to a minute to project a changed ConfigMap).
    adapter_poll_seconds: float = 5.0

    def runtime_image_for(self, gpus: int) -> str:
        """The PyTorch runtime image for a pod with `gpus` GPUs."""
        return self.runtime_cuda_image if gpus > 0 else self.runtime_image

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(_PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            if f.name == "namespaces":
                values[f.name] = tuple(n.strip() for n in raw.split(",") if n.strip())
            elif f.type in ("int", int):
                values[f.name] = int(raw)
            elif f.type in ("float", float):
                values[f.name] = float(raw)
            else:
                values[f.name] = raw
        return cls(**values)
