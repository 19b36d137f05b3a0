"""Trainer features that a successful run alone cannot show, on a tiny random model (seconds per run):
early stopping ends an overfitting run at the right epoch and publishes the best epoch's weights, not the
last; a LoRA adapter merged into its base answers as the unmerged adapter does, and not as the base."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch

from chatmodel_serving.models import load_model
from chatmodel_serving.train.batches import evaluate
from chatmodel_serving.train.config import TrainConfig
from chatmodel_serving.train.data import load_examples, tokenize_examples
from chatmodel_serving.train.trainer import MIN_IMPROVEMENT, TrainResult, train
from tests.fuzz.tiny_model import write_tiny_model

pytestmark = pytest.mark.slow

EPOCHS = 30
MAX_SEQ_LENGTH = 96
BATCH_SIZE = 4
QUESTION = "How do I reset the Tidewell H2?"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def run(tiny: Path, data: tuple[Path, Path], out: Path, **settings: Any) -> TrainResult:
    train_file, val_file = data
    config = TrainConfig(
        base_model=str(tiny),
        data=str(train_file),
        validation_data=str(val_file),  # other examples than the 8 trained on: the eval loss can rise
        output=out,
        batch_size=BATCH_SIZE,
        max_seq_length=MAX_SEQ_LENGTH,
        compute_dtype="float32",
        device="cpu",
        save_steps=0,
        termination_message_path=None,
        **settings,
    )
    return train(config, json_lines=True)


def eval_loss_of(output: Path, val_file: Path) -> float:
    """The validation loss of the published model, loaded as `chatmodel serve` loads it."""
    loaded = load_model(str(output), dtype="float32", device="cpu")
    tokenizer = loaded.tokenizer
    data, _ = tokenize_examples(load_examples(val_file), tokenizer, MAX_SEQ_LENGTH, "validation")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return evaluate(loaded.model, data, BATCH_SIZE, pad, loaded.device, None)


def test_an_overfitting_run_stops_early_and_publishes_the_best_epoch(
    tiny: Path, small_data: tuple[Path, Path], tmp_path: Path
) -> None:
    # A learning rate far too high for 8 examples: the eval loss falls for an epoch or two, then rises.
    overfit: dict[str, Any] = {"method": "full", "learning_rate": 3e-2, "warmup_ratio": 0.0}
    result = run(tiny, small_data, tmp_path / "model", epochs=EPOCHS, early_stopping_patience=1, **overfit)
    m = result.metrics
    history = m["eval_history"]
    losses = [e["eval_loss"] for e in history]
    assert m["stopped_early"] and m["steps"] < m["total_steps"], m
    epochs = [e["epoch"] for e in history]  # one evaluation per epoch
    assert epochs == [float(n) for n in range(1, len(epochs) + 1)] and 2 <= len(epochs) < EPOCHS
    # Patience 1: every evaluation but the last set a new best, and the first one that did not ended the run.
    assert all(b < a - MIN_IMPROVEMENT for a, b in itertools.pairwise(losses[:-1])), losses
    assert losses[-1] >= losses[-2] - MIN_IMPROVEMENT, losses
    best = history[-2]
    assert m["best_step"] == best["step"] < m["steps"] == history[-1]["step"]
    assert m["eval_loss"] == best["eval_loss"] and m["eval_loss_last"] == losses[-1]
    assert losses[-1] > best["eval_loss"] + 0.05, "the last epoch must be measurably worse to tell them apart"
    # What is published (and served) is the best epoch's model, not the last epoch's.
    served = eval_loss_of(result.output, small_data[1])
    assert served == pytest.approx(best["eval_loss"], rel=1e-5, abs=1e-5), (served, losses)


def logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        out: torch.Tensor = model(input_ids=ids).logits[0]
    return out


def test_a_merged_lora_answers_as_the_unmerged_adapter_and_not_as_the_base(
    tiny: Path, small_data: tuple[Path, Path], tmp_path: Path
) -> None:
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM

    lora: dict[str, Any] = {"method": "lora", "epochs": 2, "learning_rate": 1e-2}
    adapter = run(tiny, small_data, tmp_path / "adapter", **lora).output
    merged = run(tiny, small_data, tmp_path / "merged", merge_lora=True, **lora).output  # the same run
    assert (adapter / "adapter_config.json").is_file() and not (merged / "adapter_config.json").exists()

    base = load_model(str(tiny), dtype="float32", device="cpu")
    prompt = base.tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True
    )
    ids = torch.tensor([list(prompt if isinstance(prompt, list) else prompt["input_ids"])])
    # The adapter applied on the fly, beside the base weights (peft's LoRA layers, not merged).
    unmerged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32), adapter
    )
    layers = [m for m in unmerged.modules() if isinstance(m, LoraLayer)]
    assert layers and not any(layer.merged for layer in layers)
    want = logits(unmerged.eval(), ids)

    for output in (merged, adapter):  # the --merge-lora artifact, and the adapter as served (merged at load)
        got = logits(load_model(str(output), dtype="float32", device="cpu").model, ids)
        assert float((got - want).abs().max()) < 1e-4, output  # float32 rounding only (measured: 4e-7)
        assert torch.equal(got.argmax(-1), want.argmax(-1))
    from_base = logits(base.model, ids)
    assert float((from_base - want).abs().max()) > 0.1  # the adapter changed the model (measured: 0.6)
    assert not torch.equal(from_base.argmax(-1), want.argmax(-1))  # ...down to its greedy next tokens
