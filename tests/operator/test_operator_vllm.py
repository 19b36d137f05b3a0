"""`serving.runtime: vllm`: valid, restricted objects; the rendered vLLM arguments pinned; bad settings
refused by the CRD and by the pydantic model with a message naming the field."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any, cast

import kubernetes_validate
import pytest
from pydantic import ValidationError

from chatmodel_operator.builders import all_objects, deployment
from chatmodel_operator.builders.adapters import SHARED, TABLE_FILE
from chatmodel_operator.builders.vllm import CPU_IMAGE, GPU_IMAGE
from chatmodel_operator.config import Config
from chatmodel_operator.runtime_args import VLLM_PORT, VllmSidecarOptions
from chatmodel_operator.signals import signals
from chatmodel_operator.spec import ChatModel, load_manifest, model_version, parse_manifest
from tests.operator.operator_crdcheck import validate
from tests.operator.operator_pss import violations

K8S_VERSION = "1.37.0"
SAMPLE = Path(__file__).parents[2] / "manifests/samples/vllm.yaml"
GPU_SPEC = {
    "baseModel": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
    "serving": {
        "runtime": "vllm",
        "resources": {"gpu": 2},
        "replicas": {"min": 1, "max": 3},
        "vllm": {"maxModelLen": 4096, "gpuMemoryUtilization": 0.85, "extraArgs": ["--enable-prefix-caching"]},
    },
    "access": {"apiKeySecretRef": {"name": "keys"}},
}


def model(spec: dict[str, Any], status: dict[str, Any] | None = None) -> ChatModel:
    return ChatModel.model_validate(
        {"metadata": {"name": "bot", "namespace": "ns"}, "spec": spec, "status": status}
    )


def server(dep: dict[str, Any]) -> dict[str, Any]:
    return cast(dict[str, Any], dep["spec"]["template"]["spec"]["containers"][0])


def test_gpu_args_are_pinned() -> None:
    cm = model(GPU_SPEC)
    c = server(deployment(cm, model_version(cm.spec), Config()))
    assert c["image"] == GPU_IMAGE
    assert c["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert c["args"] == [
        "--model", "HuggingFaceTB/SmolLM2-135M-Instruct",
        "--served-model-name", "bot",
        "--host", "0.0.0.0",
        "--port", "8000",
        "--dtype", "auto",
        "--max-num-seqs", "256",
        "--generation-config", "vllm",
        "--tensor-parallel-size", "2",
        "--max-model-len", "4096",
        "--gpu-memory-utilization", "0.85",
        "--enable-prefix-caching",
    ]  # fmt: skip
    env = {e["name"]: e for e in c["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "keys", "key": "keys"}}
    assert "VLLM_CPU_KVCACHE_SPACE" not in env
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    # Warm-up takes minutes on CPU: 20 minutes before liveness may restart the pod.
    probe = c["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 1200


def test_lora_mode_serves_every_kept_version_from_the_base() -> None:
    doc = load_manifest(SAMPLE).model_dump(by_alias=True, exclude_none=True)
    old = "0123456789"
    versions = [{"name": old, "baseModel": "builtin://smollm2-135m", "state": "Serving"}]
    cm = ChatModel.model_validate({**doc, "status": {"versions": versions}})
    version = model_version(cm.spec)
    dep = deployment(cm, version, Config())
    pod = dep["spec"]["template"]["spec"]
    c = server(dep)
    assert c["image"] == CPU_IMAGE
    # The builtin model is written as a folder into /cache by our image, then vLLM reads it.
    init = pod["initContainers"][0]
    assert init["image"] == Config().runtime_image and init["command"][-1] == "smollm2-135m"
    args = c["args"]
    assert args[:4] == ["--model", "/cache/builtin/smollm2-135m", "--served-model-name", "tidewell-vllm-base"]
    lora = args[args.index("--lora-modules") + 1 : args.index("--lora-modules") + 4]
    assert lora == [
        f"tidewell-vllm=/artifacts/{version}",
        f"tidewell-vllm-{version}=/artifacts/{version}",
        f"tidewell-vllm-{old}=/artifacts/{old}",
    ]
    assert {"--enable-lora", "--enable-prefix-caching"} <= set(args)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "4"
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"


SHARED_SPEC = {
    "fineTune": {"dataset": {"source": "pvc://data/x.jsonl"}, "method": "lora"},
    "serving": {"runtime": "vllm", "lora": {"shared": True, "maxLoras": 5, "maxRank": 32}},
    "access": {"apiKeySecretRef": {"name": "keys"}, "tls": {"secretName": "certs"}},
}


def test_shared_lora_pod_is_vllm_with_the_adapter_sidecar_in_front() -> None:
    cm = model(SHARED_SPEC)
    config = Config()
    pod = deployment(cm, SHARED, config)["spec"]["template"]["spec"]
    vllm, sidecar = pod["containers"]
    args = vllm["args"]
    assert args[args.index("--port") + 1] == str(VLLM_PORT) and "--ssl-certfile" not in args
    assert args[args.index("--max-loras") + 1] == "5" and args[args.index("--max-lora-rank") + 1] == "32"
    assert "--lora-modules" not in args and args[args.index("--served-model-name") + 1] == "bot-base"
    env = {e["name"]: e for e in vllm["env"]}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"
    assert vllm["readinessProbe"]["httpGet"] == {"path": "/health", "port": "vllm"}
    # The sidecar holds the Service's port, TLS, the table and the readiness that counts.
    assert sidecar["ports"] == [{"name": "http", "containerPort": config.service_port, "protocol": "TCP"}]
    assert sidecar["args"][0] == "vllm-sidecar"
    parser = argparse.ArgumentParser()
    VllmSidecarOptions.add_arguments(parser)
    opts = VllmSidecarOptions.from_args(parser.parse_args(sidecar["args"][1:]))
    assert opts.adapters_file == TABLE_FILE and opts.vllm_url == f"http://127.0.0.1:{VLLM_PORT}"
    assert opts.tls_cert_file and opts.tls_key_file
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http", "scheme": "HTTPS"}
    mounts = {m["name"] for m in sidecar["volumeMounts"]}
    assert mounts == {"adapters", "tls"} and not mounts & {m["name"] for m in vllm["volumeMounts"]}
    assert {e["name"] for e in sidecar["env"]} >= {"VLLM_API_KEY"}


@pytest.mark.parametrize("spec", [GPU_SPEC, "sample", SHARED_SPEC], ids=["gpu", "sample", "shared"])
def test_objects_are_valid_and_restricted(spec: Any) -> None:
    cm = load_manifest(SAMPLE) if spec == "sample" else model(spec)
    objs = all_objects(cm, Config())
    for obj in objs:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    dep = next(o for o in objs if o["kind"] == "Deployment")
    # No exception to the restricted profile: vLLM's caches go to the /cache emptyDir, HOME is /tmp.
    assert violations(dep["spec"]["template"]["spec"]) == []
    hpa = [o for o in objs if o["kind"] == "HorizontalPodAutoscaler"]
    if hpa:  # autoscaling reads vLLM's own queue metric, named in signals.py
        metric = hpa[0]["spec"]["metrics"][0]["pods"]["metric"]["name"]
        assert metric == signals("vllm").requests_waiting == "vllm:num_requests_waiting"


BASE = {"apiVersion": "chatmodel.dev/v1alpha1", "kind": "ChatModel", "metadata": {"name": "bad"}}
INVALID: list[tuple[str, dict[str, Any], str]] = [
    *(
        (
            f"owned{flag}",
            {"runtime": "vllm", "vllm": {"extraArgs": ["--trust-remote-code", arg]}},
            "extraArgs",
        )
        for flag, arg in [("--port", "--port"), ("--model=", "--model=/x"), ("--api-key", "--api-key")]
    ),
    ("served-name", {"runtime": "vllm", "vllm": {"extraArgs": ["--served-model-name=x"]}}, "extraArgs"),
    ("vllm-block-on-pytorch", {"vllm": {"maxModelLen": 2048}}, "spec.serving.vllm"),
    ("gpu-util-on-cpu", {"runtime": "vllm", "vllm": {"gpuMemoryUtilization": 0.9}}, "gpuMemoryUtilization"),
    (
        "gpu-util-above-1",
        {"runtime": "vllm", "resources": {"gpu": 1}, "vllm": {"gpuMemoryUtilization": 1.5}},
        "gpuMemoryUtilization",
    ),
    ("tiny-context", {"runtime": "vllm", "vllm": {"maxModelLen": 8}}, "maxModelLen"),
    ("too-many-args", {"runtime": "vllm", "vllm": {"extraArgs": ["--x"] * 65}}, "extraArgs"),
]


@pytest.mark.parametrize("case,serving,field", INVALID, ids=[c[0] for c in INVALID])
def test_bad_vllm_settings_are_refused(case: str, serving: dict[str, Any], field: str) -> None:
    doc = {**copy.deepcopy(BASE), "spec": {"serving": serving}}
    errors = validate(doc)
    assert any(field in e for e in errors), (case, errors)
    with pytest.raises(ValidationError) as info:
        parse_manifest(doc)
    assert field.split(".")[-1] in str(info.value)


def test_good_vllm_settings_are_accepted() -> None:
    doc = {**copy.deepcopy(BASE), "spec": GPU_SPEC}
    assert validate(doc) == []
    parse_manifest(doc)
