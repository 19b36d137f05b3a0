"""Validation of every object we render, against schemas installed from a package registry (this repository
holds no copies of other projects' files):
- built-in kinds: kubernetes-validate (Kubernetes' own OpenAPI schemas, strict: unknown fields refused);
- prometheus-operator and KEDA kinds: cloudcoil's models, generated from those projects' CRDs (PyPI);
- Kubeflow Trainer's TrainJob: the models Kubeflow publishes for its API (PyPI kubeflow-trainer-api);
- Gateway API HTTPRoute: the models npm's @kubernetes-models/gateway-api generates from the Gateway API
  CRDs (node, tests/schemas; `make install-node-tools`), plus our own unknown-field check (they allow any);
- GIE InferencePool: no registry reachable here ships its schema, so a small hand-written check of what its
  v1 API reference requires (`_gateway_errors`), named as such.
The generated models ignore unknown fields, so a field that does not survive the round trip counts as one."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
from cloudcoil.models.keda import v1alpha1 as keda
from cloudcoil.models.prometheus_operator import v1 as monitoring
from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

K8S_VERSION = "1.37.0"
MODELS: dict[tuple[str, str], Any] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): monitoring.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PodMonitor"): monitoring.PodMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): monitoring.PrometheusRule,
    ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
    ("trainer.kubeflow.org/v1alpha1", "TrainJob"): TrainerV1alpha1TrainJob,
}
NPM_MODELS = {("gateway.networking.k8s.io/v1", "HTTPRoute")}
UNPUBLISHED = {*NPM_MODELS, ("inference.networking.k8s.io/v1", "InferencePool")}
NODE_TOOLS = Path(__file__).resolve().parents[1] / "schemas"


class SchemaError(ValueError):
    pass


def _port(value: Any) -> bool:
    return isinstance(value, int) and 1 <= value <= 65535


def _gateway_errors(obj: dict[str, Any]) -> list[str]:
    """Required fields and types of HTTPRoute (gateway.networking.k8s.io/v1) and InferencePool
    (inference.networking.k8s.io/v1) as their API references define them."""
    spec, errors = obj.get("spec") or {}, []
    if obj["kind"] == "InferencePool":
        labels = (spec.get("selector") or {}).get("matchLabels")
        if not (isinstance(labels, dict) and labels and all(isinstance(v, str) for v in labels.values())):
            errors.append("spec.selector.matchLabels: a non-empty map of strings is required")
        ports = spec.get("targetPorts")
        if not (
            isinstance(ports, list) and 1 <= len(ports) <= 8 and all(_port(p.get("number")) for p in ports)
        ):
            errors.append("spec.targetPorts: 1-8 items of {number: 1-65535} are required")
        picker = spec.get("endpointPickerRef") or {}
        if not (isinstance(picker.get("name"), str) and _port((picker.get("port") or {}).get("number"))):
            errors.append("spec.endpointPickerRef: name and port.number are required")
        allowed = {"selector", "targetPorts", "endpointPickerRef", "appProtocol"}
    else:
        refs = spec.get("parentRefs")
        if not (isinstance(refs, list) and all(isinstance(r.get("name"), str) for r in refs)):
            errors.append("spec.parentRefs: a list of references with a string name is required")
        for r in refs or []:
            if not set(r) <= {"group", "kind", "namespace", "name", "sectionName", "port"}:
                errors.append(f"spec.parentRefs: unknown field in {r}")
            if any(not isinstance(r.get(k, ""), str) for k in ("group", "kind", "namespace", "sectionName")):
                errors.append(f"spec.parentRefs: group, kind, namespace and sectionName are strings: {r}")
        for rule in spec.get("rules") or []:
            for b in rule.get("backendRefs") or []:
                if not isinstance(b.get("name"), str):
                    errors.append("spec.rules[].backendRefs[].name is required")
                if not (isinstance(b.get("weight", 1), int) and 0 <= b.get("weight", 1) <= 1000000):
                    errors.append("spec.rules[].backendRefs[].weight: an integer 0-1000000")
        allowed = {"parentRefs", "hostnames", "rules"}
    errors += [f"spec.{k}: unknown field" for k in set(spec) - allowed]
    return errors


def _npm_model_errors(obj: dict[str, Any]) -> list[str]:
    from tests.tools import missing, need_binary

    node = need_binary("node", "apt-get install nodejs npm && make install-node-tools")
    if not (NODE_TOOLS / "node_modules" / "@kubernetes-models" / "gateway-api").is_dir():
        missing("@kubernetes-models/gateway-api", "make install-node-tools")
    run = subprocess.run(
        [node, "validate_gateway.mjs"],
        input=json.dumps([obj]),
        capture_output=True,
        text=True,
        cwd=NODE_TOOLS,
        check=True,
        timeout=60,
    )
    (error,) = json.loads(run.stdout)
    return [f"published schema: {error}"] if error else []


def validate(obj: dict[str, Any]) -> None:
    """Raise (SchemaError, or the model's ValidationError, both ValueErrors) when `obj` is not valid."""
    key = (obj["apiVersion"], obj["kind"])
    if key in MODELS:
        model = MODELS[key]
        if hasattr(model, "from_dict"):  # openapi-generator models (Kubeflow): their own (de)serialisers
            again = model.from_dict(obj).to_dict()
        else:
            again = model.model_validate(obj).model_dump(by_alias=True, exclude_unset=True, mode="json")
        if again != obj:
            raise SchemaError(f"{obj['kind']}: a field the schema does not know (lost in the round trip)")
    elif key in UNPUBLISHED:
        errors = _gateway_errors(obj) + (_npm_model_errors(obj) if key in NPM_MODELS else [])
        if errors:
            raise SchemaError(f"{obj['kind']}: " + "; ".join(errors))
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
