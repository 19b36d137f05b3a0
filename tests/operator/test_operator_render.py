"""Every object rendered for every sample is a valid Kubernetes object (kubernetes-validate, a recent
version, strict) and every pod meets the restricted Pod Security Standard."""

from __future__ import annotations

import io
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml

from chatmodel_operator import render
from chatmodel_operator.builders import all_objects
from chatmodel_operator.config import Config
from chatmodel_operator.spec import load_manifests
from tests.operator.operator_pss import pod_spec_of, violations
from tests.operator.operator_schemas import validate

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))


def rendered() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in SAMPLES:
        for cm in load_manifests(path):
            for obj in all_objects(cm, Config()):
                out.append((f"{path.stem}/{obj['kind']}/{obj['metadata']['name']}", obj))
    return out


RENDERED = rendered()


def test_samples_cover_every_kind() -> None:
    kinds = {obj["kind"] for _, obj in RENDERED}
    assert kinds == {
        "PersistentVolumeClaim",
        "Job",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ScaledObject",
        "InferencePool",
        "HTTPRoute",
    }
    assert len(SAMPLES) >= 5


@pytest.mark.parametrize("name,obj", RENDERED, ids=[n for n, _ in RENDERED])
def test_object_is_valid_kubernetes(name: str, obj: dict[str, Any]) -> None:
    validate(obj)  # kubernetes-validate for built-in kinds, published models for the others


WITH_PODS = [r for r in RENDERED if pod_spec_of(r[1])]


@pytest.mark.parametrize("name,obj", WITH_PODS, ids=[n for n, _ in WITH_PODS])
def test_pods_meet_restricted_pss(name: str, obj: dict[str, Any]) -> None:
    pod = pod_spec_of(obj)
    assert pod is not None
    assert violations(pod) == []


def test_pss_checker_catches_violations() -> None:
    # The checker itself must be able to fail.
    bad = {
        "hostNetwork": True,
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        "containers": [{"name": "c", "securityContext": {"privileged": True}}],
    }
    found = " ".join(violations(bad))
    for word in ("hostNetwork", "hostPath", "privileged", "allowPrivilegeEscalation", "runAsNonRoot", "ALL"):
        assert word in found


def test_render_prints_every_object_as_yaml() -> None:
    sample = ROOT / "manifests" / "samples" / "two-versions.yaml"
    out = io.StringIO()
    with redirect_stdout(out):
        assert render.run(type("Args", (), {"manifest": str(sample)})()) == 0
    docs = list(yaml.safe_load_all(out.getvalue()))
    expected = [o for cm in load_manifests(sample) for o in all_objects(cm, Config())]
    assert docs == expected
    assert [d["kind"] for d in docs].count("Service") == 2


def test_render_via_chatmodel_cli_without_torch() -> None:
    code = (
        "import sys; from chatmodel_serving.cli import main; rc = main(['render', sys.argv[1]]);"
        "assert not {'torch', 'transformers'} & set(sys.modules), 'imported torch'; sys.exit(rc)"
    )
    env_path = f"{ROOT / 'operator'}:{ROOT / 'serving'}"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(SAMPLES[0])],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "kind: Deployment" in proc.stdout
