"""Training you can look at (issue 28): `chatmodel train` writes training.png and TensorBoard event files
beside metrics.json, holding the same losses metrics.json records, and prints where they are. One cheap
run of a tiny random model (6 steps, an evaluation each epoch)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from chatmodel_serving.cli import main
from chatmodel_serving.train.plots import EVAL_TAG, PLOT_FILE, TRAIN_TAG, figure
from tests.fuzz.tiny_model import write_tiny_model

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG header: the signature, then the IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR", head
    width, height = struct.unpack(">II", head[16:24])
    return width, height


@pytest.mark.slow
def test_train_writes_a_picture_and_tensorboard_logs_of_the_recorded_losses(
    small_data: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tiny = write_tiny_model(tmp_path / "tiny")
    train, val = small_data
    out = tmp_path / "model"
    args = ["train", "--base-model", str(tiny), "--data", str(train), "--validation-data", str(val)]
    args += ["--method", "full", "--epochs", "3", "--batch-size", "4", "--max-seq-length", "96"]
    args += ["--compute-dtype", "float32", "--device", "cpu", "--save-steps", "0", "--output", str(out)]
    args += ["--progress", "json", "--termination-message-path", str(tmp_path / "termination")]
    assert main(args) == 0

    m = json.loads((out / "metrics.json").read_text())
    steps = [e["step"] for e in m["train_history"]]
    assert steps == list(range(1, m["steps"] + 1)) and m["steps"] == 6, m["train_history"]
    assert [e["step"] for e in m["eval_history"]] == [2, 4, 6]  # each epoch

    width, height = png_size(out / PLOT_FILE)
    assert width >= 400 and height >= 300, (width, height)

    events = list(out.glob("events.out.tfevents.*"))
    assert len(events) == 1, events  # beside metrics.json: `tensorboard --logdir` on the folder reads it
    acc = EventAccumulator(str(out))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {TRAIN_TAG, EVAL_TAG}
    for tag, want in (
        (TRAIN_TAG, [(e["step"], e["loss"]) for e in m["train_history"]]),
        (EVAL_TAG, [(e["step"], e["eval_loss"]) for e in m["eval_history"]]),
    ):
        got = [(s.step, s.value) for s in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in want], tag
        assert all(abs(a - b) <= 1e-6 for (_, a), (_, b) in zip(got, want, strict=True)), (tag, got, want)

    printed = capsys.readouterr().err
    assert f"training curves: {out / PLOT_FILE}" in printed
    assert f"TensorBoard logs: {out}" in printed


def legend_labels(metrics: dict[str, Any]) -> list[str]:
    legend = figure(metrics).axes[0].get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def test_the_picture_marks_the_best_checkpoint_and_an_early_stop() -> None:
    history = [{"step": s, "epoch": s / 2, "loss": 3.0 - 0.1 * s} for s in range(1, 9)]
    evals = [{"step": 2, "eval_loss": 2.5}, {"step": 4, "eval_loss": 2.2}, {"step": 6, "eval_loss": 2.4}]
    metrics: dict[str, Any] = {
        "eval_loss_before": 2.9,
        "eval_history": evals,
        "train_history": history[:6],
        "best_step": 4,
        "steps": 6,
        "total_steps": 20,
        "stopped_early": True,
    }
    labels = legend_labels(metrics)
    assert labels[:2] == ["train loss (per step)", "eval loss (per evaluation)"]
    assert any(t.startswith("best checkpoint: step 4, eval loss 2.2000") for t in labels), labels
    assert "early stop at step 6 of 20" in labels
    # A run that ran to its end, its last evaluation the best: no early stop marked.
    plain = legend_labels({**metrics, "stopped_early": False, "steps": 4, "eval_history": evals[:2]})
    assert not any("early stop" in t for t in plain), plain
    assert any(t.startswith("best checkpoint: step 4") for t in plain), plain
