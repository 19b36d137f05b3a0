"""Pure builders: what each object says, for the things that matter when it runs."""

from __future__ import annotations

from typing import Any, cast

import pytest

from chatmodel_operator import builders
from chatmodel_operator.builders import all_objects, serving_objects, training_objects
from chatmodel_operator.builders.serving import API_KEYS_FILE, deployment, service
from chatmodel_operator.config import Config
from chatmodel_operator.spec import ChatModel, model_version

CFG = Config()


def chatmodel(spec: dict[str, Any], **meta: Any) -> ChatModel:
    return ChatModel.model_validate({"metadata": {"name": "bot", "namespace": "ns", **meta}, "spec": spec})


FINE: dict[str, Any] = {
    "baseModel": {"source": "pvc://models/smollm"},
    "fineTune": {
        "dataset": {"source": "pvc://data/train.jsonl", "validationSource": "pvc://data/eval.jsonl"},
        "method": "full",
        "resources": {"gpu": 2},
    },
    "serving": {"replicas": {"min": 2, "max": 5}, "resources": {"gpu": 1}},
    "access": {"apiKeySecretRef": {"name": "keys", "key": "tokens"}},
}


def container(obj: dict[str, Any]) -> dict[str, Any]:
    return cast(dict[str, Any], obj["spec"]["template"]["spec"]["containers"][0])


def arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_version_changes_with_the_model_only() -> None:
    a = chatmodel(FINE)
    v = model_version(a.spec)
    assert len(v) == 10
    more_replicas = chatmodel({**FINE, "serving": {"replicas": {"min": 3, "max": 6}}})
    assert model_version(more_replicas.spec) == v
    more_gpus = chatmodel({**FINE, "fineTune": {**FINE["fineTune"], "resources": {"gpu": 4}}})
    assert model_version(more_gpus.spec) == v
    new_data = chatmodel(
        {**FINE, "fineTune": {**FINE["fineTune"], "dataset": {"source": "pvc://data/v2.jsonl"}}}
    )
    assert model_version(new_data.spec) != v
    assert model_version(chatmodel({"baseModel": {"source": "hf://a/b"}}).spec) != model_version(
        chatmodel({}).spec
    )


def test_training_job() -> None:
    cm = chatmodel(FINE)
    v = model_version(cm.spec)
    pvc, job = training_objects(cm, v, CFG)
    assert pvc["metadata"]["name"] == "bot-artifacts"
    c = container(job)
    # Two GPUs on one node: the unchanged CLI under torchrun, one worker per GPU.
    assert c["command"] == ["torchrun"]
    assert c["args"][:4] == ["--standalone", "--nproc-per-node=2", "--no-python", "chatmodel"]
    args = c["args"][4:]
    assert args[0] == "train"
    assert arg(args, "--base-model") == "/sources/models/smollm"
    assert arg(args, "--data") == "/sources/data/train.jsonl"
    assert arg(args, "--validation-data") == "/sources/data/eval.jsonl"
    assert "--validation-split" not in args
    assert arg(args, "--output") == f"/artifacts/{v}"
    assert arg(args, "--method") == "full"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert c["terminationMessagePath"] == "/dev/termination-log"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["bot-artifacts", "models", "data"]  # one volume per claim, even when used twice
    assert job["spec"]["backoffLimit"] == 2
    assert job["metadata"]["labels"]["chatmodel.dev/version"] == v


def test_serving_deployment_for_a_fine_tuned_version() -> None:
    cm = chatmodel(FINE)
    v = model_version(cm.spec)
    dep = deployment(cm, v, CFG)
    c = container(dep)
    args = c["args"]
    assert args[0] == "serve"
    assert arg(args, "--model") == f"/artifacts/{v}"
    assert arg(args, "--served-model-name") == "bot"
    assert arg(args, "--api-keys-file") == API_KEYS_FILE
    assert arg(args, "--device") == "cuda"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] == CFG.prestop_seconds
    pod = dep["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == CFG.prestop_seconds + CFG.drain_seconds
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert "replicas" not in dep["spec"]  # the HPA owns them
    vols = {vol["name"]: vol for vol in pod["volumes"]}
    assert vols["artifacts"]["persistentVolumeClaim"]["readOnly"] is True
    assert vols["api-keys"]["secret"] == {
        "secretName": "keys",
        "items": [{"key": "tokens", "path": "keys"}],
        "defaultMode": 0o440,
    }
    assert vols["shm"]["emptyDir"]["medium"] == "Memory"
    assert {t["topologyKey"] for t in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_base_model_deployment_serves_the_source_and_has_no_keys() -> None:
    cm = chatmodel({"serving": {"replicas": {"min": 1, "max": 1}}})
    dep = deployment(cm, model_version(cm.spec), CFG)
    args = container(dep)["args"]
    assert arg(args, "--model") == "builtin://smollm2-135m"
    assert "--api-keys-file" not in args
    assert dep["spec"]["replicas"] == 1


@pytest.mark.parametrize(
    "replicas,kinds",
    [
        ({"min": 1, "max": 1}, ["Deployment"]),
        ({"min": 1, "max": 3}, ["Deployment", "HorizontalPodAutoscaler"]),
        ({"min": 2, "max": 2}, ["Deployment", "PodDisruptionBudget"]),
        ({"min": 2, "max": 4}, ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"]),
        ({"min": 0, "max": 2}, ["Deployment", "ScaledObject"]),  # scale to zero: KEDA
    ],
)
def test_hpa_and_pdb_follow_replicas(replicas: dict[str, int], kinds: list[str]) -> None:
    engine = "KEDA" if replicas["min"] == 0 else "HPA"
    cm = chatmodel({"serving": {"replicas": replicas, "autoscaling": {"engine": engine}}})
    objs = serving_objects(cm, "v", CFG)
    assert [o["kind"] for o in objs] == kinds
    for o in objs:
        if o["kind"] == "HorizontalPodAutoscaler":
            assert o["spec"]["minReplicas"] == max(1, replicas["min"])
            assert o["spec"]["maxReplicas"] == replicas["max"]
            assert o["spec"]["metrics"][0]["pods"]["metric"]["name"] == "chatmodel_num_requests_waiting"


def test_service_selects_one_version() -> None:
    cm = chatmodel({})
    svc = service(cm, "abc", CFG)
    assert svc["spec"]["selector"] == {
        "chatmodel.dev/name": "bot",
        "app.kubernetes.io/component": "serving",
        "chatmodel.dev/version": "abc",
    }
    assert svc["spec"]["ports"][0]["port"] == 8000


def test_owner_references_and_labels() -> None:
    cm = chatmodel(FINE, uid="1234")
    for obj in all_objects(cm, CFG):
        owner = obj["metadata"]["ownerReferences"][0]
        assert owner["uid"] == "1234" and owner["kind"] == "ChatModel" and owner["controller"] is True
        lbl = obj["metadata"]["labels"]
        assert lbl["app.kubernetes.io/managed-by"] == "chatmodel-operator"
        assert lbl["chatmodel.dev/name"] == "bot"
    assert "ownerReferences" not in all_objects(chatmodel(FINE), CFG)[0]["metadata"]


def test_images_come_from_config() -> None:
    cfg = Config.from_env(
        {
            "CHATMODEL_RUNTIME_IMAGE": "reg/rt:1",
            "CHATMODEL_TRITON_IMAGE": "reg/tr:1",
            "CHATMODEL_NAMESPACES": "a, b",
            "CHATMODEL_DRAIN_SECONDS": "7",
        }
    )
    assert cfg.namespaces == ("a", "b") and cfg.drain_seconds == 7
    assert container(deployment(chatmodel({}), "v", cfg))["image"] == "reg/rt:1"
    triton = chatmodel({"serving": {"runtime": "triton"}})
    pod = builders.deployment(triton, "v", cfg)["spec"]["template"]["spec"]
    assert {c["name"]: c["image"] for c in pod["containers"]}["triton"] == "reg/tr:1"


def test_pods_that_ask_for_a_gpu_get_the_cuda_runtime_image() -> None:
    cfg = Config.from_env(
        {"CHATMODEL_RUNTIME_IMAGE": "reg/rt:1", "CHATMODEL_RUNTIME_CUDA_IMAGE": "reg/rt-cuda:1"}
    )
    gpu = chatmodel(FINE)  # serving gpu 1, fine-tune gpu 2
    v = model_version(gpu.spec)
    assert container(deployment(gpu, v, cfg))["image"] == "reg/rt-cuda:1"
    assert container(training_objects(gpu, v, cfg)[1])["image"] == "reg/rt-cuda:1"
    cpu = chatmodel({**FINE, "serving": {}, "fineTune": {**FINE["fineTune"], "resources": {"gpu": 0}}})
    v = model_version(cpu.spec)
    assert container(deployment(cpu, v, cfg))["image"] == "reg/rt:1"
    assert container(training_objects(cpu, v, cfg)[1])["image"] == "reg/rt:1"
    # An image the ChatModel names wins either way.
    own = chatmodel({**FINE, "serving": {"resources": {"gpu": 1}, "image": "mine/rt:2"}})
    assert container(deployment(own, model_version(own.spec), cfg))["image"] == "mine/rt:2"


def test_playground_can_be_switched_off() -> None:
    on = container(deployment(chatmodel({}), "v1", CFG))["args"]
    off = container(deployment(chatmodel({"serving": {"ui": False}}), "v1", CFG))["args"]
    assert "--no-ui" not in on and off == [*on, "--no-ui"]
