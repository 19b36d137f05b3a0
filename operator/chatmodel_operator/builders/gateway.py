"""Gateway API Inference Extension objects: an InferencePool per serving version (the endpoint picker reads
the pods' load metrics) and an HTTPRoute whose weights split traffic during a canary."""

from __future__ import annotations

from chatmodel_operator.builders import meta
from chatmodel_operator.builders.meta import Obj
from chatmodel_operator.config import Config
from chatmodel_operator.spec import ChatModel

POOL_GROUP = "inference.networking.k8s.io"
POOL_API_VERSION = f"{POOL_GROUP}/v1"


def inference_pool(cm: ChatModel, version: str, config: Config) -> Obj:
    gw = cm.spec.serving.gateway
    assert gw is not None
    return {
        "apiVersion": POOL_API_VERSION,
        "kind": "InferencePool",
        "metadata": meta.metadata(cm, meta.deployment_name(cm, version), "serving", version),
        "spec": {
            "selector": {"matchLabels": meta.selector(cm, "serving", version)},
            "targetPorts": [{"number": config.service_port}],
            "endpointPickerRef": {
                "name": gw.endpoint_picker,
                "port": {"number": gw.endpoint_picker_port},
                # Fail open: with the picker down, requests still reach some pod of the pool.
                "failureMode": "FailOpen",
            },
        },
    }


def http_route(cm: ChatModel, active: str, canary: str | None, percent: int) -> Obj:
    gw = cm.spec.serving.gateway
    assert gw is not None
    parent = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gw.name}
    if gw.namespace:
        parent["namespace"] = gw.namespace
    shares = [(active, 100 - percent), (canary, percent)] if canary else [(active, 100)]
    backends = [
        {"group": POOL_GROUP, "kind": "InferencePool", "name": meta.deployment_name(cm, v), "weight": w}
        for v, w in shares
    ]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": meta.metadata(cm, meta.service_name(cm), "serving"),
        "spec": {
            "parentRefs": [parent],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": backends}],
        },
    }


def gateway_objects(
    cm: ChatModel, active: str, canary: str | None, percent: int, config: Config
) -> list[Obj]:
    versions = [active] + ([canary] if canary else [])
    return [*(inference_pool(cm, v, config) for v in versions), http_route(cm, active, canary, percent)]
