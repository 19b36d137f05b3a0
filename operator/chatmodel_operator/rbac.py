"""Every Kubernetes API permission the operator needs, declared once.

k8s.py takes its kind → resource table from the rows that name a kind; the Helm chart's ClusterRole/Roles
include the rules rendered from this list (`make manifests` writes charts/chatmodel-operator/files/rbac/);
tests/chart/test_chart_rbac.py runs the operator on kmock and checks that every request it makes is allowed
here and that every row here is used. Adding a kind the operator writes is one row below plus
`make manifests`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Applier.apply: create, and on a conflict get + patch the difference; Applier.remove: delete.
APPLY = ("get", "create", "patch", "delete")
# Plan.create_only kinds (Jobs, PVCs) are created once and never read back or patched.
CREATE_ONLY = ("create", "delete")
WATCH = ("list", "watch")


@dataclass(frozen=True)
class Access:
    group: str  # "" is the core API group
    resource: str  # the plural, or plural/subresource
    verbs: tuple[str, ...]
    why: str
    kind: str = ""  # set for kinds the operator's client addresses (k8s.PLURALS)
    cluster_scoped: bool = False  # needs a ClusterRole even when the operator watches named namespaces
    admission_only: bool = False  # checked by an admission plugin on another request, never requested
    modes: tuple[str, ...] = ("cluster", "namespaced")  # the chart's rbac.scope values that need the row


ACCESS: tuple[Access, ...] = (
    # kopf: watches CRDs to notice its resources appearing or going; serving named namespaces, it also
    # watches namespaces for them appearing or going (refused, kopf retries for ~1 min at every start and
    # then assumes they exist).
    Access("apiextensions.k8s.io", "customresourcedefinitions", WATCH, "kopf resource discovery", "", True),
    Access("", "namespaces", WATCH, "kopf namespace observation", "", True, modes=("namespaced",)),
    # The ChatModels: kopf watches them (no finalizer, no annotations: nothing else is written).
    Access("chatmodel.dev", "chatmodels", WATCH, "kopf watches ChatModels", "ChatModel"),
    Access("chatmodel.dev", "chatmodels/status", ("patch",), "status of ChatModels"),
    # Children carry ownerReferences with blockOwnerDeletion; where the OwnerReferencesPermissionEnforcement
    # admission plugin runs (OpenShift enables it), that needs update on the owner's finalizers.
    Access("chatmodel.dev", "chatmodels/finalizers", ("update",), "blockOwnerDeletion", admission_only=True),
    # Children: the operator diffs and applies them; Jobs, TrainJobs and Deployments are also watched
    # (informers.py).
    # Jobs: created once, watched, and annotated with the trainer's result (patch); a model download's
    # Job is shared by the ChatModels that use it, and read by name (get) while it runs.
    Access("batch", "jobs", (*WATCH, *CREATE_ONLY, "get", "patch"), "fine-tune and download Jobs", "Job"),
    # fineTune.engine kubeflow: a Kubeflow Trainer TrainJob, the same as a Job (its conditions are read).
    Access(
        "trainer.kubeflow.org",
        "trainjobs",
        (*WATCH, *CREATE_ONLY, "patch"),
        "Kubeflow fine-tunes",
        "TrainJob",
    ),
    Access("apps", "deployments", (*WATCH, *APPLY), "serving Deployments", "Deployment"),
    Access("", "services", APPLY, "the ChatModel's Service", "Service"),
    # serving.lora.shared: the adapter table the base Deployment's pods follow.
    Access("", "configmaps", APPLY, "shared LoRA adapter tables", "ConfigMap"),
    Access("", "persistentvolumeclaims", CREATE_ONLY, "the artifact volume", "PersistentVolumeClaim"),
    Access("autoscaling", "horizontalpodautoscalers", APPLY, "autoscaling", "HorizontalPodAutoscaler"),
    Access("policy", "poddisruptionbudgets", APPLY, "disruption budgets", "PodDisruptionBudget"),
    # KEDA autoscaling and Gateway API Inference Extension routing, when a ChatModel asks for them.
    Access("keda.sh", "scaledobjects", APPLY, "KEDA autoscaling", "ScaledObject"),
    Access("inference.networking.k8s.io", "inferencepools", APPLY, "gateway routing", "InferencePool"),
    Access("gateway.networking.k8s.io", "httproutes", APPLY, "gateway routing", "HTTPRoute"),
    # spec.access.networkPolicy: who may reach the serving pods.
    Access("networking.k8s.io", "networkpolicies", APPLY, "serving ingress policy", "NetworkPolicy"),
    # A finished training pod's termination message (the trainer's result), and why a pod is stuck.
    Access("", "pods", ("list", "watch"), "training results, stuck pods", "Pod"),
    # A model download's progress: the last lines of its pod's log.
    Access("", "pods/log", ("get",), "model download progress"),
    # spec.baseModel.credentialsSecretRef: the hub token that resolves an hf:// revision at version time.
    Access("", "secrets", ("get",), "hub token for revision resolution", "Secret"),
    # kopf posts Events on phase changes (core v1 events).
    Access("", "events", ("create",), "Events on phase changes"),
)


def plurals() -> dict[str, str]:
    """Kind → resource for every kind the operator's client addresses."""
    return {a.kind: a.resource for a in ACCESS if a.kind}


def grants(access: Iterable[Access] = ACCESS) -> set[tuple[str, str, str]]:
    """(group, resource, verb) triples."""
    return {(a.group, a.resource, v) for a in access for v in a.verbs}


def in_mode(mode: str) -> list[Access]:
    """The rows an operator installed with rbac.scope=`mode` needs."""
    return [a for a in ACCESS if mode in a.modes]


def rules(access: Iterable[Access]) -> list[dict[str, list[str]]]:
    """Kubernetes PolicyRules, one per (group, verbs) with its resources."""
    merged: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for a in access:
        merged.setdefault((a.group, tuple(sorted(a.verbs))), []).append(a.resource)
    return [
        {"apiGroups": [group], "resources": sorted(resources), "verbs": list(verbs)}
        for (group, verbs), resources in sorted(merged.items())
    ]


def chart_rules() -> dict[str, list[dict[str, list[str]]]]:
    """The chart's rule files: `cluster` is the one ClusterRole of rbac.scope=cluster; with
    rbac.scope=namespaced, `cluster-scoped` is the ClusterRole and `namespaced` the Role in each namespace."""
    namespaced = in_mode("namespaced")
    return {
        "cluster": rules(in_mode("cluster")),
        "cluster-scoped": rules(a for a in namespaced if a.cluster_scoped),
        "namespaced": rules(a for a in namespaced if not a.cluster_scoped),
    }
