"""manifests/install: valid objects, a restricted operator pod, and RBAC that covers what the operator does
and no more (no wildcards)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from operator_pss import pod_spec_of, violations

from chatmodel_operator.builders import all_objects
from chatmodel_operator.config import Config
from chatmodel_operator.k8s import PLURALS
from chatmodel_operator.spec import load_manifests

ROOT = Path(__file__).resolve().parents[2]
INSTALL = [
    d
    for p in sorted((ROOT / "manifests" / "install").glob("*.yaml"))
    for d in yaml.safe_load_all(p.read_text())
]


def grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_install_objects_are_valid() -> None:
    kinds = [d["kind"] for d in INSTALL]
    for kind in ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment"):
        assert kind in kinds
    for obj in INSTALL:
        kubernetes_validate.validate(obj, "1.37.0", strict=True)


def test_operator_pod_is_restricted() -> None:
    dep = next(d for d in INSTALL if d["kind"] == "Deployment")
    pod = pod_spec_of(dep)
    assert pod is not None and violations(pod) == []
    assert dep["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_rbac_covers_every_child_and_has_no_wildcards() -> None:
    role = next(d for d in INSTALL if d["kind"] == "ClusterRole")
    allowed = grants(role)
    assert not any("*" in g for g in allowed)
    plurals = PLURALS  # the operator's declared list of kinds it writes
    children = {
        (o["apiVersion"].rpartition("/")[0], plurals[o["kind"]])
        for p in (ROOT / "manifests" / "samples").glob("*.yaml")
        for cm in load_manifests(p)
        for o in all_objects(cm, Config())
    }
    for group, resource in children:
        for verb in ("get", "create", "patch", "delete"):
            assert (group, resource, verb) in allowed, (group, resource, verb)
    for group, resource in [("batch", "jobs"), ("apps", "deployments"), ("chatmodel.dev", "chatmodels")]:
        for verb in ("list", "watch"):
            assert (group, resource, verb) in allowed
    assert ("chatmodel.dev", "chatmodels/status", "patch") in allowed
    assert ("", "pods", "list") in allowed and ("", "events", "create") in allowed
    # Nothing the operator never does.
    assert ("", "secrets", "get") not in allowed and ("", "pods", "delete") not in allowed
