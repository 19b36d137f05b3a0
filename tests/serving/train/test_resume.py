"""A training pod killed mid-run (node loss) restarts with --resume from its latest checkpoint and ends
with the same number of steps; the output folder never exists half-written."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
STEPS = 8  # 2 epochs x 8 examples / batch 2


def command(data: tuple[Path, Path], out: Path, *extra: str) -> list[str]:
    train, val = data
    return [
        sys.executable, "-m", "chatmodel_serving.cli", "train", "--data", str(train),
        "--validation-data", str(val), "--method", "lora", "--epochs", "2", "--batch-size", "2",
        "--max-seq-length", "96", "--save-steps", "2", "--output", str(out), "--progress", "json",
        "--termination-message-path", str(out.parent / "termination"), *extra,
    ]  # fmt: skip


def visible(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


def test_kill_then_resume_finishes_with_the_same_steps(small_data: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "model"
    checkpoints = tmp_path / ".model.checkpoints"
    first = subprocess.Popen(command(small_data, out), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    killed_at = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        assert not out.exists(), "the output folder appeared before training finished"
        done = sorted(checkpoints.glob("checkpoint-*/state.json")) if checkpoints.exists() else []
        if done:
            killed_at = json.loads(done[-1].read_text())["step"]
            first.send_signal(signal.SIGKILL)  # no chance to clean up, as on node loss
            break
        time.sleep(0.05)
    first.wait()
    assert killed_at is not None and 0 < killed_at < STEPS, "no checkpoint before the run ended"
    assert not out.exists() and visible(tmp_path) == set()  # nothing published

    second = subprocess.run(command(small_data, out, "--resume"), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    steps = [json.loads(ln)["step"] for ln in second.stdout.splitlines() if '"event": "step"' in ln]
    resumed_from = min(steps) - 1
    assert resumed_from >= killed_at and steps[-1] == STEPS  # continued, did not start over
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == metrics["total_steps"] == STEPS
    assert metrics["eval_loss_before"] is not None and len(metrics["eval_history"]) == 2
    assert not checkpoints.exists()  # removed once the output is published
    assert visible(tmp_path) == {"model", "termination"}

    # A Job pod restarted after success finds the output complete and does nothing.
    again = subprocess.run(command(small_data, out, "--resume"), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "already complete" in again.stderr


def test_resume_refuses_a_checkpoint_of_other_settings(small_data: tuple[Path, Path], tmp_path: Path) -> None:
    first = subprocess.run(
        command(small_data, tmp_path / "a", "--max-steps", "3", "--keep-checkpoints"),
        capture_output=True,
        text=True,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoints = tmp_path / ".a.checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["checkpoint-000002"]  # only the latest is kept
    changed = command(
        small_data, tmp_path / "b", "--resume", "--checkpoint-dir", str(checkpoints), "--seed", "1"
    )
    refused = subprocess.run(changed, capture_output=True, text=True)
    assert refused.returncode == 2 and "other settings or data" in refused.stderr
    assert not (tmp_path / "b").exists()
