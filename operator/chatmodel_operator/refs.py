"""A reference to one child object by kind and name (what the reconciler deletes), and the set of objects
one serving version may own. Its own module: k8s.py needs it without the decision module."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ref:
    api_version: str
    kind: str
    name: str


def serving_refs(name: str) -> list[Ref]:
    """Every object one serving version may have (deleting an absent one, or an unknown kind, is a 404)."""
    return [
        Ref("apps/v1", "Deployment", name),
        Ref("autoscaling/v2", "HorizontalPodAutoscaler", name),
        Ref("keda.sh/v1alpha1", "ScaledObject", name),
        Ref("policy/v1", "PodDisruptionBudget", name),
        Ref("inference.networking.k8s.io/v1", "InferencePool", name),
    ]
