"""Checkpoints for --resume: the trainable weights, optimizer and scheduler, RNG and loop state.

Each checkpoint is written to a temporary folder and renamed into place, so the newest folder
named checkpoint-NNNNNN is always complete; older ones are removed after the new one lands.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger("chatmodel.train")
PREFIX = "checkpoint-"


@dataclass
class LoopState:
    """Everything besides tensors that a resumed run needs to continue identically."""

    fingerprint: str
    step: int = 0
    eval_loss_before: float | None = None
    eval_history: list[dict[str, float]] = field(default_factory=list)
    train_history: list[dict[str, float]] = field(default_factory=list)  # loss of each optimizer step
    best_eval_loss: float | None = None
    best_step: int = 0
    evals_without_improvement: int = 0
    stopped_early: bool = False
    train_loss_sum: float = 0.0
    train_loss_tokens: int = 0
    train_tokens: int = 0
    train_seconds: float = 0.0


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: Any, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value)


def latest(folder: Path) -> Path | None:
    done = sorted(p for p in folder.glob(f"{PREFIX}*") if (p / "state.json").is_file())
    return done[-1] if done else None


def save(
    folder: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: LoopState,
    best: dict[str, torch.Tensor] | None,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{PREFIX}{state.step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
    try:
        save_file(
            {k: v.contiguous() for k, v in trainable_state(model).items()}, tmp / "trainable.safetensors"
        )
        if best is not None:  # best weights differ from the current ones; restored at the end
            save_file({k: v.contiguous() for k, v in best.items()}, tmp / "best.safetensors")
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
            },
            tmp / "optimizer.pt",
        )
        (tmp / "state.json").write_text(json.dumps(asdict(state), indent=1))  # last: marks it complete
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in folder.glob(f"{PREFIX}*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint saved at step %d: %s", state.step, target)
    return target


def restore(
    path: Path, model: Any, optimizer: torch.optim.Optimizer, scheduler: Any
) -> tuple[LoopState, dict[str, torch.Tensor] | None]:
    state = LoopState(**json.loads((path / "state.json").read_text()))
    load_trainable(model, load_file(path / "trainable.safetensors"))
    extra = torch.load(path / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(extra["optimizer"])
    scheduler.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["rng"])
    best_file = path / "best.safetensors"
    best = load_file(best_file) if best_file.is_file() else None
    return state, best


def clean_temporaries(folder: Path) -> None:
    """Remove half-written checkpoints a killed run left behind."""
    for tmp in folder.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
