"""The run's output folder: model (or LoRA adapter), tokenizer with chat template, metrics.json,
training.png and TensorBoard event files (plots.py).

Everything is written to a hidden staging folder beside the output and renamed into place at the
very end, so a failed or killed run publishes nothing and readers never see a partial model.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..models import save_plain
from .config import TERMINATION_LOG
from .plots import write_reports

log = logging.getLogger("chatmodel.train")
METRICS_FILE = "metrics.json"
GATE_FILE = "gate.json"  # spec.rollout.gate's verdict, written by `chatmodel run` (write_gate)
TERMINATION_LIMIT = 4096  # bytes Kubernetes keeps of a termination message


def staging_prefix(output: Path) -> str:
    return f".{output.name}.staging-"


def clean_stale_staging(output: Path) -> None:
    for stale in output.parent.glob(staging_prefix(output) + "*"):
        log.info("removing staging folder of an interrupted run: %s", stale)
        shutil.rmtree(stale, ignore_errors=True)


def base_reference(source: str) -> str:
    """How an adapter names its base: the source string for schemes, an absolute path for folders,
    so the adapter loads from anywhere."""
    if "://" in source and not source.startswith("file://"):
        return source
    return str(Path(source.removeprefix("file://")).expanduser().resolve())


def publish(
    model: Any,
    tokenizer: Any,
    output: Path,
    metrics: dict[str, Any],
    *,
    adapter: bool,
    base_source: str,
    overwrite: bool = False,
) -> Path:
    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(output), dir=output.parent))
    try:
        if adapter:
            for cfg in model.peft_config.values():
                cfg.base_model_name_or_path = base_reference(base_source)
            model.save_pretrained(staging, save_embedding_layers=False)  # LoRA never trains them
            tokenizer.save_pretrained(staging)
        else:
            if hasattr(model, "merge_and_unload"):  # LoRA published merged: a plain model folder
                model = model.merge_and_unload()
            staging.rmdir()  # save_plain creates it atomically
            save_plain(model, tokenizer, staging)
        (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        write_reports(staging, metrics)  # training.png and TensorBoard event files, from the same history
        staging.chmod(0o755)
        if output.exists():
            if not overwrite:
                raise FileExistsError(f"{output} appeared while training; not replacing it")
            retired = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
            output.rename(retired / "model")
            shutil.rmtree(retired, ignore_errors=True)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("model written to %s", output)
    return output


def write_termination_message(path: Path | None, message: str) -> None:
    """Kubernetes shows this file's content in the pod status. The kubelet creates the file in the
    container, so the default path is written only when it exists (local runs leave /dev alone);
    another path is written when its folder exists."""
    if path is None or not path.parent.is_dir() or (path == TERMINATION_LOG and not path.exists()):
        return
    try:
        path.write_bytes(message.encode()[:TERMINATION_LIMIT])
    except OSError as exc:
        log.warning("cannot write the termination message to %s: %s", path, exc)


def summary(metrics: dict[str, Any]) -> str:
    keys = (
        "eval_loss_before",
        "eval_loss",
        "train_loss",
        "steps",
        "train_tokens_per_second",
        "output",
        "method",
    )
    return json.dumps({k: metrics[k] for k in keys if k in metrics}, separators=(",", ":"))


def read_metrics(output: Path) -> dict[str, Any] | None:
    path = output / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_gate(output: Path, passed: bool, reason: str, gate: dict[str, Any] | None) -> None:
    """The gate's verdict on a published version, beside its metrics.json: {"passed", "reason", "gate"}
    (`gate`: the gate's settings, None when there is none). Written again on every judgement (a manifest's
    gate may change while its version, a digest of what shapes the model, stays)."""
    verdict = {"passed": passed, "reason": reason, "gate": gate}
    tmp = output / f".{GATE_FILE}.tmp"
    tmp.write_text(json.dumps(verdict, indent=2) + "\n")
    tmp.replace(output / GATE_FILE)  # readers never see half a file


def read_gate(output: Path) -> dict[str, Any] | None:
    path = output / GATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None
