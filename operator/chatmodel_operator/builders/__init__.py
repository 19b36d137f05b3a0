"""Pure builders: (ChatModel, version, Config) -> Kubernetes object dicts. No I/O, no kopf."""

from __future__ import annotations

from typing import Protocol

from chatmodel_operator.builders import serving, triton, vllm
from chatmodel_operator.builders.autoscaling import autoscaler
from chatmodel_operator.builders.gateway import gateway_objects
from chatmodel_operator.builders.meta import Obj
from chatmodel_operator.builders.network import network_policy
from chatmodel_operator.builders.serving import pdb
from chatmodel_operator.builders.storage import artifact_pvc
from chatmodel_operator.builders.training import training_workload
from chatmodel_operator.config import Config
from chatmodel_operator.spec import ChatModel, model_version


class _Runtime(Protocol):
    """A runtime's builder module (serving, triton, vllm): its Deployment and Service."""

    def deployment(
        self, cm: ChatModel, version: str, config: Config, fine_tuned: bool | None = None
    ) -> Obj: ...

    def service(self, cm: ChatModel, version: str | None, config: Config) -> Obj: ...


def _runtime(cm: ChatModel) -> _Runtime:
    return {"triton": triton, "vllm": vllm}.get(cm.spec.serving.runtime, serving)


def deployment(cm: ChatModel, version: str, config: Config, fine_tuned: bool | None = None) -> Obj:
    return _runtime(cm).deployment(cm, version, config, fine_tuned)


def service(cm: ChatModel, version: str | None, config: Config) -> Obj:
    return _runtime(cm).service(cm, version, config)


def serving_objects(
    cm: ChatModel,
    version: str,
    config: Config,
    fine_tuned: bool | None = None,
    canary_replicas: int | None = None,
    restore: bool = False,
) -> list[Obj]:
    """Everything one version needs to serve: its Deployment and, when asked for, autoscaler and PDB.
    A canary runs a fixed number of replicas; `restore` brings a scaled-to-zero Deployment back up (an
    HPA never scales up from zero)."""
    dep = deployment(cm, version, config, fine_tuned)
    if canary_replicas is not None:
        dep["spec"]["replicas"] = canary_replicas
        return [dep]
    if restore and "replicas" not in dep["spec"] and cm.spec.serving.replicas.min > 0:
        dep["spec"]["replicas"] = cm.spec.serving.replicas.min
    return [o for o in (dep, autoscaler(cm, version, config), pdb(cm, version)) if o is not None]


def training_objects(cm: ChatModel, version: str, config: Config) -> list[Obj]:
    """The artifact PVC first, then what trains the version (Job [+ rendezvous Service] or TrainJob)."""
    return [artifact_pvc(cm), *training_workload(cm, version, config)]


def all_objects(cm: ChatModel, config: Config) -> list[Obj]:
    """Every object the operator creates for a manifest over its life, in creation order."""
    version = model_version(cm.spec)
    objs = training_objects(cm, version, config) if cm.spec.fine_tune else []
    gateway = gateway_objects(cm, version, None, 0, config) if cm.spec.serving.gateway else []
    policy = [p] if (p := network_policy(cm, config)) else []
    return [*objs, *serving_objects(cm, version, config), service(cm, version, config), *gateway, *policy]


__all__ = ["Obj", "all_objects", "gateway_objects", "service", "serving_objects", "training_objects"]
