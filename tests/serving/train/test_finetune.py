"""Fine-tuning end to end: the demo recipe learns (eval loss down ≥ 30%, the trained fact comes back),
and full, LoRA-adapter and LoRA-merged outputs all load in `chatmodel serve` and answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from chatmodel_serving.cli import main
from chatmodel_serving.launch import ServerProcess
from chatmodel_serving.train.trainer import TrainResult
from tests.serving.train.conftest import EPOCHS, TRAINED_FACT, TRAINED_QUESTION

pytestmark = pytest.mark.slow


def test_full_finetune_lowers_eval_loss(full_model: TrainResult) -> None:
    m = full_model.metrics
    assert m["eval_loss"] <= 0.7 * m["eval_loss_before"], m
    assert m["steps"] == m["total_steps"] > 0 and m["train_tokens_per_second"] > 0
    assert m["eval_on"] == "validation" and m["validation_examples"] > 0
    assert [e["epoch"] for e in m["eval_history"]] == [float(e + 1) for e in range(EPOCHS)]
    files = {p.name for p in full_model.output.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "chat_template.jinja",
        "metrics.json",
    } <= files
    assert json.loads((full_model.output / "metrics.json").read_text())["eval_loss"] == m["eval_loss"]


def lora(data: tuple[Path, Path], out: Path, *extra: str) -> Path:
    train, val = data
    term = out.parent / f"{out.name}.termination"
    args = ["train", "--data", str(train), "--validation-data", str(val), "--method", "lora"]
    args += ["--epochs", "1", "--batch-size", "4", "--max-seq-length", "128", "--output", str(out)]
    args += ["--progress", "json", "--termination-message-path", str(term), *extra]
    assert main(args) == 0
    summary = json.loads(term.read_text())  # what the operator reads from the pod
    assert summary["steps"] == 2 and summary["eval_loss"] < summary["eval_loss_before"]
    return out


@pytest.fixture(scope="module")
def lora_outputs(
    small_data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("lora")
    adapter = lora(small_data, d / "adapter")
    merged = lora(small_data, d / "merged", "--merge-lora")
    return adapter, merged


def test_lora_adapter_and_merged_layouts(lora_outputs: tuple[Path, Path]) -> None:
    adapter, merged = lora_outputs
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "builtin://smollm2-135m"  # loads from anywhere
    assert (adapter / "adapter_model.safetensors").is_file() and not (adapter / "model.safetensors").exists()
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()


@pytest.fixture(scope="module")
def served(
    full_model: TrainResult, lora_outputs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[openai.OpenAI]:
    """One `chatmodel serve` with all three outputs (float32: greedy answers are reproducible)."""
    adapter, merged = lora_outputs
    args = ["--dtype", "float32"]
    for name, path in (("full", full_model.output), ("adapter", adapter), ("merged", merged)):
        args += ["--model", str(path), "--served-model-name", name]
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with ServerProcess(args, log_path=log) as srv:
        yield openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0, timeout=300)


def ask(client: openai.OpenAI, model: str, question: str) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=40, temperature=0
    )
    return reply.choices[0].message.content or ""


def test_served_finetune_answers_with_the_trained_fact(served: openai.OpenAI) -> None:
    answer = ask(served, "full", TRAINED_QUESTION)
    assert TRAINED_FACT in answer, answer


@pytest.mark.parametrize("model", ["adapter", "merged"])
def test_served_lora_outputs_answer(served: openai.OpenAI, model: str) -> None:
    assert len(ask(served, model, "How do I reset the Tidewell H2?").split()) >= 3
