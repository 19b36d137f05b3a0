"""A ChatModel's store fields reach the runtime's downloader: the operator writes them into the serving and
training containers as the stores' standard variables, and fetch.Settings reads the same ones back."""

from __future__ import annotations

from typing import Any

import pytest

from chatmodel_operator.builders.serving import deployment
from chatmodel_operator.builders.training import training_job
from chatmodel_operator.config import Config
from chatmodel_operator.spec import ChatModel
from chatmodel_serving.fetch import Settings

SECRETS = {
    "store-keys": {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "s3cret", "HF_TOKEN": "hf_x"}
}


def chatmodel(spec: dict[str, Any]) -> ChatModel:
    return ChatModel.model_validate({"metadata": {"name": "bot", "namespace": "ns"}, "spec": spec})


def environment(container: dict[str, Any]) -> dict[str, str]:
    """The container's variables as the kubelet would set them (secretKeyRef looked up in SECRETS)."""
    env = {}
    for e in container["env"]:
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = SECRETS[ref["name"]][ref["key"]]
        else:
            env[e["name"]] = e["value"]
    return env


def settings_in(container: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in ("HF_ENDPOINT", "HF_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment(container).items():
        monkeypatch.setenv(name, value)
    return Settings.from_env()


def test_an_s3_model_s_endpoint_region_style_and_keys_reach_the_serving_pod(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = {
        "source": "s3://models/smollm2",
        "endpoint": "http://minio.storage:9000",
        "region": "eu-west-1",
        "pathStyle": False,
        "credentialsSecretRef": {"name": "store-keys"},
    }
    dep = deployment(chatmodel({"baseModel": base}), "v1", Config())
    s = settings_in(dep["spec"]["template"]["spec"]["containers"][0], monkeypatch)
    assert (s.s3_endpoint, s.s3_region, s.s3_path_style) == ("http://minio.storage:9000", "eu-west-1", False)
    assert (s.s3_access_key, s.s3_secret_key) == ("AKIAEXAMPLE", "s3cret")


def test_a_hub_dataset_and_model_reach_the_training_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = {
        "baseModel": {
            "source": "hf://org/model",
            "endpoint": "http://mirror.internal",
            "credentialsSecretRef": {"name": "store-keys"},
        },
        "fineTune": {
            "dataset": {"source": "hf://datasets/org/faq/train.jsonl", "endpoint": "http://mirror.internal"}
        },
    }
    job = training_job(chatmodel(spec), "v1", Config())
    container = job["spec"]["template"]["spec"]["containers"][0]
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names))  # one HF_ENDPOINT, though both sources set it
    s = settings_in(container, monkeypatch)
    assert (s.hub_endpoint, s.hub_token) == ("http://mirror.internal", "hf_x")


def test_builtin_and_pvc_sources_add_no_store_variables() -> None:
    dep = deployment(chatmodel({"baseModel": {"source": "pvc://models/x"}}), "v1", Config())
    names = {e["name"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert not names & {"HF_ENDPOINT", "HF_TOKEN", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID"}
