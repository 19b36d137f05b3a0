"""The ChatModel API (chatmodel.dev/v1alpha1): the one place where field names, types, defaults and docs live.

The CRD in manifests/crds is generated from these models (`python -m chatmodel_operator.crd`), and the
serving/training side imports this module to run a manifest locally, so it must stay free of kopf and
kubernetes imports.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.alias_generators import to_camel, to_snake

GROUP = "chatmodel.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ChatModel"
PLURAL = "chatmodels"
SHORT_NAME = "chm"

DEFAULT_BASE_MODEL = "builtin://smollm2-135m"
# Model sources: builtin demo models, Hugging Face ids, a path on a PVC, or a path inside the image.
MODEL_SOURCE_PATTERN = r"^((builtin|hf|s3|pvc|file)://.+|/.+)$"
DATA_SOURCE_PATTERN = r"^((builtin|hf|s3|pvc|file)://.+|/.+)$"
URL_PATTERN = r"^https?://[^\s/]+(/\S*)?$"
# CPU: cores (up to 3 decimals) or whole millicores. Bytes: a whole, non-zero number with an optional suffix
# (the API server warns about fractional bytes and refuses a zero-sized claim), under 9.2e15 bytes: the
# server counts milli-bytes in an int64, so a larger value overflows and draws the same warning.
CPU_PATTERN = r"^([0-9]{1,6}(\.[0-9]{1,3})?|[0-9]{1,9}m)$"
BYTES_PATTERN = (
    r"^([1-9][0-9]{0,14}|[1-9][0-9]{0,11}(k|Ki)|[1-9][0-9]{0,8}(M|Mi)|[1-9][0-9]{0,5}(G|Gi)"
    r"|[1-9][0-9]{0,2}(T|Ti)|[1-9]P|[1-8]Pi)$"
)
# Kubernetes label keys ([prefix/]name) and values.
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
LABEL_KEY_PATTERN = rf"^({_DNS_LABEL}(\.{_DNS_LABEL})*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
# Printable ASCII but '=' (Kubernetes' relaxed environment variable names).
ENV_NAME_PATTERN = r"^[!-<>-~]+$"
# Variables the operator sets in serving containers itself; a second definition would hide one of them.
OPERATOR_ENV = (
    "CHATMODEL_CACHE",
    "HF_HOME",
    "HOME",
    "VLLM_CACHE_ROOT",
    "VLLM_NO_USAGE_STATS",
    "VLLM_CPU_KVCACHE_SPACE",
    "VLLM_API_KEY",
)
LabelValue = Annotated[str, StringConstraints(pattern=LABEL_VALUE_PATTERN, max_length=63)]

Phase = Literal["Pending", "FineTuning", "Deploying", "Ready", "Failed", "Degraded"]
PHASES: tuple[str, ...] = get_args(Phase)
# One model version's lifecycle (status.versions[].state).
VersionState = Literal[
    "Downloading", "Training", "Trained", "Failed", "Rejected", "Canary", "Serving", "Retired", "RolledBack"
]
# States whose weights exist and may serve again (spec.rollout.pinVersion may name them).
SERVABLE: tuple[VersionState, ...] = ("Trained", "Canary", "Serving", "Retired", "RolledBack")


def canary_running(status: Mapping[str, Any] | None) -> bool:
    """Whether a (raw) ChatModel status lists a version in its canary: time, not an event, moves it on."""
    return any(v.get("state") == "Canary" for v in (status or {}).get("versions") or [])


def adapters_pending(status: Mapping[str, Any] | None) -> bool:
    """Whether a (raw) status lists an adapter not on every ready pod yet (serving.lora.shared): the pods
    load it when the kubelet projects the new table, which no event announces."""
    for v in (status or {}).get("versions") or []:
        have, _, of = str(v.get("adapterLoaded") or "").partition("/")
        if of and have != of:
            return True
    return False


@dataclass(frozen=True)
class Rule:
    """A cross-field rule, written twice on purpose: as CEL for the API server (the CRD's
    x-kubernetes-validations) and as Python for code that reads manifests without one.
    Tests run both on the same manifests."""

    cel: str
    message: str
    check: Callable[[Any], bool]


class _Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are refused (the CRD prunes them)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")
    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Any:
        for rule in self.rules:
            if not rule.check(self):
                raise ValueError(rule.message)
        return self


class LocalObjectRef(_Model):
    """An object in the ChatModel's namespace, by name."""

    name: str = Field(min_length=1, max_length=253, pattern=SUBDOMAIN_PATTERN, description="Its name.")


class RemoteAccess(_Model):
    """How to reach an hf:// or s3:// source (ignored for the other sources)."""

    endpoint: str | None = Field(
        None,
        pattern=URL_PATTERN,
        max_length=2048,
        description="hf://: a Hugging Face hub or a hub-compatible mirror (default https://huggingface.co); "
        "s3://: an S3-compatible endpoint (default AWS S3).",
    )
    region: str | None = Field(None, max_length=64, description="s3:// only: the bucket's region.")
    path_style: bool | None = Field(
        None, description="s3:// only: the bucket in the URL path (default: MinIO, Ceph...); false: the host."
    )
    credentials_secret_ref: LocalObjectRef | None = Field(
        None,
        description="A Secret with HF_TOKEN (hf://) or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (s3://).",
    )


class ModelSource(RemoteAccess):
    """Where the base model comes from."""

    source: str = Field(
        DEFAULT_BASE_MODEL,
        pattern=MODEL_SOURCE_PATTERN,
        description="Model source: builtin://smollm2-135m, hf://org/name[@revision] (a commit, branch or "
        "tag; unpinned, the branch's commit at version time is part of the version), s3://bucket/prefix, "
        "pvc://claim/path, file:///path or an absolute path inside the runtime image.",
    )
    cache_policy: Literal["Keep", "Delete"] = Field(
        "Keep",
        description="hf:// and s3:// models are downloaded once into the namespace's model cache (a "
        "ReadWriteMany PVC). Keep leaves the download there when the ChatModel is deleted; Delete removes "
        "it (and its download Job) unless another ChatModel in the namespace uses the same download.",
    )


class Dataset(RemoteAccess):
    """Training data: a JSONL file of chat examples."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!(has(self.validationSplit) && has(self.validationSource))",
            "spec.fineTune.dataset: set validationSplit or validationSource, not both",
            lambda d: d.validation_split is None or d.validation_source is None,
        ),
    )
    source: str = Field(
        pattern=DATA_SOURCE_PATTERN,
        description="JSONL training data: pvc://claim/path/file.jsonl, hf://datasets/org/name[@revision]/"
        "file.jsonl, s3://bucket/key.jsonl, file:///path or builtin://name.",
    )
    validation_split: float | None = Field(
        None,
        ge=0.0,
        le=0.5,
        description="Fraction of the data held out for evaluation (0.1 when neither this nor "
        "validationSource is set).",
    )
    validation_source: str | None = Field(
        None, pattern=DATA_SOURCE_PATTERN, description="A separate JSONL file used for evaluation."
    )


class Hyperparameters(_Model):
    """Training hyperparameters."""

    epochs: int = Field(3, ge=1, le=100, description="Passes over the training data.")
    learning_rate: float = Field(2.0e-4, gt=0.0, le=1.0, description="Peak learning rate.")
    batch_size: int = Field(8, ge=1, le=1024, description="Examples per optimizer step.")
    max_seq_length: int = Field(1024, ge=16, le=32768, description="Longer examples are truncated.")


class Resources(_Model):
    """Compute for one pod."""

    gpu: int = Field(0, ge=0, le=16, description="NVIDIA GPUs (nvidia.com/gpu limit); 0 runs on CPU.")
    cpu: str = Field("1", pattern=CPU_PATTERN, description="CPU request, e.g. 500m or 2.")
    memory: str = Field("2Gi", pattern=BYTES_PATTERN, description="Memory request and limit, e.g. 4Gi.")


class TrainingResources(Resources):
    """Compute for the training pods: `gpu`, `cpu` and `memory` are per node."""

    cpu: str = Field("2", pattern=CPU_PATTERN, description="CPU request, e.g. 500m or 2.")
    memory: str = Field("4Gi", pattern=BYTES_PATTERN, description="Memory request and limit, e.g. 8Gi.")
    nodes: int = Field(
        1,
        ge=1,
        le=64,
        description="Nodes (one pod each) the fine-tune spans with torchrun; more than 1 needs "
        "spec.storage.accessMode ReadWriteMany. With gpu 0 the nodes train on CPUs (gloo).",
    )


class Toleration(_Model):
    """A pod toleration (core/v1 Toleration)."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "(has(self.key) && self.key != '') || self.operator == 'Exists'",
            "spec.fineTune/serving.tolerations: an empty key needs operator Exists",
            lambda t: bool(t.key) or t.operator == "Exists",
        ),
        Rule(
            "self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "spec.fineTune/serving.tolerations: operator Exists takes no value",
            lambda t: t.operator != "Exists" or not t.value,
        ),
        Rule(
            "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "spec.fineTune/serving.tolerations: tolerationSeconds needs effect NoExecute",
            lambda t: t.toleration_seconds is None or t.effect == "NoExecute",
        ),
    )
    key: str | None = Field(
        None,
        pattern=LABEL_KEY_PATTERN,
        max_length=317,
        description="Taint key; empty with operator Exists matches all taints.",
    )
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists or Equal.")
    value: str | None = Field(
        None, pattern=LABEL_VALUE_PATTERN, max_length=63, description="Taint value for operator Equal."
    )
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        None, ge=0, le=31536000, description="How long a NoExecute taint is tolerated."
    )


class EnvVar(_Model):
    """An environment variable for the container."""

    name: str = Field(min_length=1, max_length=253, pattern=ENV_NAME_PATTERN, description="Variable name.")
    value: str = Field("", description="Variable value.")


_LABEL_KEY = re.compile(LABEL_KEY_PATTERN.removeprefix("^").removesuffix("$"))


def _cel_string(text: str) -> str:
    """`text` inside a single-quoted CEL string literal (CEL knows no `\\.` escape)."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


def label_keys_rule(field: str, path: str) -> Rule:
    """Every key of the map `field` is a Kubernetes label key (the schema checks the values)."""
    return Rule(
        f"!has(self.{field}) || "
        f"self.{field}.all(k, k.size() <= 317 && k.matches('{_cel_string(LABEL_KEY_PATTERN)}'))",
        f"{path}: keys must be label keys ([prefix/]name, the name at most 63 characters)",
        lambda m: all(len(k) <= 317 and _LABEL_KEY.fullmatch(k) for k in getattr(m, to_snake(field))),
    )


class Placement(_Model):
    """Scheduling knobs shared by the training and serving pods."""

    rules: ClassVar[tuple[Rule, ...]] = (
        label_keys_rule("nodeSelector", "spec.fineTune/serving.nodeSelector"),
    )
    node_selector: dict[str, LabelValue] = Field(
        default_factory=dict, max_length=32, description="Node labels the pods require."
    )
    tolerations: list[Toleration] = Field(default_factory=list, description="Taints the pods tolerate.")


class FineTune(Placement):
    """Fine-tune the base model in a Job before serving it; absent serves the base model as is."""

    dataset: Dataset = Field(description="Training data.")
    method: Literal["lora", "full"] = Field("lora", description="lora: an adapter; full: all weights.")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters, description="Training knobs.")
    resources: TrainingResources = Field(
        default_factory=TrainingResources, description="Compute for the training pod."
    )
    backoff_limit: int = Field(2, ge=0, le=10, description="Pod retries before the Job fails.")
    active_deadline_seconds: int = Field(
        86400, ge=60, le=604800, description="Wall-clock limit of the training Job, in seconds."
    )
    image: str | None = Field(None, description="Trainer image; defaults to the operator's runtime image.")
    engine: Literal["job", "kubeflow"] = Field(
        "job",
        description="job: a batch/v1 Job (an Indexed Job plus a headless Service across nodes); "
        "kubeflow: a Kubeflow Trainer TrainJob on the torch-distributed ClusterTrainingRuntime; its "
        "Complete/Failed conditions (and failure message) move the version on as a Job's do.",
    )
    queue_name: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        max_length=63,
        description="Kueue LocalQueue: the training workload is created suspended with the "
        "kueue.x-k8s.io/queue-name label, and Kueue admits all its pods at once.",
    )


class Replicas(_Model):
    """Replica bounds; the autoscaler moves between them."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.max) || self.min <= self.max",
            "spec.serving.replicas.min must be <= max",
            lambda r: r.max is None or r.min <= r.max,
        ),
    )
    min: int = Field(
        1,
        ge=0,
        le=100,
        description="Fewest replicas; 0 scales to zero through KEDA (an HPA's floor is 1). "
        "The scale subresource (kubectl scale chm/NAME --replicas=N) sets this field.",
    )
    # Absent rather than 1 by default, so `kubectl scale` can raise min on a ChatModel written with defaults.
    max: int | None = Field(
        None, ge=1, le=100, description="Most replicas; above min an HPA is created. Absent: the same as min."
    )

    @property
    def ceiling(self) -> int:
        """The most replicas: max, or min when max is absent (never below 1)."""
        return max(self.max if self.max is not None else self.min, 1)


class Autoscaling(_Model):
    """What the autoscaler tracks when max > min (or min is 0)."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!(self.metric in ['cpu', 'kvCacheUsage']) || self.target <= 100",
            "spec.serving.autoscaling.target is a percentage (1-100) for cpu and kvCacheUsage",
            lambda a: a.metric not in ("cpu", "kvCacheUsage") or a.target <= 100,
        ),
    )
    metric: Literal["requestsWaiting", "requestsRunning", "kvCacheUsage", "cpu"] = Field(
        "requestsWaiting",
        description="requestsWaiting/requestsRunning/kvCacheUsage read the runtime's Prometheus metrics "
        "(HPA: via prometheus-adapter; KEDA: PromQL); cpu uses CPU utilisation.",
    )
    target: int = Field(
        4, ge=1, le=1000, description="Target per pod: requests, or a percent for kvCacheUsage and cpu."
    )
    engine: Literal["HPA", "KEDA"] = Field(
        "HPA", description="HPA: an autoscaling/v2 HPA; KEDA: a ScaledObject with a Prometheus trigger."
    )
    scale_down_stabilization_seconds: int = Field(
        300, ge=0, le=3600, description="Load must stay low this long before replicas are removed."
    )


class Generation(_Model):
    """Defaults for requests that leave them out."""

    max_tokens: int = Field(512, ge=1, le=32768, description="Default max_tokens.")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Default sampling temperature.")


# Arguments of the vLLM server that the operator sets itself (the pod's port, model, keys and name).
VLLM_OWNED_ARGS = ("--port", "--model", "--api-key", "--served-model-name")


def _owns(arg: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for flag in VLLM_OWNED_ARGS)


_OWNED_CEL = ", ".join(f"'{a}'" for a in VLLM_OWNED_ARGS)
_OWNED_PREFIX_CEL = " || ".join(f"a.startsWith('{a}=')" for a in VLLM_OWNED_ARGS)


class Vllm(_Model):
    """vLLM settings, read when serving.runtime is vllm."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.extraArgs) || "
            f"self.extraArgs.all(a, !(a in [{_OWNED_CEL}]) && !({_OWNED_PREFIX_CEL}))",
            "spec.serving.vllm.extraArgs may not set "
            + ", ".join(VLLM_OWNED_ARGS)
            + ": the operator sets them",
            lambda v: not any(_owns(a) for a in v.extra_args),
        ),
    )
    image: str | None = Field(
        None, description="vLLM image; defaults to vLLM's OpenAI server image, or its CPU image without GPUs."
    )
    max_model_len: int | None = Field(
        None, ge=16, le=1048576, description="Context length; empty takes the model's own."
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0.0, le=1.0, description="Share of each GPU's memory vLLM may take (GPU pods only)."
    )
    cpu_kv_cache_space: int = Field(
        4, ge=1, le=1024, description="GiB of KV cache on CPU pods (VLLM_CPU_KVCACHE_SPACE)."
    )
    extra_args: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="More vLLM server arguments, e.g. --enable-prefix-caching.",
    )


class Gateway(_Model):
    """Gateway API Inference Extension routing: an InferencePool per serving version and an HTTPRoute."""

    name: str = Field(
        pattern=NAME_PATTERN, max_length=253, description="The Gateway the HTTPRoute attaches to."
    )
    namespace: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        max_length=63,
        description="The Gateway's namespace; absent is the ChatModel's.",
    )
    endpoint_picker: str = Field(
        pattern=NAME_PATTERN,
        max_length=253,
        description="Service of the endpoint picker (EPP) the InferencePools delegate pod choice to.",
    )
    endpoint_picker_port: int = Field(9002, ge=1, le=65535, description="The endpoint picker's gRPC port.")


class LoraServing(_Model):
    """How LoRA versions (fineTune.method lora) serve."""

    shared: bool = Field(
        False,
        description=(
            "true: every version is an adapter loaded into the running pods of one base Deployment (runtime "
            "pytorch, or vllm with a sidecar that loads them through vLLM's runtime LoRA endpoints), chosen "
            "by model name, its traffic share moved without a pod restart; false: each version its own "
            "Deployment."
        ),
    )
    max_loras: int = Field(8, ge=1, le=256, description="Adapters on the device at once (shared); more wait.")
    max_rank: int = Field(64, ge=1, le=512, description="Highest adapter rank the pods accept (shared).")


_OPERATOR_ENV_CEL = ", ".join(f"'{n}'" for n in OPERATOR_ENV)


class Serving(Placement):
    """How the model is served."""

    rules: ClassVar[tuple[Rule, ...]] = (
        *Placement.rules,
        Rule(
            f"!has(self.env) || self.env.all(e, !(e.name in [{_OPERATOR_ENV_CEL}]))",
            "spec.serving.env may not set " + ", ".join(OPERATOR_ENV) + ": the operator sets them",
            lambda s: not any(e.name in OPERATOR_ENV for e in s.env),
        ),
        Rule(
            "!has(self.env) || self.env.all(e, self.env.exists_one(f, f.name == e.name))",
            "spec.serving.env: each name at most once",
            lambda s: len({e.name for e in s.env}) == len(s.env),
        ),
        Rule(
            "self.replicas.min > 0 || (has(self.autoscaling) && self.autoscaling.engine == 'KEDA')",
            "spec.serving.replicas.min 0 needs spec.serving.autoscaling.engine KEDA (HPAs stop at 1)",
            lambda s: s.replicas.min > 0 or s.autoscaling.engine == "KEDA",
        ),
        Rule(
            "!has(self.autoscaling) || self.autoscaling.engine != 'KEDA' || self.autoscaling.metric != 'cpu'",
            "spec.serving.autoscaling: engine KEDA scales on a Prometheus metric, not cpu",
            lambda s: s.autoscaling.engine != "KEDA" or s.autoscaling.metric != "cpu",
        ),
        Rule(
            "!has(self.vllm) || (has(self.runtime) && self.runtime == 'vllm')",
            "spec.serving.vllm is read only when spec.serving.runtime is vllm",
            lambda s: s.vllm is None or s.runtime == "vllm",
        ),
        Rule(
            "!has(self.vllm) || !has(self.vllm.gpuMemoryUtilization) "
            "|| (has(self.resources) && has(self.resources.gpu) && self.resources.gpu > 0)",
            "spec.serving.vllm.gpuMemoryUtilization needs spec.serving.resources.gpu > 0",
            lambda s: s.vllm is None or s.vllm.gpu_memory_utilization is None or s.resources.gpu > 0,
        ),
    )
    runtime: Literal["pytorch", "triton", "vllm"] = Field(
        "pytorch", description="Serving runtime: pytorch (ours), triton, or vllm."
    )
    vllm: Vllm | None = Field(None, description="vLLM settings (runtime vllm); empty takes the defaults.")
    replicas: Replicas = Field(default_factory=Replicas, description="Replica bounds.")
    autoscaling: Autoscaling = Field(default_factory=Autoscaling, description="Autoscaling target.")
    resources: Resources = Field(default_factory=Resources, description="Compute per serving pod.")
    generation: Generation = Field(default_factory=Generation, description="Generation defaults.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight dtype; auto picks bfloat16 where the hardware supports it."
    )
    max_batch_size: int | None = Field(None, ge=1, le=1024, description="Most sequences decoded together.")
    max_waiting_requests: int | None = Field(
        None, ge=1, le=100000, description="Queue bound; beyond it requests get 429."
    )
    shm_size: str = Field("1Gi", pattern=BYTES_PATTERN, description="Size of the /dev/shm memory volume.")
    image: str | None = Field(None, description="Serving image; defaults to the operator's runtime image.")
    ui: bool = Field(True, description="Serve the playground chat page at / (pytorch and triton runtimes).")
    env: list[EnvVar] = Field(
        default_factory=list, max_length=64, description="Extra environment variables (names unique)."
    )
    gateway: Gateway | None = Field(
        None, description="Route through a Gateway with an InferencePool; canary weights go in the HTTPRoute."
    )
    lora: LoraServing = Field(default_factory=LoraServing, description="How LoRA versions serve.")


class SecretKeyRef(_Model):
    """A key of a Secret in the ChatModel's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=NAME_PATTERN, description="Secret name.")
    key: str = Field(
        "keys",
        min_length=1,
        max_length=253,
        pattern=SECRET_KEY_PATTERN,
        description="Key holding the API keys, one per line.",
    )


class Quota(_Model):
    """Per-API-key limits, enforced by each serving replica over a sliding minute (429 with Retry-After)."""

    requests_per_minute: int | None = Field(
        None, ge=1, le=10_000_000, description="Requests per key per minute."
    )
    tokens_per_minute: int | None = Field(
        None, ge=1, le=10_000_000_000, description="Prompt + completion tokens per key per minute."
    )


class Tls(_Model):
    """HTTPS on the serving port, with a certificate from a Secret."""

    secret_name: str = Field(
        min_length=1,
        max_length=253,
        pattern=NAME_PATTERN,
        description="A kubernetes.io/tls Secret (tls.crt, tls.key) in the ChatModel's namespace.",
    )


NamespaceName = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=63)]


class NetworkPolicy(_Model):
    """Admit traffic to the serving port only from these namespaces and pods (a NetworkPolicy; the cluster's
    network plugin must enforce NetworkPolicies). Both empty admits no one."""

    rules: ClassVar[tuple[Rule, ...]] = (
        label_keys_rule("allowPodLabels", "spec.access.networkPolicy.allowPodLabels"),
    )

    allow_namespaces: list[NamespaceName] = Field(
        default_factory=list,
        max_length=32,
        description="Namespaces whose pods may connect: the gateway's, Prometheus' (it scrapes this port).",
    )
    allow_pod_labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        max_length=32,
        description="Pods of the ChatModel's namespace with these labels may connect.",
    )


class Access(_Model):
    """Who may call the model, and how."""

    api_key_secret_ref: SecretKeyRef = Field(
        description="Secret with the accepted bearer API keys, one per line; a line may add its own "
        "quota as `KEY rpm=N tpm=N`."
    )
    quota: Quota | None = Field(None, description="Default per-key quota (pytorch and triton runtimes).")
    tls: Tls | None = Field(None, description="Serve HTTPS with this certificate.")
    network_policy: NetworkPolicy | None = Field(
        None, description="A NetworkPolicy admitting only the named namespaces and pods."
    )


class Gate(_Model):
    """A fine-tuned version is served only if it passes this gate."""

    max_eval_loss: float | None = Field(None, gt=0.0, description="Refuse a higher eval loss.")
    require_improvement: bool = Field(
        False, description="Refuse versions whose eval loss is not below the base model's."
    )
    max_regression: float | None = Field(
        None,
        ge=0.0,
        description="Refuse versions whose eval loss exceeds the serving version's by more than this.",
    )

    def refusal(
        self, loss: float | None, before: float | None, serving_loss: float | None = None
    ) -> str | None:
        """Why a version with this eval loss (the base model's was `before`; the serving version's is
        `serving_loss`) may not serve, or None. The operator and `chatmodel run` both ask here."""
        if self.max_eval_loss is not None and (loss is None or loss > self.max_eval_loss):
            return f"eval loss {loss} is above the gate's maxEvalLoss {self.max_eval_loss}"
        if self.require_improvement and (loss is None or before is None or loss >= before):
            return f"eval loss {loss} does not improve on the base model's {before}"
        tolerance = self.max_regression
        if (
            tolerance is not None
            and serving_loss is not None
            and (loss is None or loss > serving_loss + tolerance)
        ):
            return (
                f"eval loss {loss} is worse than the serving version's {serving_loss} "
                f"by more than maxRegression {tolerance}"
            )
        return None


class LiveGate(_Model):
    """Checked on the canary's own pods (Prometheus) before it gets all the traffic."""

    max_error_rate: float = Field(0.01, ge=0.0, le=1.0, description="Highest share of 5xx responses.")
    max_p95_latency_seconds: float | None = Field(
        None, gt=0.0, description="Highest p95 end-to-end request latency, in seconds."
    )
    min_requests: int = Field(
        1,
        ge=0,
        le=1_000_000_000,
        description="Requests the canary must have answered in the window before it is judged.",
    )
    window_seconds: int = Field(300, ge=10, le=86400, description="PromQL range the figures cover.")


class Rollout(_Model):
    """How traffic moves to a new version."""

    strategy: Literal["Replace", "Canary"] = Field(
        "Replace",
        description="Replace: the new version becomes Ready, then takes all traffic. Canary: canaryPercent "
        "first, then all of it once analysisSeconds pass and the live gate holds.",
    )
    canary_percent: int = Field(10, ge=1, le=99, description="New version share (canary).")
    analysis_seconds: int = Field(
        300, ge=0, le=86400, description="How long a canary serves before the live gate decides."
    )
    gate: Gate | None = Field(None, description="Quality gate for fine-tuned versions.")
    live_gate: LiveGate | None = Field(None, description="Error rate and latency gate during a canary.")
    pin_version: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{10}$",
        description="Serve this version (a digest from status.versions) instead of the spec's: a rollback.",
    )
    history_limit: int = Field(3, ge=1, le=20, description="Versions kept (status, Deployments, Jobs).")


class Storage(_Model):
    """The PersistentVolumeClaim holding fine-tuned artifacts (one folder per version)."""

    size: str = Field("10Gi", pattern=BYTES_PATTERN, description="Requested capacity, e.g. 10Gi.")
    storage_class_name: str | None = Field(
        None,
        pattern=SUBDOMAIN_PATTERN,
        max_length=253,
        description="StorageClass; absent uses the cluster default.",
    )
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"] = Field(
        "ReadWriteOnce", description="Use ReadWriteMany to spread serving replicas across nodes."
    )


class ChatModelSpec(_Model):
    """Desired state of a ChatModel."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.rollout) || !has(self.rollout.gate) || has(self.fineTune)",
            "spec.rollout.gate needs spec.fineTune: only fine-tuned versions are gated",
            lambda s: s.rollout.gate is None or s.fine_tune is not None,
        ),
        Rule(
            "!has(self.fineTune) || self.fineTune.method != 'lora' || !has(self.serving) "
            "|| self.serving.runtime != 'triton'",
            "spec.serving.runtime triton serves merged weights only: use fineTune.method full",
            lambda s: s.fine_tune is None or s.fine_tune.method != "lora" or s.serving.runtime != "triton",
        ),
        Rule(
            "!has(self.serving) || !has(self.serving.lora) || !has(self.serving.lora.shared) "
            "|| !self.serving.lora.shared || (has(self.fineTune) && (!has(self.fineTune.method) "
            "|| self.fineTune.method == 'lora') && (!has(self.serving.runtime) "
            "|| self.serving.runtime != 'triton') && !has(self.serving.gateway))",
            "spec.serving.lora.shared serves LoRA fine-tunes (spec.fineTune.method lora) on runtime pytorch "
            "or vllm, without spec.serving.gateway (its InferencePools are per version)",
            lambda s: (
                not s.serving.lora.shared
                or (
                    s.fine_tune is not None
                    and s.fine_tune.method == "lora"
                    and s.serving.runtime != "triton"
                    and s.serving.gateway is None
                )
            ),
        ),
        Rule(
            "!has(self.serving) || !has(self.serving.lora) || !has(self.serving.lora.shared) "
            "|| !self.serving.lora.shared || !has(self.rollout) || !has(self.rollout.liveGate)",
            "spec.rollout.liveGate reads each version's own pods, and spec.serving.lora.shared pods serve "
            "every version: not both yet",
            lambda s: not s.serving.lora.shared or s.rollout.live_gate is None,
        ),
        Rule(
            "!has(self.access) || !has(self.access.quota) || !has(self.serving) "
            "|| !has(self.serving.runtime) || self.serving.runtime != 'vllm'",
            "spec.access.quota is enforced by our API front: runtime vllm has none (use a gateway's limits)",
            lambda s: s.access is None or s.access.quota is None or s.serving.runtime != "vllm",
        ),
        Rule(
            "!has(self.fineTune) || !has(self.fineTune.resources) || !has(self.fineTune.resources.nodes) "
            "|| self.fineTune.resources.nodes == 1 || (has(self.storage) && has(self.storage.accessMode) "
            "&& self.storage.accessMode == 'ReadWriteMany')",
            "spec.fineTune.resources.nodes > 1 needs spec.storage.accessMode ReadWriteMany: "
            "every node mounts the artifact volume",
            lambda s: (
                s.fine_tune is None
                or s.fine_tune.resources.nodes == 1
                or s.storage.access_mode == "ReadWriteMany"
            ),
        ),
    )
    base_model: ModelSource = Field(default_factory=ModelSource, description="The model to start from.")
    fine_tune: FineTune | None = Field(None, description="Optional fine-tune; absent serves the base model.")
    serving: Serving = Field(default_factory=Serving, description="Serving settings.")
    access: Access | None = Field(None, description="API keys; absent leaves the endpoint open.")
    rollout: Rollout = Field(default_factory=Rollout, description="Version rollout rules.")
    storage: Storage = Field(default_factory=Storage, description="Artifact storage for fine-tuned versions.")


# ---- status ----------------------------------------------------------------------------------------------


class Condition(_Model):
    """A Kubernetes-style condition."""

    type: str = Field(description="Ready, FineTuned, Available or Progressing.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason.")
    message: str = Field("", description="Human-readable detail.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(None, description="Generation this condition reflects.")


class VersionStatus(_Model):
    """One model version (a content hash of baseModel + fineTune)."""

    name: str = Field(description="Version name: the content digest.")
    base_model: str = Field(description="Base model source of this version.")
    state: VersionState = Field(description="Lifecycle state of this version.")
    fine_tuned: bool | None = Field(None, description="Whether it serves fine-tuned weights (artifacts PVC).")
    eval_loss: float | None = Field(None, description="Eval loss after fine-tuning.")
    eval_loss_before: float | None = Field(None, description="Eval loss of the base model.")
    message: str | None = Field(None, description="Why the version failed or was rejected.")
    created_at: str | None = Field(None, description="When the operator first saw this version.")
    canary_started_at: str | None = Field(None, description="When its canary first got traffic.")
    traffic_percent: int | None = Field(None, description="Share of traffic during its canary.")
    error_rate: float | None = Field(None, description="Share of 5xx answers its pods gave (live gate).")
    p95_latency_seconds: float | None = Field(
        None, description="p95 request latency of its pods (live gate)."
    )
    requests: float | None = Field(None, description="Requests its pods answered in the live-gate window.")
    adapter_loaded: str | None = Field(
        None, description="serving.lora.shared: ready serving pods with its adapter loaded, of all (3/3)."
    )


class DownloadStatus(_Model):
    """The base model's download into the namespace's model cache (hf:// and s3:// sources)."""

    requested: str = Field(description="spec.baseModel.source as written.")
    source: str = Field(description="What is downloaded: an hf:// source with its resolved commit.")
    revision: str | None = Field(None, description="The commit (hf://) or listing digest (s3://).")
    resolved_generation: int | None = Field(
        None, description="The spec generation whose source was resolved (a new one resolves again)."
    )
    state: Literal["Pending", "Downloading", "Succeeded", "Failed"] = Field(description="Download state.")
    job: str | None = Field(None, description="The download Job (shared by every user of the download).")
    bytes_done: int | None = Field(None, description="Bytes in the cache so far.")
    bytes_total: int | None = Field(None, description="Bytes of every file.")
    files_done: int | None = Field(None, description="Files complete.")
    files_total: int | None = Field(None, description="Files in the download.")
    path: str | None = Field(None, description="The downloaded folder on the model cache PVC.")
    message: str | None = Field(None, description="The store's own error, when it failed.")


class ChatModelStatus(_Model):
    """Observed state of a ChatModel."""

    # Status is the operator's own record: tolerate fields written by other tools (or older versions).
    model_config = ConfigDict(extra="ignore")

    phase: Phase | None = Field(None, description="Lifecycle phase.")
    message: str | None = Field(None, description="Why the ChatModel is in this phase.")
    observed_generation: int | None = Field(None, description="The spec generation last reconciled.")
    active_version: str | None = Field(None, description="Version receiving traffic.")
    target_version: str | None = Field(None, description="Version the spec asks for.")
    versions: list[VersionStatus] = Field(default_factory=list, description="Known versions, newest first.")
    endpoint: str | None = Field(None, description="OpenAI-compatible base URL inside the cluster.")
    replicas: int | None = Field(None, description="Serving pods of the active version.")
    ready_replicas: int | None = Field(None, description="Ready serving pods of the active version.")
    selector: str | None = Field(None, description="Label selector of the serving pods (scale subresource).")
    conditions: list[Condition] = Field(default_factory=list, description="Ready, FineTuned, Available...")
    download: DownloadStatus | None = Field(None, description="The base model's download, if remote.")


class Metadata(BaseModel):
    """The part of metadata a manifest needs; the rest is kept as is."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(pattern=NAME_PATTERN, max_length=40)
    namespace: str | None = None


class ChatModel(BaseModel):
    """A whole ChatModel manifest."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")
    api_version: Literal["chatmodel.dev/v1alpha1"] = Field("chatmodel.dev/v1alpha1", alias="apiVersion")
    kind: Literal["ChatModel"] = "ChatModel"
    metadata: Metadata
    spec: ChatModelSpec = Field(default_factory=ChatModelSpec)
    status: ChatModelStatus | None = None


def model_version(spec: ChatModelSpec, revisions: Mapping[str, str] | None = None) -> str:
    """Short content hash of what changes the weights: the base model and the fine-tune recipe, plus the
    revisions that hf:// and s3:// sources resolved to (`revisions`: source -> commit or listing digest),
    so a branch that moves makes a new version instead of changing one silently.

    Resources, scheduling, retries and images do not change the model, so they are left out: changing them
    never retrains.
    """
    recipe: dict[str, Any] = {"baseModel": spec.base_model.source}
    if revisions:
        recipe["revisions"] = dict(revisions)
    if spec.fine_tune is not None:
        # Where the data is and how to sign in do not change the weights (its revision does, above).
        data = {"source", "validation_split", "validation_source"}
        recipe["fineTune"] = spec.fine_tune.model_dump(
            by_alias=True, include={"dataset": data, "method": True, "hyperparameters": True}
        )
    blob = json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def parse_manifest(doc: dict[str, Any]) -> ChatModel:
    """Validate one manifest dict (raises pydantic.ValidationError naming the bad field)."""
    return ChatModel.model_validate(doc)


def load_manifests(path: str | Path) -> list[ChatModel]:
    """Every ChatModel document in a (multi-document) YAML file; other kinds are skipped."""
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for i, d in enumerate(docs, 1):
        if not isinstance(d, dict):
            where = f"document {i}" if len(docs) > 1 else "the document"
            raise ValueError(f"{path}: {where} is not a Kubernetes object (a mapping)")
    return [parse_manifest(d) for d in docs if d.get("kind") == KIND]


def load_manifest(path: str | Path) -> ChatModel:
    """The single ChatModel in a YAML file (the first one when there are several)."""
    models = load_manifests(path)
    if not models:
        raise ValueError(f"{path}: no document of kind {KIND}")
    return models[0]
