"""The settings of one fine-tuning run, their defaults, and the fingerprint a checkpoint must match."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .data import resolve_data_source

METHODS = ("full", "lora")
# Per-method learning rates that memorise a small FAQ in a few epochs on the 135M builtin model.
DEFAULT_LEARNING_RATE = {"full": 1e-4, "lora": 1e-3}
TERMINATION_LOG = Path("/dev/termination-log")


@dataclass
class TrainConfig:
    base_model: str
    data: str  # a data source: path, file://PATH or builtin://NAME
    output: Path
    validation_data: str | None = None
    validation_split: float = 0.1
    method: str = "lora"
    epochs: int = 3
    learning_rate: float | None = None  # None = DEFAULT_LEARNING_RATE[method]
    batch_size: int = 8
    max_seq_length: int = 1024
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    early_stopping_patience: int = 2  # evaluations without improvement; 0 = never stop early
    eval_steps: int = 0  # 0 = evaluate at the end of each epoch
    max_steps: int = 0  # 0 = no cap beyond epochs
    seed: int = 42
    save_steps: int = 50  # checkpoint every N optimizer steps; 0 = never
    checkpoint_dir: Path | None = None  # default: a hidden folder beside the output
    resume: bool = False
    overwrite: bool = False
    keep_checkpoints: bool = False
    merge_lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: str = "all-linear"
    compute_dtype: str = "auto"  # auto | float32 | bfloat16 (autocast; weights stay float32)
    group_by_length: bool = True
    system_prompt: str | None = None
    device: str = "auto"
    termination_message_path: Path | None = TERMINATION_LOG
    fsdp: bool = False  # shard a full fine-tune over torchrun workers (FSDP2) instead of replicating it

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        for name in ("epochs", "batch_size", "max_seq_length", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be at least 1")
        if self.validation_data is not None and self.validation_split:
            self.validation_split = 0.0  # an explicit validation file wins over a split
        if self.fsdp and self.method != "full":
            raise ValueError("--fsdp shards a full fine-tune; LoRA trains few weights: leave it out")
        if self.learning_rate is None:
            self.learning_rate = DEFAULT_LEARNING_RATE[self.method]

    @property
    def lr(self) -> float:
        assert self.learning_rate is not None  # set in __post_init__
        return self.learning_rate

    @property
    def checkpoints(self) -> Path:
        return self.checkpoint_dir or self.output.parent / f".{self.output.name}.checkpoints"

    def as_dict(self) -> dict[str, object]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}

    def fingerprint(self) -> str:
        """What a checkpoint must have been made with to be resumable: every setting that changes the
        trajectory, plus the data files' contents."""
        ignored = {"output", "checkpoint_dir", "resume", "overwrite", "keep_checkpoints", "merge_lora"}
        ignored |= {"device", "termination_message_path", "data", "validation_data", "fsdp"}  # contents below
        settings = {k: v for k, v in self.as_dict().items() if k not in ignored}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
        for source in (self.data, self.validation_data):
            if source is not None:
                digest.update(resolve_data_source(source).read_bytes())
        return digest.hexdigest()[:16]
