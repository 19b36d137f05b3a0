"""values.schema.json refuses bad values with a message naming the value, before anything renders."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import helm_python
import pytest

from tests.chart.chart_render import CHART

BAD: dict[str, tuple[dict[str, Any], str]] = {
    "negative replicas": ({"replicaCount": -1}, "/replicaCount"),
    "second replica": ({"replicaCount": 2}, "/replicaCount"),
    "unknown pull policy": ({"images": {"pullPolicy": "Sometimes"}}, "/images/pullPolicy"),
    "string toggle": ({"metrics": {"enabled": "yes"}}, "/metrics/enabled"),
    "quoted boolean": ({"serviceMonitor": {"enabled": "true"}}, "/serviceMonitor/enabled"),
    "numeric toggle": ({"rbac": {"create": 1}}, "/rbac/create"),
    "unknown rbac scope": ({"rbac": {"scope": "global"}}, "/rbac/scope"),
    "typo in a key": ({"replicas": 1}, "'replicas' not allowed"),
    "namespace glob": ({"watchNamespaces": ["team-*"]}, "/watchNamespaces/0"),
    "empty image": ({"images": {"runtime": ""}}, "/images/runtime"),
    "prometheus URL without scheme": ({"prometheusUrl": "prometheus:9090"}, "/prometheusUrl"),
    "5xx ratio above 1": ({"prometheusRule": {"http5xxRatio": 5}}, "/prometheusRule/http5xxRatio"),
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    c = helm_python.Chart.load(CHART)
    yield c
    c.close()


@pytest.mark.parametrize("case", BAD)
def test_bad_values_are_refused_naming_the_value(chart: helm_python.Chart, case: str) -> None:
    values, named = BAD[case]
    with pytest.raises(helm_python.HelmValuesError) as refused:
        chart.validate_schema(values)
    assert named in str(refused.value)
    # An install refuses them too, before rendering anything.
    with pytest.raises(helm_python.HelmError):
        chart.render(values, name="chatmodel-operator", namespace="chatmodel-system")


def test_good_values_pass(chart: helm_python.Chart) -> None:
    chart.validate_schema({})
    chart.validate_schema(
        {"replicaCount": 0, "images": {"pullPolicy": "Never"}, "metrics": {"enabled": False}}
    )
    chart.validate_schema({"rbac": {"scope": "namespaced"}, "watchNamespaces": ["team-a"]})
