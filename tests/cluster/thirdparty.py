"""Third-party CRDs for the local control plane, read from their projects' published Go modules at the
versions tools/crds/go.mod pins (checked against its go.sum); never committed to this repository."""

from __future__ import annotations

from pathlib import Path

from tests.cluster import build

# module -> the CRD files (inside the module) of the kinds we emit or that our objects refer to.
CRDS: dict[str, list[str]] = {
    "github.com/kedacore/keda/v2": ["config/crd/bases/keda.sh_scaledobjects.yaml"],
    "github.com/prometheus-operator/prometheus-operator": [
        f"example/prometheus-operator-crd/monitoring.coreos.com_{k}.yaml"
        for k in ("servicemonitors", "podmonitors", "prometheusrules")
    ],
    "sigs.k8s.io/gateway-api": [
        f"config/crd/standard/gateway.networking.k8s.io_{k}.yaml"
        for k in ("gatewayclasses", "gateways", "httproutes")
    ],
    "sigs.k8s.io/gateway-api-inference-extension": [
        "config/crd/bases/inference.networking.k8s.io_inferencepools.yaml"
    ],
    "sigs.k8s.io/kueue": [
        f"config/components/crd/bases/kueue.x-k8s.io_{k}.yaml" for k in ("localqueues", "clusterqueues")
    ],
    "github.com/kubeflow/trainer/v2": [
        f"manifests/base/crds/trainer.kubeflow.org_{k}.yaml" for k in ("trainjobs", "clustertrainingruntimes")
    ],
}


def crd_files() -> list[Path]:
    """The files, downloaded into the Go module cache if they are not there yet."""
    return [build.module_dir("crds", module) / f for module, files in CRDS.items() for f in files]
