"""The Helm chart rendered by Helm's own engine (helm-python-sdk) for its defaults and a matrix of values:
lint-clean, every object valid, a restricted operator pod, RBAC from rbac.py, and each toggle doing what
values.yaml says."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import helm_python
import pytest
import yaml

from chatmodel_operator import rbac
from chatmodel_operator.config import Config
from tests.chart.chart_render import CHART, NAMESPACE, render, render_objects
from tests.operator.operator_pss import pod_spec_of, violations
from tests.operator.operator_schemas import validate

ROOT = Path(__file__).resolve().parents[2]
CUSTOM_IMAGES = {
    "operator": "registry.example.com/ml/operator:1.2.3",
    "runtime": "registry.example.com/ml/runtime@sha256:" + "a" * 64,
    "runtimeCuda": "registry.example.com/ml/runtime-cuda:1.2.3",
    "triton": "registry.example.com/ml/runtime-triton:1.2.3",
    "pullPolicy": "Always",
}
MATRIX: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced-rbac": {"rbac": {"scope": "namespaced"}, "watchNamespaces": ["team-a", "team-b"]},
    "metrics-off": {"metrics": {"enabled": False}, "dashboard": {"enabled": False}},
    "monitoring-on": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus"}},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
    },
    "custom-images": {
        "images": CUSTOM_IMAGES,
        "imagePullSecrets": [{"name": "regcred"}],
        "prometheusUrl": "http://prometheus.monitoring:9090",
    },
}


def kinds(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = kinds(objs, kind)
    return found


def operator_env(objs: list[dict[str, Any]]) -> dict[str, str]:
    container = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"]}


def grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


@pytest.mark.parametrize("case", MATRIX)
def test_lint_and_every_object_is_valid(case: str) -> None:
    values = MATRIX[case]
    report = helm_python.lint(CHART, values, strict=True, kube_version="v1.37.0")
    assert report["errors"] == [], report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report
    objs = render_objects(values)
    assert objs, case
    for obj in objs:
        validate(obj)
    pod = pod_spec_of(one(objs, "Deployment"))
    assert pod is not None and violations(pod) == []


def test_defaults_operator_deployment() -> None:
    objs = render_objects()
    dep = one(objs, "Deployment")
    assert dep["metadata"]["namespace"] == NAMESPACE
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    probe = container["livenessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe["path"] == "/healthz" and ports[probe["port"]] == Config().health_port
    assert ports["metrics"] == Config().metrics_port
    # The env the chart sets reads back as the operator's own defaults: one source of truth for images.
    assert Config.from_env(operator_env(objs)) == Config()
    assert kinds(objs, "Namespace") == []  # helm --create-namespace makes it


def test_chart_versions_and_images_follow_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    package = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart["appVersion"] == package
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    config = Config()
    assert values["images"] == {
        "operator": config.operator_image,
        "runtime": config.runtime_image,
        "runtimeCuda": config.runtime_cuda_image,
        "triton": config.triton_image,
        "pullPolicy": config.image_pull_policy,
    }
    for image in (
        config.operator_image,
        config.runtime_image,
        config.runtime_cuda_image,
        config.triton_image,
    ):
        assert image.endswith(f":{package}"), image


def test_custom_images_reach_the_operator_config() -> None:
    objs = render_objects(MATRIX["custom-images"])
    config = Config.from_env(operator_env(objs))
    assert (config.operator_image, config.runtime_image, config.runtime_cuda_image, config.triton_image) == (
        CUSTOM_IMAGES["operator"],
        CUSTOM_IMAGES["runtime"],
        CUSTOM_IMAGES["runtimeCuda"],
        CUSTOM_IMAGES["triton"],
    )
    assert config.image_pull_policy == "Always"
    assert config.prometheus_url == "http://prometheus.monitoring:9090"
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == CUSTOM_IMAGES["operator"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]


def test_cluster_rbac_is_the_declared_list() -> None:
    objs = render_objects()
    role = one(objs, "ClusterRole")
    assert grants(role) == rbac.grants(rbac.in_mode("cluster"))
    assert not any("*" in part for grant in grants(role) for part in grant)
    binding = one(objs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": one(objs, "ServiceAccount")["metadata"]["name"],
            "namespace": NAMESPACE,
        }
    ]
    assert kinds(objs, "Role") == []


def test_namespaced_rbac_has_roles_per_namespace_and_only_cluster_reads_cluster_wide() -> None:
    objs = render_objects(MATRIX["namespaced-rbac"])
    assert operator_env(objs)["CHATMODEL_NAMESPACES"] == "team-a,team-b"
    roles = kinds(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in kinds(objs, "RoleBinding")) == ["team-a", "team-b"]
    cluster = grants(one(objs, "ClusterRole"))
    needed = rbac.in_mode("namespaced")
    assert cluster == rbac.grants(a for a in needed if a.cluster_scoped)
    assert {resource for _, resource, _ in cluster} == {"customresourcedefinitions", "namespaces"}
    assert {verb for _, _, verb in cluster} == {"list", "watch"}  # read-only cluster-wide
    for role in roles:
        assert grants(role) | cluster == rbac.grants(needed)


def test_namespaced_rbac_without_namespaces_is_refused() -> None:
    with pytest.raises(helm_python.HelmRenderError, match="watchNamespaces"):
        render({"rbac": {"scope": "namespaced"}})


def test_metrics_off_drops_the_service_and_scrape_annotations() -> None:
    objs = render_objects(MATRIX["metrics-off"])
    assert kinds(objs, "Service") == [] and kinds(objs, "ConfigMap") == []
    assert "annotations" not in one(objs, "Deployment")["spec"]["template"]["metadata"]
    with pytest.raises(helm_python.HelmRenderError, match=r"metrics\.enabled"):
        render({"metrics": {"enabled": False}, "serviceMonitor": {"enabled": True}})


def test_service_monitor_scrapes_the_metrics_service() -> None:
    objs = render_objects(MATRIX["monitoring-on"])
    monitor, service = one(objs, "ServiceMonitor"), one(objs, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert service["spec"]["selector"].items() <= (
        one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )
    pods = one(objs, "PodMonitor")["spec"]
    assert pods["namespaceSelector"] == {"any": True}
    assert pods["selector"]["matchLabels"]["app.kubernetes.io/component"] == "serving"
    assert kinds(render_objects(), "ServiceMonitor") == []  # off by default


def test_notes_say_how_to_apply_the_first_chatmodel() -> None:
    notes = render()["chatmodel-operator/templates/NOTES.txt"]
    assert "kind: ChatModel" in notes and "kubectl apply" in notes and "every namespace" in notes
    scoped = render(MATRIX["namespaced-rbac"])["chatmodel-operator/templates/NOTES.txt"]
    assert "team-a, team-b" in scoped and "kubectl apply -n team-a" in scoped
