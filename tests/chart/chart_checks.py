"""Validation of rendered objects: built-in kinds against Kubernetes' own schemas (kubernetes-validate),
prometheus-operator kinds against models generated from its CRDs (extra fields count as errors too)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
from cloudcoil.models.prometheus_operator import v1 as monitoring

K8S_VERSION = "1.37.0"
MONITORING = {
    "ServiceMonitor": monitoring.ServiceMonitor,
    "PodMonitor": monitoring.PodMonitor,
    "PrometheusRule": monitoring.PrometheusRule,
}


def validate(obj: dict[str, Any]) -> None:
    if obj["apiVersion"] == "monitoring.coreos.com/v1":
        model = MONITORING[obj["kind"]].model_validate(obj)
        # The models ignore unknown fields; a field that does not survive the round trip is one.
        assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == obj, obj["kind"]
        return
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
