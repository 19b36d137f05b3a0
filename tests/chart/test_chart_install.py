"""manifests/install (rendered from the chart by `make manifests`): valid objects and a restricted operator
pod, and the chart's generated files equal what `make manifests` would write now."""

from __future__ import annotations

import yaml

from tests.chart.chart_render import INSTALL, crd_files, install_text, rbac_files
from tests.operator.operator_pss import pod_spec_of, violations
from tests.operator.operator_schemas import validate


def test_install_objects_are_valid_and_restricted() -> None:
    docs = [d for d in yaml.safe_load_all(INSTALL.read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds[0] == "Namespace"  # kubectl applies in file order
    for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment", "Service"):
        assert kind in kinds
    for obj in docs:
        validate(obj)
    dep = next(d for d in docs if d["kind"] == "Deployment")
    pod = pod_spec_of(dep)
    assert pod is not None and violations(pod) == []


def test_generated_files_are_in_sync() -> None:
    """RBAC rules from rbac.py, the CRD copy in crds/, and manifests/install: run `make manifests`."""
    for path, text in {**rbac_files(), **crd_files()}.items():
        assert path.exists() and path.read_text() == text, f"{path} drifted: run `make manifests`"
    assert INSTALL.read_text() == install_text(), f"{INSTALL} drifted: run `make manifests`"
