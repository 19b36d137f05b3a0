"""The namespace's model cache: one ReadWriteMany PVC per namespace, filled by one download Job per
(source, resolved revision, endpoint), which every replica and every version (of every ChatModel in the
namespace) that uses that source then mounts read-only.

Why a PVC per namespace and not a cluster-wide cache object: Secrets (hub tokens, S3 keys) are
namespaced, so a download runs where its credentials are; a team's quota covers its own cache; and it is
one ordinary PVC a platform team already knows how to size, back up and delete. Neither the PVC nor the
download Jobs have an owner: they outlive ChatModels and versions (spec.baseModel.cachePolicy says what
goes when a ChatModel is deleted)."""

from __future__ import annotations

import hashlib
import posixpath

from chatmodel_operator.builders import meta
from chatmodel_operator.builders.meta import DOMAIN, MANAGED_BY, MANAGED_BY_LABEL, Obj
from chatmodel_operator.builders.sources import remote_env
from chatmodel_operator.config import Config
from chatmodel_operator.download_contract import download_argv
from chatmodel_operator.spec import RemoteAccess

CACHE_PVC = "chatmodel-model-cache"
CACHE_MOUNT = "/model-cache"
DOWNLOAD_COMPONENT = "model-download"
CACHE_PRUNE_COMPONENT = "model-cache-prune"
CACHE_COMPONENT = "model-cache"
CACHE_KEY_LABEL = f"{DOMAIN}/cache-key"
SOURCE_ANNOTATION = f"{DOMAIN}/source"
DOWNLOAD_CONTAINER = "download"
# `chatmodel download` exits 2 for a refused source (unknown repo or revision, denied bucket): retrying
# cannot help, so the Job fails at once. Other failures (a node lost, a store's 5xx) are retried.
BAD_SOURCE_EXIT_CODE = 2
DOWNLOAD_BACKOFF_LIMIT = 3


def cache_key(source: str, endpoint: str | None) -> str:
    """One cache entry's key: the resolved source (an hf:// commit, an s3:// prefix) and where it is."""
    return hashlib.sha256(f"{source}\n{endpoint or ''}".encode()).hexdigest()[:16]


def download_job_name(source: str, endpoint: str | None) -> str:
    return f"chatmodel-download-{cache_key(source, endpoint)}"


def _shared_metadata(namespace: str, name: str, component: str) -> Obj:
    labels = {
        "app.kubernetes.io/name": "chatmodel",
        meta.COMPONENT_LABEL: component,
        "app.kubernetes.io/part-of": "chatmodel",
        MANAGED_BY_LABEL: MANAGED_BY,
    }
    return {"name": name, "namespace": namespace, "labels": labels}


def cache_pvc(namespace: str, config: Config) -> Obj:
    spec: Obj = {
        "accessModes": [config.model_cache_access_mode],
        "resources": {"requests": {"storage": config.model_cache_size}},
    }
    if config.model_cache_storage_class:
        spec["storageClassName"] = config.model_cache_storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _shared_metadata(namespace, CACHE_PVC, CACHE_COMPONENT),
        "spec": spec,
    }


def _cache_volume() -> Obj:
    return {"name": "model-cache", "persistentVolumeClaim": {"claimName": CACHE_PVC}}


def download_job(namespace: str, source: str, access: RemoteAccess, config: Config) -> Obj:
    """The Job that downloads `source` (its revision resolved) into the cache, once for everyone."""
    scratch_vols, scratch_mounts = meta.scratch_volumes(None)
    container: Obj = {
        "name": DOWNLOAD_CONTAINER,
        "image": config.runtime_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": download_argv(source, CACHE_MOUNT, config.download_stall_seconds),
        "env": [*meta.base_env(), *remote_env(access, source)],
        "resources": meta.resources(0, "500m", "1Gi"),
        "securityContext": meta.container_security_context(),
        # The result (path, revision, sizes) or the store's refusal, read back by the operator.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "model-cache", "mountPath": CACHE_MOUNT}, *scratch_mounts],
    }
    key = cache_key(source, access.endpoint)
    metadata = _shared_metadata(namespace, download_job_name(source, access.endpoint), DOWNLOAD_COMPONENT)
    metadata["labels"][CACHE_KEY_LABEL] = key
    metadata["annotations"] = {SOURCE_ANNOTATION: source}
    pod_labels = {**metadata["labels"]}
    on_bad_source = {"containerName": DOWNLOAD_CONTAINER, "operator": "In", "values": [BAD_SOURCE_EXIT_CODE]}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": DOWNLOAD_BACKOFF_LIMIT,
            "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": on_bad_source}]},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": meta.pod_spec(
                    config, [container], [_cache_volume(), *scratch_vols], restartPolicy="Never"
                ),
            },
        },
    }


def entry_in_cache(path: str) -> str:
    """A download's result path (under CACHE_MOUNT) relative to the cache; refuses one outside it."""
    rel = posixpath.relpath(posixpath.normpath(path), CACHE_MOUNT)
    if rel == "." or rel.startswith(".."):
        raise ValueError(f"download result {path!r} is not inside the model cache {CACHE_MOUNT}")
    return rel


def cached_source(path: str) -> str:
    """What a serving or training pod loads: the downloaded folder, on the cache PVC (mounted read-only)."""
    return f"pvc://{CACHE_PVC}/{entry_in_cache(path)}"


def cache_prune_job(namespace: str, path: str, config: Config) -> Obj:
    """A Job removing one download from the cache (spec.baseModel.cachePolicy Delete); operator image."""
    rel = entry_in_cache(path)
    container: Obj = {
        "name": "prune",
        "image": config.operator_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["python3", "-m", "chatmodel_operator.prune", "--root", CACHE_MOUNT, "--entry", rel],
        "resources": meta.resources(0, "50m", "64Mi"),
        "securityContext": meta.container_security_context(),
        "volumeMounts": [{"name": "model-cache", "mountPath": CACHE_MOUNT}],
    }
    name = f"chatmodel-cache-prune-{hashlib.sha256(rel.encode()).hexdigest()[:16]}"
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _shared_metadata(namespace, name, CACHE_PRUNE_COMPONENT),
        "spec": {
            "backoffLimit": 3,
            "ttlSecondsAfterFinished": 3600,
            "template": {
                "metadata": {"labels": _shared_metadata(namespace, name, CACHE_PRUNE_COMPONENT)["labels"]},
                "spec": meta.pod_spec(config, [container], [_cache_volume()], restartPolicy="OnFailure"),
            },
        },
    }
