"""Rendered autoscaling and gateway objects are valid: built-in kinds with kubernetes-validate, KEDA's
ScaledObject against models generated from KEDA's CRD, the Gateway API kinds against the fields their API
references require (operator_schemas.py says why)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chatmodel_operator.builders import gateway_objects, serving_objects
from chatmodel_operator.config import Config
from chatmodel_operator.spec import ChatModel, load_manifests
from tests.operator.operator_schemas import validate

SAMPLE = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "canary-keda-gateway.yaml"
CFG = Config(prometheus_url="http://prometheus.monitoring:9090")


def rendered() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for cm in load_manifests(SAMPLE):
        objs = serving_objects(cm, "v1", CFG)
        if cm.spec.serving.gateway:
            objs += gateway_objects(cm, "v1", "v2", 10, CFG)  # mid-canary: two pools, weighted route
        out += [(f"{cm.metadata.name}/{o['kind']}/{o['metadata']['name']}", o) for o in objs]
    return out


RENDERED = rendered()


def test_every_new_kind_is_rendered() -> None:
    kinds = {o["kind"] for _, o in RENDERED}
    assert {"ScaledObject", "InferencePool", "HTTPRoute", "HorizontalPodAutoscaler"} <= kinds


@pytest.mark.parametrize("name,obj", RENDERED, ids=[n for n, _ in RENDERED])
def test_object_matches_its_schema(name: str, obj: dict[str, Any]) -> None:
    validate(obj)


def test_schemas_catch_mistakes() -> None:
    """The check can fail: a misspelt field or a bad value is refused for each kind."""
    objs = {o["kind"]: o for _, o in RENDERED}
    bad_trigger = {**objs["ScaledObject"], "spec": {**objs["ScaledObject"]["spec"], "triggers": "prometheus"}}
    bad_pool = {**objs["InferencePool"], "spec": {"targetPorts": [{"number": 8000}]}}  # no selector
    route = objs["HTTPRoute"]
    bad_route = {**route, "spec": {**route["spec"], "parentRefs": [{"name": "gw", "kind": 7}]}}
    for bad in (bad_trigger, bad_pool, bad_route):
        with pytest.raises(ValueError):
            validate(bad)
    # Only the published Gateway API schema knows the path match types.
    rule = {**route["spec"]["rules"][0], "matches": [{"path": {"type": "Prefix", "value": "/"}}]}
    with pytest.raises(ValueError, match=r"published schema: .*type must be equal to one of"):
        validate({**route, "spec": {**route["spec"], "rules": [rule]}})


def test_canary_weights_and_pools() -> None:
    route = next(o for _, o in RENDERED if o["kind"] == "HTTPRoute")
    backends = route["spec"]["rules"][0]["backendRefs"]
    assert [(b["name"], b["weight"]) for b in backends] == [("support-v1", 90), ("support-v2", 10)]
    pools = [o for _, o in RENDERED if o["kind"] == "InferencePool"]
    assert [p["spec"]["selector"]["matchLabels"]["chatmodel.dev/version"] for p in pools] == ["v1", "v2"]


def test_keda_scales_to_zero_with_a_stabilised_scale_down() -> None:
    so = next(o for _, o in RENDERED if o["kind"] == "ScaledObject")
    assert so["spec"]["minReplicaCount"] == 0 and so["spec"]["maxReplicaCount"] == 4
    behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 300
    trigger = so["spec"]["triggers"][0]["metadata"]
    assert trigger["serverAddress"] == CFG.prometheus_url
    assert trigger["query"] == (
        'sum(chatmodel_num_requests_waiting{namespace="default",chatmodel="support",version="v1"})'
    )
    dep = next(o for _, o in RENDERED if o["kind"] == "Deployment" and "support" in o["metadata"]["name"])
    assert "replicas" not in dep["spec"]  # KEDA owns the count


def test_hpa_on_kv_cache_usage() -> None:
    hpa = next(o for _, o in RENDERED if o["kind"] == "HorizontalPodAutoscaler")
    metric = hpa["spec"]["metrics"][0]["pods"]
    assert metric["metric"]["name"] == "chatmodel_kv_cache_usage_perc"
    assert metric["target"]["averageValue"] == "800m"  # 80 percent of a 0-1 gauge


def test_scale_to_zero_needs_keda() -> None:
    with pytest.raises(ValueError, match="KEDA"):
        ChatModel.model_validate({"metadata": {"name": "x"}, "spec": {"serving": {"replicas": {"min": 0}}}})
