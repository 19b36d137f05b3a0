"""The CRD is generated from spec.py; samples validate against it and its CEL rules; bad manifests are refused
by both the CRD and the pydantic model, with a message naming the field."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from chatmodel_operator.crd import build_crd, render_crd
from chatmodel_operator.spec import parse_manifest
from tests.operator.operator_crdcheck import root_schema, validate

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "manifests" / "crds" / "chatmodels.chatmodel.dev.yaml"
SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))


def sample_docs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{p.name}#{i}", d) for p in SAMPLES for i, d in enumerate(yaml.safe_load_all(p.read_text())) if d
    ]


def test_crd_file_is_generated_from_spec() -> None:
    assert CRD_FILE.read_text() == render_crd(), "run: python -m chatmodel_operator.crd > " + str(CRD_FILE)


def test_crd_basics() -> None:
    crd = build_crd()
    names = crd["spec"]["names"]
    assert names["shortNames"] == ["chm"] and names["plural"] == "chatmodels"
    version = crd["spec"]["versions"][0]
    assert set(version["subresources"]) == {"status", "scale"}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Version", "Ready", "Endpoint", "Age"]


def _walk(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")


def test_every_spec_and_status_field_has_a_description() -> None:
    root = root_schema()
    for part in ("spec", "status"):
        for path, sub in _walk(root["properties"][part], part):
            assert sub.get("description"), f"{path} has no description"


# These names are the contract with users (README "The ChatModel") and the other components: never rename one.
CONTRACT_FIELDS = """
baseModel.source fineTune.dataset.source fineTune.dataset.validationSplit fineTune.method
fineTune.hyperparameters.epochs fineTune.hyperparameters.learningRate fineTune.hyperparameters.batchSize
fineTune.hyperparameters.maxSeqLength fineTune.resources.gpu serving.runtime serving.replicas.min
serving.replicas.max serving.autoscaling.metric serving.autoscaling.target serving.resources.gpu
serving.generation.maxTokens serving.generation.temperature access.apiKeySecretRef.name rollout.strategy
rollout.canaryPercent rollout.gate.maxEvalLoss
"""


def test_contract_field_names_exist() -> None:
    spec = root_schema()["properties"]["spec"]
    for path in CONTRACT_FIELDS.split():
        node = spec
        for part in path.split("."):
            node = node["properties"][part]
        assert node["description"]


@pytest.mark.parametrize("name,doc", sample_docs(), ids=lambda v: v if isinstance(v, str) else "")
def test_samples_are_valid(name: str, doc: dict[str, Any]) -> None:
    assert validate(doc) == []
    parse_manifest(doc)


def test_defaults_agree_between_crd_and_pydantic() -> None:
    from tests.operator.operator_crdcheck import apply_defaults

    doc = {
        "apiVersion": "chatmodel.dev/v1alpha1",
        "kind": "ChatModel",
        "metadata": {"name": "x"},
        "spec": {"fineTune": {"dataset": {"source": "pvc://d/f.jsonl"}}},
    }
    defaulted = apply_defaults(root_schema(), copy.deepcopy(doc))["spec"]
    from_pydantic = parse_manifest(doc).spec.model_dump(by_alias=True, exclude_none=True)
    # Empty lists/maps are left out of the CRD; everything else must match exactly.
    assert _drop_empty(defaulted) == _drop_empty(from_pydantic)


def _drop_empty(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _drop_empty(x) for k, x in v.items() if x not in ({}, [])}
    return v


BASE = {"apiVersion": "chatmodel.dev/v1alpha1", "kind": "ChatModel", "metadata": {"name": "bad"}}
FT = {"dataset": {"source": "pvc://data/train.jsonl"}}
BOTH_VALIDATIONS = {"source": "/d", "validationSplit": 0.1, "validationSource": "/v"}

# (spec or full-manifest override, the field the message must name)
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("min>max", {"spec": {"serving": {"replicas": {"min": 3, "max": 2}}}}, "spec.serving.replicas.min"),
    ("gate-without-finetune", {"spec": {"rollout": {"gate": {"maxEvalLoss": 1.0}}}}, "spec.rollout.gate"),
    ("bad-method", {"spec": {"fineTune": {**FT, "method": "qlora"}}}, "method"),
    ("zero-epochs", {"spec": {"fineTune": {**FT, "hyperparameters": {"epochs": 0}}}}, "epochs"),
    ("hot-temperature", {"spec": {"serving": {"generation": {"temperature": 3.0}}}}, "temperature"),
    ("bad-source", {"spec": {"baseModel": {"source": "gs://bucket/model"}}}, "source"),
    ("dataset-without-source", {"spec": {"fineTune": {"dataset": {"validationSplit": 0.1}}}}, "source"),
    (
        "split-and-validation-file",
        {"spec": {"fineTune": {"dataset": BOTH_VALIDATIONS}}},
        "validationSource",
    ),
    ("unknown-runtime", {"spec": {"serving": {"runtime": "tgi"}}}, "runtime"),
    ("typo-field", {"spec": {"serving": {"replica": {"min": 1}}}}, "replica"),
    ("bad-memory", {"spec": {"serving": {"resources": {"memory": "lots"}}}}, "memory"),
    ("secret-without-name", {"spec": {"access": {"apiKeySecretRef": {"key": "k"}}}}, "name"),
    ("triton-lora", {"spec": {"fineTune": FT, "serving": {"runtime": "triton"}}}, "runtime"),
    ("shared-without-lora", {"spec": {"serving": {"lora": {"shared": True}}}}, "spec.serving.lora.shared"),
    (
        "shared-full",
        {"spec": {"fineTune": {**FT, "method": "full"}, "serving": {"lora": {"shared": True}}}},
        "spec.serving.lora.shared",
    ),
    (
        "shared-triton",
        {"spec": {"fineTune": FT, "serving": {"runtime": "triton", "lora": {"shared": True}}}},
        "spec.serving.lora.shared",
    ),
    (
        "shared-live-gate",
        {"spec": {"fineTune": FT, "serving": {"lora": {"shared": True}}, "rollout": {"liveGate": {}}}},
        "spec.serving.lora.shared",
    ),
    ("shared-rank-0", {"spec": {"serving": {"lora": {"maxRank": 0}}}}, "maxRank"),
    ("long-name", {"metadata": {"name": "n" * 41}}, "metadata.name"),
    ("canary-100", {"spec": {"rollout": {"canaryPercent": 100}}}, "canaryPercent"),
    # Found by the real API server (tests/cluster/test_schemas_real.py): each was accepted by the CRD and
    # then refused in the Deployment, Job, PVC or NetworkPolicy the operator made from it.
    ("node-selector-key", {"spec": {"serving": {"nodeSelector": {"a b": "x"}}}}, "nodeSelector"),
    ("node-selector-value", {"spec": {"fineTune": {**FT, "nodeSelector": {"pool": "a b"}}}}, "nodeSelector"),
    ("toleration-no-key", {"spec": {"serving": {"tolerations": [{"operator": "Equal"}]}}}, "tolerations"),
    (
        "toleration-seconds",
        {"spec": {"serving": {"tolerations": [{"key": "k", "tolerationSeconds": 5}]}}},
        "tolerations",
    ),
    ("zero-storage", {"spec": {"storage": {"size": "0"}}}, "size"),
    ("fractional-bytes", {"spec": {"serving": {"resources": {"memory": "1500m"}}}}, "memory"),
    ("operator-env", {"spec": {"serving": {"env": [{"name": "HOME", "value": "/"}]}}}, "spec.serving.env"),
    (
        "env-twice",
        {"spec": {"serving": {"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}}},
        "spec.serving.env",
    ),
    (
        "pod-label-key",
        {
            "spec": {
                "access": {"apiKeySecretRef": {"name": "k"}, "networkPolicy": {"allowPodLabels": {"-x": "y"}}}
            }
        },
        "allowPodLabels",
    ),
    (
        "huge-quota",
        {"spec": {"access": {"apiKeySecretRef": {"name": "k"}, "quota": {"requestsPerMinute": 10**20}}}},
        "requestsPerMinute",
    ),
]


@pytest.mark.parametrize("case,override,field", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_manifests_are_refused(case: str, override: dict[str, Any], field: str) -> None:
    doc = {**copy.deepcopy(BASE), "spec": {}, **copy.deepcopy(override)}
    errors = validate(doc)
    assert errors, f"{case}: the CRD accepted it"
    assert any(field in e for e in errors), errors
    # The pydantic model (what `chatmodel run` and the operator read) refuses it too.
    with pytest.raises(ValidationError) as info:
        parse_manifest(doc)
    assert field.split(".")[-1] in str(info.value)
