"""Pure builders: (ChatModel, version, Config) -> Kubernetes object dicts. No I/O, no kopf."""

from __future__ import annotations

from chatmodel_operator.builders import serving, triton, vllm
from chatmodel_operator.builders.meta import Obj
from chatmodel_operator.builders.serving import hpa, pdb
from chatmodel_operator.builders.storage import artifact_pvc
from chatmodel_operator.builders.training import training_job
from chatmodel_operator.config import Config
from chatmodel_operator.spec import ChatModel, model_version


def _runtime(cm: ChatModel):  # the module whose deployment() and service() build this runtime's objects
    return {"triton": triton, "vllm": vllm}.get(cm.spec.serving.runtime, serving)


def deployment(cm: ChatModel, version: str, config: Config) -> Obj:
    return _runtime(cm).deployment(cm, version, config)


def service(cm: ChatModel, version: str | None, config: Config) -> Obj:
    return _runtime(cm).service(cm, version, config)


def serving_objects(cm: ChatModel, version: str, config: Config) -> list[Obj]:
    """Everything one version needs to serve: its Deployment and, when asked for, HPA and PDB."""
    return [o for o in (deployment(cm, version, config), hpa(cm, version), pdb(cm, version)) if o is not None]


def training_objects(cm: ChatModel, version: str, config: Config) -> list[Obj]:
    return [artifact_pvc(cm), training_job(cm, version, config)]


def all_objects(cm: ChatModel, config: Config) -> list[Obj]:
    """Every object the operator creates for a manifest over its life, in creation order."""
    version = model_version(cm.spec)
    objs = training_objects(cm, version, config) if cm.spec.fine_tune else []
    return [*objs, *serving_objects(cm, version, config), service(cm, version, config)]


__all__ = ["Obj", "all_objects", "service", "serving_objects", "training_objects"]
