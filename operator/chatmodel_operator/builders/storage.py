"""The artifact PVC: one per ChatModel, one folder per fine-tuned version."""

from __future__ import annotations

from chatmodel_operator.builders import meta
from chatmodel_operator.builders.meta import Obj, metadata, pvc_name
from chatmodel_operator.config import Config
from chatmodel_operator.spec import ChatModel

PRUNE_COMPONENT = "artifact-prune"
PRUNE_TTL_SECONDS = 3600  # long enough to read a failed run's log


def artifact_pvc(cm: ChatModel) -> Obj:
    storage = cm.spec.storage
    spec: Obj = {"accessModes": [storage.access_mode], "resources": {"requests": {"storage": storage.size}}}
    if storage.storage_class_name:
        spec["storageClassName"] = storage.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(cm, pvc_name(cm), "storage"),
        "spec": spec,
    }


def prune_job(cm: ChatModel, version: str, config: Config) -> Obj:
    """A Job removing one pruned version's folder from the artifact PVC (operator image: stdlib only)."""
    container: Obj = {
        "name": "prune",
        "image": config.operator_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["python3", "-m", "chatmodel_operator.prune", version],
        "resources": meta.resources(0, "50m", "64Mi"),
        "securityContext": meta.container_security_context(),
        "volumeMounts": [{"name": "artifacts", "mountPath": meta.ARTIFACTS_MOUNT}],
    }
    volume = {"name": "artifacts", "persistentVolumeClaim": {"claimName": pvc_name(cm)}}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata(cm, f"{cm.metadata.name}-{version}-prune", PRUNE_COMPONENT, version),
        "spec": {
            "backoffLimit": 3,
            "ttlSecondsAfterFinished": PRUNE_TTL_SECONDS,
            "template": {
                "metadata": {"labels": meta.labels(cm, PRUNE_COMPONENT, version)},
                "spec": meta.pod_spec(config, [container], [volume], restartPolicy="OnFailure"),
            },
        },
    }
