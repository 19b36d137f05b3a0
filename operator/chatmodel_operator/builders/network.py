"""spec.access.networkPolicy: a NetworkPolicy that admits the serving port only from the named namespaces
and pods. Kubelet probes are not subject to it; the operator never connects to model pods (readiness comes
from Deployment status); Prometheus scrapes the same port, so its namespace must be listed."""

from __future__ import annotations

from chatmodel_operator.builders import meta
from chatmodel_operator.builders.meta import Obj
from chatmodel_operator.config import Config
from chatmodel_operator.spec import ChatModel

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every namespace by the API server


def network_policy(cm: ChatModel, config: Config) -> Obj | None:
    access = cm.spec.access
    if access is None or access.network_policy is None:
        return None
    np = access.network_policy
    peers: list[Obj] = []
    if np.allow_namespaces:
        names = {"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": sorted(np.allow_namespaces)}
        peers.append({"namespaceSelector": {"matchExpressions": [names]}})
    if np.allow_pod_labels:
        peers.append({"podSelector": {"matchLabels": dict(np.allow_pod_labels)}})
    # No peers: no ingress rule at all, which admits no one (a rule with an empty `from` would admit all).
    ingress = [{"from": peers, "ports": [{"port": config.service_port, "protocol": "TCP"}]}] if peers else []
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta.metadata(cm, meta.service_name(cm), "serving"),
        "spec": {
            # Every version's pods: the policy outlives versions, like the Service.
            "podSelector": {"matchLabels": meta.selector(cm, "serving", None)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }
