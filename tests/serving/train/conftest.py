"""Shared fixtures for the trainer tests. Training is the slow part (2 shared CPU cores), so the one
full fine-tune on the demo data is a session fixture that the quality and serving tests share, and the
mechanics tests (LoRA, resume) run a couple of steps on a handful of short examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatmodel_serving.train.config import TrainConfig
from chatmodel_serving.train.data import BUILTIN_DATA
from chatmodel_serving.train.trainer import TrainResult, train

DEMO_DATA = BUILTIN_DATA / "tidewell-faq.jsonl"
# A trained question and the fact its answer must contain (the base model cannot know it).
TRAINED_QUESTION = "What is the part number of the Tidewell H2 filter cartridge?"
TRAINED_FACT = "TW-F88"
EPOCHS = 3


def demo_lines() -> list[dict[str, str]]:
    return [json.loads(line) for line in DEMO_DATA.read_text().splitlines()]


def write_jsonl(path: Path, records: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """8 short training examples and 2 validation ones: enough for the mechanics, cheap per step."""
    d = tmp_path_factory.mktemp("small")
    lines = demo_lines()
    return write_jsonl(d / "train.jsonl", lines[:8]), write_jsonl(d / "val.jsonl", lines[8:10])


@pytest.fixture(scope="session")
def full_model(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """The quickstart recipe (manifests/samples/quickstart.yaml). Its 3 epochs are needed: with 2, the
    trained fact was learnt under bfloat16 autocast but not in float32 (a CPU without native bfloat16)."""
    out = tmp_path_factory.mktemp("full") / "model"
    config = TrainConfig(
        base_model="builtin://smollm2-135m",
        data=str(DEMO_DATA),
        output=out,
        method="full",
        epochs=EPOCHS,
        learning_rate=3e-4,
        batch_size=4,
        max_seq_length=256,
        save_steps=0,
        termination_message_path=None,
    )
    return train(config, json_lines=True)
