"""The real vLLM CPU server, started with the arguments our builder renders (builders/vllm.server_args) on the
shipped model written as a folder, plus a LoRA adapter written by our trainer: one server for the module
(warm-up takes minutes on 2 cores). CHATMODEL_SKIP_VLLM=1 skips it locally; under .ci/run it cannot."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from chatmodel_operator.signals import signals
from chatmodel_operator.spec import load_manifest
from chatmodel_serving.vllm_cmd import INSTALL, VllmProcess, vllm_python
from tests.tools import missing

SAMPLE = Path(__file__).parents[2] / "manifests/samples/vllm.yaml"
API_KEY = "vllm-test-key-0123"
QUESTION = "What is the part number of the Tidewell H2 filter cartridge?"


def _skip_or_fail() -> None:
    if os.environ.get("CHATMODEL_SKIP_VLLM") == "1" and os.environ.get("CHATMODEL_STRICT") != "1":
        print("\nCHATMODEL_SKIP_VLLM=1: skipping the real vLLM server tests", file=sys.stderr)
        pytest.skip("CHATMODEL_SKIP_VLLM=1")
    if vllm_python() is None:
        missing("vLLM's virtual environment (.venv-vllm)", INSTALL)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter from our trainer: a few steps at a high rate, enough to change greedy answers."""
    from chatmodel_serving.train.config import TrainConfig
    from chatmodel_serving.train.data import BUILTIN_DATA
    from chatmodel_serving.train.trainer import train

    _skip_or_fail()
    out = tmp_path_factory.mktemp("vllm-lora") / "adapter"
    config = TrainConfig(
        base_model="builtin://smollm2-135m",
        data=str(BUILTIN_DATA / "tidewell-faq.jsonl"),
        output=out,
        method="lora",
        epochs=1,
        max_steps=8,
        learning_rate=3e-3,
        batch_size=4,
        max_seq_length=128,
        early_stopping_patience=0,
        save_steps=0,
        termination_message_path=None,
    )
    assert train(config, json_lines=True).metrics["adapter"] is True
    return out


@pytest.fixture(scope="module")
def server(adapter: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmProcess]:
    from chatmodel_serving.models import resolve_source

    cm = load_manifest(SAMPLE)
    base = resolve_source(cm.spec.base_model.source)  # the shipped GGUF, written once as a HF folder
    log = tmp_path_factory.mktemp("vllm-server") / "vllm.log"
    with VllmProcess(
        cm, str(base), loras={cm.metadata.name: str(adapter)}, api_key=API_KEY, log_path=log
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: VllmProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=API_KEY, max_retries=0, timeout=300)


def greedy(client: openai.OpenAI, model: str) -> str:
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=24, temperature=0
    )
    assert r.choices[0].finish_reason in ("stop", "length")
    return r.choices[0].message.content or ""


def test_chat_and_stream(client: openai.OpenAI) -> None:
    answer = greedy(client, "tidewell-vllm-base")
    assert answer.strip()
    stream = client.chat.completions.create(
        model="tidewell-vllm-base",
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=24,
        temperature=0,
        stream=True,
    )
    chunks = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len(chunks) > 3
    assert "".join(chunks) == answer  # greedy: the stream spells the same answer


def test_request_without_the_key_gets_401(server: VllmProcess) -> None:
    body = json.dumps({"model": "tidewell-vllm-base", "messages": [{"role": "user", "content": "hi"}]})
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        req = urllib.request.Request(
            f"{server.url}/chat/completions",
            data=body.encode(),
            headers={"Content-Type": "application/json", **headers},
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=30)
        assert info.value.code == 401


def test_metrics_carry_the_autoscaling_names(server: VllmProcess, client: openai.OpenAI) -> None:
    greedy(client, "tidewell-vllm-base")
    with urllib.request.urlopen(f"{server.base}/metrics", timeout=30) as r:
        text = r.read().decode()
    s = signals("vllm")
    for name in (s.requests_waiting, s.requests_running, s.kv_cache_usage):
        assert f"{name}{{" in text and f'{s.model_label}="tidewell-vllm-base"' in text, name


def test_lora_adapter_is_a_second_model_answering_differently(client: openai.OpenAI) -> None:
    names = {m.id for m in client.models.list()}
    assert {"tidewell-vllm", "tidewell-vllm-base"} <= names
    tuned, base = greedy(client, "tidewell-vllm"), greedy(client, "tidewell-vllm-base")
    assert tuned.strip() and tuned != base, (tuned, base)
