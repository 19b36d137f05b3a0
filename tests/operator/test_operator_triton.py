"""`serving.runtime: triton`: the Deployment (repo init container, tritonserver, OpenAI front) and Service
are valid Kubernetes objects, meet the restricted Pod Security Standard and wire the parts together."""

from __future__ import annotations

from typing import Any

import kubernetes_validate

from chatmodel_operator.builders import deployment, service
from chatmodel_operator.builders.triton import GRPC_PORT
from chatmodel_operator.config import Config
from chatmodel_operator.spec import ChatModel, model_version
from tests.operator.operator_pss import violations

K8S_VERSION = "1.37.0"
SPEC = {
    "baseModel": {"source": "pvc://models/smollm"},
    "serving": {"runtime": "triton", "resources": {"gpu": 1}, "maxBatchSize": 16},
    "access": {"apiKeySecretRef": {"name": "keys"}},
}


def objects() -> tuple[dict[str, Any], dict[str, Any]]:
    cm = ChatModel.model_validate({"metadata": {"name": "bot", "namespace": "ns"}, "spec": SPEC})
    version = model_version(cm.spec)
    return deployment(cm, version, Config()), service(cm, version, Config())


def arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_triton_objects_are_valid_and_restricted() -> None:
    dep, svc = objects()
    kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
    kubernetes_validate.validate(svc, K8S_VERSION, strict=True)
    assert violations(dep["spec"]["template"]["spec"]) == []


def test_the_parts_are_wired_together() -> None:
    dep, svc = objects()
    pod = dep["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    triton, front = pod["containers"]
    assert init["args"][0] == "triton-repo" and arg(init["args"], "--name") == "bot"
    assert arg(init["args"], "--model") == arg(front["args"], "--model")
    assert arg(init["args"], "--max-batch-size") == "16" and arg(init["args"], "--device") == "cuda"
    assert triton["args"][0] == "triton-server" and arg(triton["args"], "--repo") == arg(
        init["args"], "--out"
    )
    assert arg(front["args"], "--backend") == f"triton://127.0.0.1:{GRPC_PORT}/bot"
    assert front["args"][0] == "serve" and "--api-keys-file" in front["args"]
    # The GPU and the model are Triton's; the API keys only the front's.
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in front["resources"]["limits"]
    assert "api-keys" not in {m["name"] for m in triton["volumeMounts"]}
    assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "triton-http"}
    ports = [p["containerPort"] for c in pod["containers"] for p in c["ports"]]
    assert len(ports) == len(set(ports)) == 4
    named = {p["name"] for c in pod["containers"] for p in c["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} == named
