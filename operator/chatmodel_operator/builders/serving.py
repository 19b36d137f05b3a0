"""Serving objects for one model version: Deployment, HPA, PDB; and the ChatModel's stable Service."""

from __future__ import annotations

from dataclasses import dataclass

from chatmodel_operator.builders import adapters, meta
from chatmodel_operator.builders.meta import Obj
from chatmodel_operator.builders.sources import Mounts, remote_env
from chatmodel_operator.config import Config
from chatmodel_operator.runtime_args import ServeOptions
from chatmodel_operator.spec import ChatModel, Serving

API_KEYS_DIR = "/etc/chatmodel/api-keys"
API_KEYS_FILE = f"{API_KEYS_DIR}/keys"
TLS_DIR = "/etc/chatmodel/tls"
TLS_VOLUME = "tls"
TLS_CERT, TLS_KEY = f"{TLS_DIR}/tls.crt", f"{TLS_DIR}/tls.key"


@dataclass(frozen=True)
class Runtime:
    """What differs between serving runtimes: the image, the subcommand and the health paths."""

    subcommand: str
    liveness_path: str
    readiness_path: str

    def image(self, config: Config, serving: Serving) -> str:
        if serving.image:
            return serving.image
        if self.subcommand == "triton":
            return config.triton_image
        return config.runtime_image_for(serving.resources.gpu)


RUNTIMES = {
    "pytorch": Runtime("serve", "/health", "/ready"),
    # The Triton image wraps tritonserver with the same flags and an OpenAI front end on the same port.
    "triton": Runtime("triton", "/health", "/ready"),
    # builders/vllm.py replaces the container's image, command and arguments; the pod shape is this one.
    "vllm": Runtime("serve", "/health", "/health"),
}


def serve_options(cm: ChatModel, model: str, config: Config, api_keys: bool) -> ServeOptions:
    """What `chatmodel serve` runs with in the pod; `model` is the model source as the pod sees it."""
    sv = cm.spec.serving
    access = cm.spec.access
    quota = access.quota if access is not None else None
    tls = access is not None and access.tls is not None
    opts = ServeOptions(
        models=[model],
        served_model_names=[cm.metadata.name],
        host="0.0.0.0",
        port=config.service_port,
        api_keys_file=API_KEYS_FILE if api_keys else None,
        dtype=sv.dtype,
        device="cuda" if sv.resources.gpu else "cpu",
        default_max_tokens=sv.generation.max_tokens,
        default_temperature=sv.generation.temperature,
        # In-flight requests get the pod's whole drain budget (terminationGracePeriodSeconds - preStop).
        drain_timeout=config.drain_seconds,
        ui=sv.ui,
        requests_per_minute=(quota.requests_per_minute or 0) if quota else 0,
        tokens_per_minute=(quota.tokens_per_minute or 0) if quota else 0,
        tls_cert_file=TLS_CERT if tls else None,
        tls_key_file=TLS_KEY if tls else None,
    )
    if sv.max_batch_size is not None:
        opts.max_batch_size = sv.max_batch_size
    if sv.max_waiting_requests is not None:
        opts.max_waiting_requests = sv.max_waiting_requests
    return opts


def serves_https(cm: ChatModel) -> bool:
    return cm.spec.access is not None and cm.spec.access.tls is not None


def probe(path: str, period: int, failures: int, https: bool = False) -> Obj:
    return {
        "httpGet": {"path": path, "port": "http", **({"scheme": "HTTPS"} if https else {})},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def _mount_artifacts(cm: ChatModel, mounts: Mounts, volumes: list[Obj]) -> None:
    claim = {"claimName": meta.pvc_name(cm), "readOnly": True}
    volumes.append({"name": "artifacts", "persistentVolumeClaim": claim})
    mounts.mounts.append({"name": "artifacts", "mountPath": meta.ARTIFACTS_MOUNT, "readOnly": True})


def _model_source(cm: ChatModel, version: str, mounts: Mounts, volumes: list[Obj], fine_tuned: bool) -> str:
    """The fine-tuned artifact on the PVC (read-only), or the base model itself."""
    if not fine_tuned:
        return mounts.resolve(cm.spec.base_model.source)
    _mount_artifacts(cm, mounts, volumes)
    return meta.artifact_path(version)


def _serve_adapters(cm: ChatModel, options: ServeOptions, mounts: Mounts, volumes: list[Obj]) -> None:
    """serving.lora.shared: the base under NAME-base, the versions' adapters from the table (the PVC's)."""
    _mount_artifacts(cm, mounts, volumes)
    volume, mount = adapters.table_volume(cm)
    volumes.append(volume)
    mounts.mounts.append(mount)
    lora = cm.spec.serving.lora
    options.served_model_names = [adapters.base_name(cm)]
    options.adapters_file = adapters.TABLE_FILE
    options.max_loras, options.max_lora_rank = lora.max_loras, lora.max_rank


def _spread(cm: ChatModel, version: str) -> list[Obj]:
    match = {"matchLabels": meta.selector(cm, "serving", version)}
    return [
        {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": match}
        for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
    ]


def uses_hpa(serving: Serving) -> bool:
    """Whether an autoscaler (an HPA, or KEDA's) owns the replica count."""
    scale_to_zero = serving.autoscaling.engine == "KEDA" and serving.replicas.min == 0
    return serving.replicas.ceiling > max(serving.replicas.min, 1) or scale_to_zero


@dataclass(frozen=True)
class Built:
    """A serving Deployment and the options its `server` container runs `chatmodel serve` with: the
    triton and vllm builders reshape the Deployment and take the model path and flags from `options`."""

    deployment: Obj
    options: ServeOptions

    @property
    def model(self) -> str:
        """The model source as the pod sees it (the fine-tuned artifact on the PVC, or the base model)."""
        return self.options.models[0]


def deployment(cm: ChatModel, version: str, config: Config, fine_tuned: bool | None = None) -> Obj:
    return build(cm, version, config, fine_tuned).deployment


def build(cm: ChatModel, version: str, config: Config, fine_tuned: bool | None = None) -> Built:
    sv = cm.spec.serving
    runtime = RUNTIMES[sv.runtime]
    mounts = Mounts()
    volumes: list[Obj] = []
    shared = version == adapters.SHARED
    tuned = cm.spec.fine_tune is not None if fine_tuned is None else fine_tuned
    model = _model_source(cm, version, mounts, volumes, tuned and not shared)
    access = cm.spec.access
    https = serves_https(cm)
    if access is not None:
        ref = access.api_key_secret_ref
        secret = {"secretName": ref.name, "items": [{"key": ref.key, "path": "keys"}], "defaultMode": 0o440}
        volumes.append({"name": "api-keys", "secret": secret})
        mounts.mounts.append({"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True})
        if access.tls is not None:
            tls = {"secretName": access.tls.secret_name, "defaultMode": 0o440}
            volumes.append({"name": TLS_VOLUME, "secret": tls})
            mounts.mounts.append({"name": TLS_VOLUME, "mountPath": TLS_DIR, "readOnly": True})
    scratch_vols, scratch_mounts = meta.scratch_volumes(sv.shm_size)
    options = serve_options(cm, model, config, access is not None)
    if shared:
        _serve_adapters(cm, options, mounts, volumes)
    container: Obj = {
        "name": "server",
        "image": runtime.image(config, sv),
        "imagePullPolicy": config.image_pull_policy,
        "command": ["chatmodel"],
        "args": [runtime.subcommand, *options.to_argv()],
        "ports": [{"name": "http", "containerPort": config.service_port, "protocol": "TCP"}],
        "env": [
            *meta.base_env(),
            *remote_env(cm.spec.base_model, cm.spec.base_model.source),
            *(e.model_dump(by_alias=True) for e in sv.env),
        ],
        "resources": meta.resources(sv.resources.gpu, sv.resources.cpu, sv.resources.memory),
        "securityContext": meta.container_security_context(),
        # Loading a model takes a while: the startup probe holds liveness off for up to 10 minutes.
        "startupProbe": probe(runtime.liveness_path, 5, 120, https),
        "livenessProbe": probe(runtime.liveness_path, 10, 3, https),
        "readinessProbe": probe(runtime.readiness_path, 5, 2, https),
        # Let endpoints drop the pod before SIGTERM; the server then drains in-flight requests.
        "lifecycle": {"preStop": {"sleep": {"seconds": config.prestop_seconds}}},
        "volumeMounts": scratch_mounts + mounts.mounts,
    }
    pod_labels = meta.labels(cm, "serving", version)
    pod = meta.pod_spec(
        config,
        [container],
        scratch_vols + mounts.volumes + volumes,
        terminationGracePeriodSeconds=config.prestop_seconds + config.drain_seconds,
        nodeSelector=dict(sv.node_selector),
        tolerations=meta.tolerations(sv.tolerations, sv.resources.gpu),
        topologySpreadConstraints=_spread(cm, version),
    )
    spec: Obj = {
        "selector": {"matchLabels": meta.selector(cm, "serving", version)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "revisionHistoryLimit": 3,
        "template": {
            "metadata": {
                "labels": pod_labels,
                "annotations": {
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(config.service_port),
                    "prometheus.io/path": "/metrics",
                },
            },
            "spec": pod,
        },
    }
    if not uses_hpa(sv):
        # With an HPA, replicas belong to it; writing them here would fight it on every apply.
        spec["replicas"] = sv.replicas.min
    obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta.metadata(cm, meta.deployment_name(cm, version), "serving", version),
        "spec": spec,
    }
    return Built(obj, options)


def service(cm: ChatModel, version: str | None, config: Config) -> Obj:
    """The stable endpoint; its selector names the version that receives traffic."""
    port = config.service_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta.metadata(cm, meta.service_name(cm), "serving"),
        "spec": {
            "type": "ClusterIP",
            "selector": meta.selector(cm, "serving", version),
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def pdb(cm: ChatModel, version: str) -> Obj | None:
    if cm.spec.serving.replicas.min < 2:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta.metadata(cm, meta.deployment_name(cm, version), "serving", version),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": meta.selector(cm, "serving", version)}},
    }
