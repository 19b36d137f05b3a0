"""The autoscaler of one serving version: an autoscaling/v2 HPA, or a KEDA ScaledObject (scale to zero)."""

from __future__ import annotations

from chatmodel_operator import promql
from chatmodel_operator.builders import meta
from chatmodel_operator.builders.meta import Obj
from chatmodel_operator.builders.serving import uses_hpa
from chatmodel_operator.config import Config
from chatmodel_operator.signals import signals
from chatmodel_operator.spec import ChatModel, Serving

KEDA_API_VERSION = "keda.sh/v1alpha1"


def _behavior(sv: Serving) -> Obj:
    # Model pods are slow to start: remove replicas only after load has stayed low for the window.
    return {"scaleDown": {"stabilizationWindowSeconds": sv.autoscaling.scale_down_stabilization_seconds}}


def _hpa_metric(sv: Serving) -> Obj:
    target = sv.autoscaling.target
    if sv.autoscaling.metric == "cpu":
        return {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": target}},
        }
    # prometheus-adapter serves these per pod (docs/autoscaling.md has the rule); kvCacheUsage is 0-1.
    value = f"{target * 10}m" if sv.autoscaling.metric == "kvCacheUsage" else str(target)
    return {
        "type": "Pods",
        "pods": {
            "metric": {"name": signals(sv.runtime).for_metric(sv.autoscaling.metric)},
            "target": {"type": "AverageValue", "averageValue": value},
        },
    }


def hpa(cm: ChatModel, version: str) -> Obj:
    sv = cm.spec.serving
    name = meta.deployment_name(cm, version)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta.metadata(cm, name, "serving", version),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            # autoscaling/v2 cannot go below 1 without the HPAScaleToZero feature gate: KEDA does that.
            "minReplicas": max(sv.replicas.min, 1),
            "maxReplicas": sv.replicas.ceiling,
            "metrics": [_hpa_metric(sv)],
            "behavior": _behavior(sv),
        },
    }


def scaled_object(cm: ChatModel, version: str, config: Config) -> Obj:
    sv = cm.spec.serving
    name = meta.deployment_name(cm, version)
    query = promql.load(sv.runtime, sv.autoscaling.metric, meta.namespace(cm), cm.metadata.name, version)
    trigger = {
        "type": "prometheus",
        "name": sv.autoscaling.metric.lower(),
        # AverageValue: KEDA divides the query by the replica count, so the query sums over the pods.
        "metricType": "AverageValue",
        "metadata": {
            "serverAddress": config.prometheus_url,
            "query": query,
            "threshold": str(sv.autoscaling.target),
            # Below this the version counts as idle: scaled to zero when min is 0.
            "activationThreshold": "0",
        },
    }
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": "ScaledObject",
        "metadata": meta.metadata(cm, name, "serving", version),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicaCount": sv.replicas.min,
            "maxReplicaCount": sv.replicas.ceiling,
            "cooldownPeriod": sv.autoscaling.scale_down_stabilization_seconds,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(sv)}},
            "triggers": [trigger],
        },
    }


def autoscaler(cm: ChatModel, version: str, config: Config) -> Obj | None:
    sv = cm.spec.serving
    if not uses_hpa(sv):
        return None
    return scaled_object(cm, version, config) if sv.autoscaling.engine == "KEDA" else hpa(cm, version)
