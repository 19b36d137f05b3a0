"""The real vLLM CPU server, started by `chatmodel run` of the vLLM sample (a copy with a cheaper recipe): our
trainer writes a LoRA adapter, then vLLM runs from .venv-vllm with the arguments our builder renders
(builders/vllm.server_args) on the shipped model written as a folder, the adapter as a second model name.
One server for the module (warm-up takes minutes on 2 cores). CHATMODEL_SKIP_VLLM=1 skips it locally; under
.ci/run it cannot."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from chatmodel_operator.signals import signals
from chatmodel_serving.cli.vllm import INSTALL, vllm_python
from chatmodel_serving.launch import ReadyProcess, free_port
from chatmodel_serving.models import cpu_supports_bf16
from tests.serving.same_calls import CALLS
from tests.tools import missing

SAMPLE = Path(__file__).parents[3] / "manifests/samples/vllm.yaml"
API_KEY = "vllm-test-key-0123"
QUESTION = "What is the part number of the Tidewell H2 filter cartridge?"
# One short epoch at a high rate: enough to change greedy answers, minutes rather than tens on 2 cores.
CHEAP_RECIPE = {"epochs": 1, "learningRate": 3.0e-3, "batchSize": 4, "maxSeqLength": 128}


def _skip_or_fail() -> None:
    if os.environ.get("CHATMODEL_SKIP_VLLM") == "1" and os.environ.get("CHATMODEL_STRICT") != "1":
        pytest.skip("CHATMODEL_SKIP_VLLM=1 (the run's header says so too)")
    if vllm_python() is None:
        missing("vLLM's virtual environment (.venv-vllm)", INSTALL)


class ChatmodelRun(ReadyProcess):
    """`chatmodel run MANIFEST` in a child process, ready once vLLM's /health answers."""

    what = "chatmodel run (vLLM)"

    def __init__(self, manifest: Path, work_dir: Path, keys: Path, log_path: Path):
        super().__init__(log_path, ready_timeout=1800.0)  # training + vLLM warm-up on a shared CPU
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.base}/v1"
        self.args = [str(manifest), "--port", str(self.port), "--work-dir", str(work_dir)]
        self.args += ["--api-keys-file", str(keys)]

    def command(self) -> list[str]:
        return [sys.executable, "-m", "chatmodel_serving.cli", "run", *self.args]

    @property
    def ready_url(self) -> str:
        return f"{self.base}/health"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatmodelRun]:
    _skip_or_fail()
    d = tmp_path_factory.mktemp("vllm-run")
    doc = yaml.safe_load(SAMPLE.read_text())
    doc["spec"]["fineTune"]["hyperparameters"] = CHEAP_RECIPE
    # The sample says bfloat16 (GPUs, AVX-512 BF16 CPUs); AVX2-only CPUs run it at half float32's speed.
    doc["spec"]["serving"]["dtype"] = "bfloat16" if cpu_supports_bf16() else "float32"
    manifest = d / "vllm.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    keys = d / "keys"
    keys.write_text(f"# the first key is vLLM's\n{API_KEY}\n")
    with ChatmodelRun(manifest, d / "artifacts", keys, d / "run.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ChatmodelRun) -> openai.OpenAI:
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


def test_request_without_the_key_gets_401(server: ChatmodelRun) -> None:
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


def test_metrics_carry_the_autoscaling_names(server: ChatmodelRun, client: openai.OpenAI) -> None:
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


# Where vLLM 0.32 (CPU, the built-in model) answers otherwise, seen in this test (docs/vllm.md): a JSON schema
# answer loops on whitespace until max_tokens even with disable_any_whitespace, and a named tool's arguments
# came back as a bare string ("Paris"), not an object of its parameters.
VLLM_DIFFERS = {"json_schema_validates", "named_tool_is_called"}


@pytest.mark.parametrize(
    "call", [c for c in CALLS if c.__name__ not in VLLM_DIFFERS], ids=lambda c: c.__name__
)
def test_same_calls_as_our_runtimes(client: openai.OpenAI, call: Any) -> None:
    """tests/serving/same_calls.py, as tests/serving/test_same_calls.py runs them on ours."""
    call(client, "tidewell-vllm-base")
