"""Names, labels and the pod pieces every builder shares (restricted Pod Security Standard)."""

from __future__ import annotations

from typing import Any

from chatmodel_operator.config import Config
from chatmodel_operator.spec import API_VERSION, KIND, ChatModel, Toleration

DOMAIN = "chatmodel.dev"
NAME_LABEL = f"{DOMAIN}/name"
VERSION_LABEL = f"{DOMAIN}/version"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "chatmodel-operator"
ARTIFACTS_MOUNT = "/artifacts"
CACHE_MOUNT = "/cache"
GPU_RESOURCE = "nvidia.com/gpu"
# Where the Job controller keeps an Indexed Job pod's index (JOB_COMPLETION_INDEX is defined from it).
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"

Obj = dict[str, Any]


def service_name(cm: ChatModel) -> str:
    return cm.metadata.name


def deployment_name(cm: ChatModel, version: str) -> str:
    return f"{cm.metadata.name}-{version}"


def job_name(cm: ChatModel, version: str) -> str:
    return f"{cm.metadata.name}-{version}-train"


def pvc_name(cm: ChatModel) -> str:
    return f"{cm.metadata.name}-artifacts"


def artifact_path(version: str) -> str:
    return f"{ARTIFACTS_MOUNT}/{version}"


def namespace(cm: ChatModel) -> str:
    return cm.metadata.namespace or "default"


def labels(cm: ChatModel, component: str, version: str | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "chatmodel",
        "app.kubernetes.io/instance": cm.metadata.name,
        COMPONENT_LABEL: component,
        "app.kubernetes.io/part-of": "chatmodel",
        MANAGED_BY_LABEL: MANAGED_BY,
        NAME_LABEL: cm.metadata.name,
    }
    if version is not None:
        out["app.kubernetes.io/version"] = version
        out[VERSION_LABEL] = version
    return out


def selector(cm: ChatModel, component: str, version: str | None) -> dict[str, str]:
    """The stable subset of labels that selects pods (never app.kubernetes.io/version: it is cosmetic)."""
    out = {NAME_LABEL: cm.metadata.name, COMPONENT_LABEL: component}
    if version is not None:
        out[VERSION_LABEL] = version
    return out


def metadata(cm: ChatModel, name: str, component: str, version: str | None = None) -> Obj:
    """Object metadata with labels and, when the ChatModel has a uid (it came from a cluster), its owner."""
    meta: Obj = {"name": name, "namespace": namespace(cm), "labels": labels(cm, component, version)}
    uid = (cm.metadata.model_extra or {}).get("uid")
    if uid:
        meta["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": cm.metadata.name,
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return meta


def pod_security_context(config: Config) -> Obj:
    uid = config.run_as_user
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> Obj:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def resources(gpu: int, cpu: str, memory: str) -> Obj:
    limits: Obj = {"memory": memory}
    if gpu:
        limits[GPU_RESOURCE] = str(gpu)
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": limits}


def tolerations(items: list[Toleration], gpu: int) -> list[Obj]:
    out = [t.model_dump(by_alias=True, exclude_none=True) for t in items]
    if gpu and not any(t.get("key") == GPU_RESOURCE for t in out):
        # GPU nodes are commonly tainted with the resource name.
        out.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    return out


def scratch_volumes(shm_size: str | None) -> tuple[list[Obj], list[Obj]]:
    """Writable scratch space (the root filesystem is read-only): model cache, /tmp and /dev/shm."""
    volumes: list[Obj] = [{"name": "cache", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
    mounts: list[Obj] = [{"name": "cache", "mountPath": CACHE_MOUNT}, {"name": "tmp", "mountPath": "/tmp"}]
    if shm_size:
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}})
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    return volumes, mounts


def base_env() -> list[Obj]:
    return [
        {"name": "CHATMODEL_CACHE", "value": CACHE_MOUNT},
        {"name": "HF_HOME", "value": f"{CACHE_MOUNT}/hf"},
        {"name": "HOME", "value": "/tmp"},
    ]


def pod_spec(config: Config, containers: list[Obj], volumes: list[Obj], **extra: Any) -> Obj:
    """A pod spec that meets the restricted Pod Security Standard and has no API access."""
    spec: Obj = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(config),
        "containers": containers,
        "volumes": volumes,
    }
    spec.update({k: v for k, v in extra.items() if v})
    return spec
