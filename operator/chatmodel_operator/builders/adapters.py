"""serving.lora.shared: one base Deployment per ChatModel serves every live LoRA version as an adapter. The
operator writes the adapter table (`chatmodel serve --adapters-file`, api/adapter_table.py) into a ConfigMap
projected into each pod: the versions to load from the artifacts PVC, and the ChatModel's name as an alias
whose weights are the rollout's shares. A new version, a canary share, a promotion or a retirement is a
ConfigMap change: the running pods load, move or unload without a restart; a new pod reads the table before
it is ready, so it comes up with every adapter. Each version is also served under NAME-VERSION (a pin by
model name), the base under NAME-base."""

from __future__ import annotations

import json
from typing import Any

from chatmodel_operator.builders import meta
from chatmodel_operator.builders.meta import Obj
from chatmodel_operator.spec import ChatModel

SHARED = "shared"  # the base Deployment's version label: never a version digest
TABLE_DIR = "/etc/chatmodel/adapters"
TABLE_KEY = "adapters.json"
TABLE_FILE = f"{TABLE_DIR}/{TABLE_KEY}"


def shares_adapters(cm: ChatModel) -> bool:
    ft = cm.spec.fine_tune
    return cm.spec.serving.lora.shared and ft is not None and ft.method == "lora"


def adapter_name(cm: ChatModel, version: str) -> str:
    """The model name one version's adapter is served under."""
    return f"{cm.metadata.name}-{version}"


def base_name(cm: ChatModel) -> str:
    return f"{cm.metadata.name}-base"


def table_name(cm: ChatModel) -> str:
    return f"{cm.metadata.name}-adapters"


def adapter_table(cm: ChatModel, versions: list[str], shares: dict[str, int]) -> dict[str, Any]:
    """The table for `versions` (loaded) and the alias NAME split by `shares` (version -> percent)."""
    alias = {adapter_name(cm, v): w for v, w in shares.items()}
    return {
        "adapters": {adapter_name(cm, v): meta.artifact_path(v) for v in versions},
        "aliases": {cm.metadata.name: alias} if alias else {},
    }


def table_configmap(cm: ChatModel, table: dict[str, Any]) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta.metadata(cm, table_name(cm), "serving", SHARED),
        "data": {TABLE_KEY: json.dumps(table, indent=1, sort_keys=True)},
    }


def table_volume(cm: ChatModel) -> tuple[Obj, Obj]:
    """The ConfigMap as a directory (not a subPath: the kubelet updates only whole-directory mounts)."""
    volume = {"name": "adapters", "configMap": {"name": table_name(cm)}}
    return volume, {"name": "adapters", "mountPath": TABLE_DIR, "readOnly": True}
