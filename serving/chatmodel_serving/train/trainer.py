"""The fine-tuning loop: full or LoRA, AdamW with warmup and linear decay, gradient accumulation and
clipping, evaluation before/after each epoch with early stopping, checkpoints and --resume.

Under torchrun the same loop runs on every rank (see distributed.py): each rank trains on its shard
of every global batch through DistributedDataParallel, and rank 0 alone writes checkpoints and the
artifact while the others wait."""

from __future__ import annotations

import logging
import math
import shutil
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from ..models import cpu_supports_bf16, load_model, pick_device, resolve_source
from . import checkpoint
from .artifact import clean_stale_staging, publish, read_metrics
from .batches import (
    accumulation_groups,
    autocast,
    collate,
    epoch_batches,
    evaluate,
    loss_sum,
    steps_per_epoch,
    to_device,
)
from .checkpoint import LoopState
from .config import TrainConfig
from .data import IGNORE_INDEX, Tokenized, load_examples, split_examples, tokenize_examples
from .distributed import World, from_env, full_state, shard, start, stop
from .progress import Progress

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

log = logging.getLogger("chatmodel.train")
MIN_IMPROVEMENT = 1e-4  # an eval loss must drop by more than this to count as better


class ResumeError(RuntimeError):
    pass


@dataclass
class TrainResult:
    output: Path
    metrics: dict[str, Any]


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """Autocast dtype: bfloat16 where the hardware computes it natively (measured faster), else float32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def wrap_lora(model: Any, config: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    names = config.lora_target_modules
    targets: str | list[str] = names
    if names != "all-linear":
        targets = [t.strip() for t in names.split(",") if t.strip()]
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def make_optimizer(model: Any, config: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on biases and norm weights (1-D tensors), as is customary for transformers.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    try:  # the fused kernel reads each state tensor once per step: noticeably faster on CPU
        return torch.optim.AdamW(groups, lr=config.lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=config.lr)


def make_scheduler(optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float) -> Any:
    warmup = math.ceil(total * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def answer_count(item: Tokenized) -> int:
    return sum(1 for label in item.labels[1:] if label != IGNORE_INDEX)


class LossModule(torch.nn.Module):
    """loss_sum as a module's forward: DistributedDataParallel reduces gradients only for work done
    inside its wrapped module's forward."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_sum(self.model, batch)[0]


class Run:
    """One training run; state that a checkpoint restores lives in `self.state`."""

    def __init__(self, config: TrainConfig, json_lines: bool | None = None) -> None:
        self.config = config
        self.output = config.output.resolve()
        self.json_lines = json_lines  # None: JSON lines unless stderr is a terminal
        self.best: dict[str, torch.Tensor] | None = None
        self.world = World()

    def prepare(self) -> None:
        cfg = self.config
        # Data first: a bad file fails in a second, before the model is loaded.
        train_examples = load_examples(cfg.data, cfg.system_prompt)
        if cfg.validation_data is not None:
            val_examples = load_examples(cfg.validation_data, cfg.system_prompt)
        else:
            train_examples, val_examples = split_examples(train_examples, cfg.validation_split, cfg.seed)
        self.fingerprint = cfg.fingerprint()
        torch.manual_seed(cfg.seed)
        device = self.world.device(cfg.device)
        self.device = pick_device(device)
        loaded = load_model(cfg.base_model, dtype="float32", device=device)
        self.tokenizer = loaded.tokenizer
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.train_data, self.train_stats = tokenize_examples(
            train_examples, self.tokenizer, cfg.max_seq_length
        )
        self.eval_on = "validation" if val_examples else "train"
        if val_examples:
            self.val_data, _ = tokenize_examples(
                val_examples, self.tokenizer, cfg.max_seq_length, "validation"
            )
        else:
            log.warning("no validation data: eval loss is measured on the training set")
            self.val_data = self.train_data
        model = loaded.model
        model.config.use_cache = False
        self.model = wrap_lora(model, cfg) if cfg.method == "lora" else model
        self.model.train()
        self.dtype = compute_dtype(cfg.compute_dtype, self.device)
        self.per_epoch = steps_per_epoch(
            len(self.train_data), cfg.batch_size, cfg.gradient_accumulation_steps
        )
        self.total = self.per_epoch * cfg.epochs
        if cfg.max_steps:
            self.total = min(self.total, cfg.max_steps)
        if cfg.batch_size < self.world.size:
            log.warning(
                "global batch %d is smaller than %d workers: some run stand-ins each step",
                cfg.batch_size,
                self.world.size,
            )
        self.train_module = self.wrap_distributed()
        self.optimizer = make_optimizer(self.model, cfg)
        self.scheduler = make_scheduler(self.optimizer, self.total, cfg.warmup_ratio)
        self.state = LoopState(self.fingerprint)
        self.answer_counts = [answer_count(item) for item in self.train_data]
        self.lengths = [len(item) for item in self.train_data]
        log.info(
            "training %s (%s, %d trainable parameters) on %d examples, %d validation; %d steps",
            cfg.base_model,
            cfg.method,
            sum(p.numel() for p in self.model.parameters() if p.requires_grad),
            len(self.train_data),
            len(val_examples),
            self.total,
        )

    @property
    def sharded(self) -> bool:
        return self.config.fsdp and self.world.distributed

    def wrap_distributed(self) -> torch.nn.Module:
        module = LossModule(self.model)
        if self.config.fsdp and not self.world.distributed:
            log.info("--fsdp ignored: one process (run under torchrun to shard)")
        if not self.world.distributed:
            return module
        if self.sharded:
            shard(self.model, module)
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def no_sync(self, last: bool) -> AbstractContextManager[Any]:
        """Gradient accumulation: reduce across ranks once, after the last micro-batch."""
        if self.sharded:  # wrap_distributed made it an FSDP module (fully_shard), else DDP when distributed
            cast("FSDPModule", self.train_module).set_requires_gradient_sync(last)
            return nullcontext()
        if last or not self.world.distributed:
            return nullcontext()
        return cast("DistributedDataParallel", self.train_module).no_sync()

    def restore_checkpoint(self) -> None:
        folder = self.config.checkpoints
        latest = checkpoint.latest(folder) if self.config.resume else None
        if latest is None:
            return
        if self.sharded:  # checkpoints hold whole tensors; sharded ones are not written or read yet
            log.warning("FSDP run: not resuming from %s; training from the start", latest)
            return
        state, self.best = checkpoint.restore(latest, self.model, self.optimizer, self.scheduler)
        if state.fingerprint != self.fingerprint:
            raise ResumeError(
                f"checkpoint {latest} was made with other settings or data; "
                f"remove {folder} or run without --resume"
            )
        self.state = state
        if self.best is None and state.best_eval_loss is not None and state.best_step == state.step:
            self.best = {k: v.clone() for k, v in checkpoint.trainable_state(self.model).items()}
        log.info("resumed from %s at step %d of %d", latest, state.step, self.total)

    def eval_loss(self) -> float:
        cfg = self.config
        forward = self.train_module if self.sharded else None
        return evaluate(
            self.model,
            self.val_data,
            cfg.batch_size,
            self.pad_id,
            self.device,
            self.dtype,
            self.world,
            forward,
        )

    def record_eval(self, epoch: float) -> None:
        st = self.state
        loss = self.eval_loss()
        st.eval_history.append({"step": st.step, "epoch": round(epoch, 3), "eval_loss": loss})
        self.progress.event("eval", step=st.step, epoch=round(epoch, 3), eval_loss=round(loss, 5))
        if st.best_eval_loss is None or loss < st.best_eval_loss - MIN_IMPROVEMENT:
            st.best_eval_loss, st.best_step, st.evals_without_improvement = loss, st.step, 0
            self.best = {k: v.clone() for k, v in checkpoint.trainable_state(self.model).items()}
            return
        st.evals_without_improvement += 1
        patience = self.config.early_stopping_patience
        if patience and st.evals_without_improvement >= patience:
            st.stopped_early = True
            self.progress.event("early_stop", step=st.step, best_step=st.best_step)
            log.info("eval loss has not improved for %d evaluations: stopping early", patience)

    def train_step(self, group: list[list[int]]) -> tuple[float, int, int]:
        """One optimizer step over `group` micro-batches; loss averaged per answer token of the global batch.
        Token counts are global (all ranks); DDP averages gradients over ranks, so each rank scales its
        summed loss by world size / answer tokens and the result equals the single-process gradient."""
        world = self.world
        answer_tokens = sum(self.answer_counts[i] for batch in group for i in batch)
        loss_total, tokens = 0.0, 0
        for n, batch_ids in enumerate(group):
            mine = world.shard(batch_ids)
            # A rank with nothing left in a short last batch still joins the gradient reduction.
            weight = world.size / answer_tokens if mine else 0.0
            ids = mine or batch_ids[:1]
            batch = to_device(collate([self.train_data[i] for i in ids], self.pad_id), self.device)
            with self.no_sync(last=n == len(group) - 1):
                with autocast(self.dtype, self.device):
                    loss = self.train_module(batch)
                (loss * weight).backward()
            if mine:
                loss_total += float(loss.detach())
            tokens += sum(self.lengths[i] for i in batch_ids)
        (loss_total,) = world.sum(loss_total)
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], self.config.max_grad_norm
            )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_total, answer_tokens, tokens

    def loop(self) -> None:
        cfg, st = self.config, self.state
        for epoch in range(cfg.epochs):
            if st.stopped_early or st.step >= self.total:
                break
            batches = epoch_batches(self.lengths, cfg.batch_size, cfg.seed, epoch, cfg.group_by_length)
            groups = list(accumulation_groups(batches, cfg.gradient_accumulation_steps))
            first = epoch * self.per_epoch
            for k, group in enumerate(groups):
                if first + k < st.step:  # done before the checkpoint we resumed from
                    continue
                if st.step >= self.total:
                    break
                started = time.perf_counter()
                loss, answer_tokens, tokens = self.train_step(group)
                st.train_seconds += time.perf_counter() - started
                st.step += 1
                st.train_loss_sum += loss
                st.train_loss_tokens += answer_tokens
                st.train_tokens += tokens
                epoch_pos = epoch + (k + 1) / len(groups)
                st.train_history.append(
                    {"step": st.step, "epoch": round(epoch_pos, 3), "loss": loss / answer_tokens}
                )
                self.progress.step(
                    st.step,
                    epoch_pos,
                    loss / answer_tokens,
                    self.scheduler.get_last_lr()[0],
                    st.train_tokens / st.train_seconds,
                )
                end_of_epoch = k == len(groups) - 1
                if (
                    end_of_epoch
                    or st.step == self.total
                    or (cfg.eval_steps and st.step % cfg.eval_steps == 0)
                ):
                    self.record_eval(epoch_pos)
                if cfg.save_steps and st.step % cfg.save_steps == 0 and st.step < self.total:
                    self.save_checkpoint()
                if st.stopped_early:
                    break

    def save_checkpoint(self) -> None:
        if self.sharded:
            return  # see restore_checkpoint
        if self.world.main:  # the weights and optimizer state are the same on every rank
            best = self.best if self.state.best_step != self.state.step else None
            checkpoint.save(
                self.config.checkpoints, self.model, self.optimizer, self.scheduler, self.state, best
            )
        self.world.barrier()

    def finish(self, started: float) -> dict[str, Any]:
        cfg, st = self.config, self.state
        last_eval = st.eval_history[-1]["eval_loss"] if st.eval_history else self.eval_loss()
        eval_loss = last_eval
        if self.best is not None and st.best_eval_loss is not None and st.best_step != st.step:
            log.info(
                "restoring the weights of step %d (best eval loss %.4f)", st.best_step, st.best_eval_loss
            )
            checkpoint.load_trainable(self.model, self.best)
            eval_loss = st.best_eval_loss
        return {
            "eval_loss_before": st.eval_loss_before,
            "eval_loss": eval_loss,
            "eval_loss_last": last_eval,
            "best_step": st.best_step,
            "train_loss": st.train_loss_sum / max(st.train_loss_tokens, 1),
            "steps": st.step,
            "total_steps": self.total,
            "epochs": round(st.step / self.per_epoch, 3),
            "stopped_early": st.stopped_early,
            "train_tokens": st.train_tokens,
            "train_seconds": round(st.train_seconds, 3),
            "train_tokens_per_second": st.train_tokens / st.train_seconds if st.train_seconds else 0.0,
            "wall_seconds": round(time.perf_counter() - started, 3),
            "world_size": self.world.size,
            "train_examples": len(self.train_data),
            "validation_examples": len(self.val_data) if self.eval_on == "validation" else 0,
            "eval_on": self.eval_on,
            "truncated_examples": self.train_stats.truncated,
            "method": cfg.method,
            "adapter": cfg.method == "lora" and not cfg.merge_lora,
            "base_model": cfg.base_model,
            "compute_dtype": str(self.dtype).removeprefix("torch."),
            "output": str(self.output),
            "eval_history": st.eval_history,
            "train_history": st.train_history,  # drawn in training.png and the TensorBoard logs
            "fingerprint": self.fingerprint,  # `chatmodel run` reuses an output made from the same recipe
            "config": cfg.as_dict(),
        }

    def run(self) -> TrainResult:
        self.world = from_env()
        if self.world.distributed:
            # A builtin model is converted into this node's cache first: once a process group exists,
            # transformers' save_pretrained writes only on global rank 0, so other nodes would get none.
            resolve_source(self.config.base_model)
        start(self.world, self.world.device(self.config.device))
        try:
            return self.run_here()
        finally:
            stop(self.world)

    def run_here(self) -> TrainResult:
        started = time.perf_counter()
        cfg = self.config
        done = read_metrics(self.output) if self.output.exists() else None
        if done is not None and cfg.resume:  # a restarted Job whose previous pod already finished
            log.info("%s is already complete; nothing to do", self.output)
            return TrainResult(self.output, done)
        if self.output.exists() and not cfg.overwrite:
            raise FileExistsError(f"output {self.output} exists; pass --overwrite to replace it")
        self.prepare()
        if self.world.main:
            clean_stale_staging(self.output)
            checkpoint.clean_temporaries(self.config.checkpoints)
        self.world.barrier()  # nobody reads the checkpoint folder while rank 0 tidies it
        self.restore_checkpoint()
        self.progress = Progress(self.total, self.state.step, self.json_lines, quiet=not self.world.main)
        try:
            if self.state.eval_loss_before is None:
                self.state.eval_loss_before = self.eval_loss()
                self.progress.event("eval", step=0, epoch=0, eval_loss=round(self.state.eval_loss_before, 5))
            self.loop()
        finally:
            self.progress.close()
        metrics = self.finish(started)
        model = self.unsharded() if self.sharded else self.model
        if not self.world.main:
            self.world.barrier()  # rank 0 is publishing
            return TrainResult(self.output, metrics)
        publish(
            model,
            self.tokenizer,
            self.output,
            metrics,
            adapter=metrics["adapter"],
            base_source=cfg.base_model,
            overwrite=cfg.overwrite,
        )
        if not cfg.keep_checkpoints:
            shutil.rmtree(cfg.checkpoints, ignore_errors=True)
        self.world.barrier()
        return TrainResult(self.output, metrics)

    def unsharded(self) -> Any:
        """A plain copy of the sharded model on rank 0 (None elsewhere), for the artifact."""
        state = full_state(self.train_module, self.world)
        if not self.world.main:
            return None
        from transformers import AutoModelForCausalLM

        plain = AutoModelForCausalLM.from_config(self.model.config)
        plain.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
        return plain


def train(config: TrainConfig, json_lines: bool | None = None) -> TrainResult:
    return Run(config, json_lines).run()
