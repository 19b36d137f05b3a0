"""The artifact PVC: one per ChatModel, one folder per fine-tuned version."""

from __future__ import annotations

from chatmodel_operator.builders.meta import Obj, metadata, pvc_name
from chatmodel_operator.spec import ChatModel


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
