"""The training record of a served version: what metrics.json and gate.json in its model folder say (the
files are read by `chatmodel serve`, which hands the record to ServedModel; api/versions.py shows it)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class EvalPoint(BaseModel):
    step: int  # optimizer step; 0 is the evaluation before training (the base model's loss)
    eval_loss: float


class GateVerdict(BaseModel):
    """spec.rollout.gate's verdict on the version, as `chatmodel run` recorded it (gate.json)."""

    passed: bool
    reason: str = ""  # why it was refused; empty when it passed
    gate: dict[str, Any] | None = None  # the gate's settings; None: the manifest has no gate


class TrainingRecord(BaseModel):
    """What metrics.json (and gate.json) in the model folder say about the fine-tune that made it."""

    version: str  # the folder's name: the version digest under `chatmodel run`'s ARTIFACTS/NAME/VERSION
    method: str | None = None
    base_model: str | None = None
    eval_loss: float | None = None  # final: the published weights' eval loss (the best checkpoint's)
    eval_loss_before: float | None = None
    eval_curve: list[EvalPoint] = []
    best_step: int | None = None
    steps: int | None = None
    stopped_early: bool = False
    gate: GateVerdict | None = None  # None: no verdict recorded (e.g. `chatmodel train` alone)

    @classmethod
    def from_files(cls, version: str, metrics: dict[str, Any], gate: dict[str, Any] | None) -> TrainingRecord:
        before = metrics.get("eval_loss_before")
        curve = [EvalPoint(step=0, eval_loss=before)] if before is not None else []
        curve += [
            EvalPoint(step=e["step"], eval_loss=e["eval_loss"]) for e in metrics.get("eval_history", [])
        ]
        return cls(
            version=version,
            method=metrics.get("method"),
            base_model=metrics.get("base_model"),
            eval_loss=metrics.get("eval_loss"),
            eval_loss_before=before,
            eval_curve=curve,
            best_step=metrics.get("best_step"),
            steps=metrics.get("steps"),
            stopped_early=bool(metrics.get("stopped_early")),
            gate=GateVerdict.model_validate(gate) if gate is not None else None,
        )
