"""Batching and the loss: length-grouped, seeded batch order, and a loss computed only where an
answer token is predicted (the vocabulary projection is the costliest layer of a small model, and
prompt and padding positions never need it)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX, Tokenized
from .distributed import SINGLE, World


def epoch_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, group_by_length: bool
) -> list[list[int]]:
    """Index batches for one epoch, a pure function of (seed, epoch): a resumed run replays the same
    order. Grouping by length keeps padding small; the batch order is still shuffled."""
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    if group_by_length:
        # Sort within windows of 50 batches (as HF's LengthGroupedSampler does), then shuffle batches.
        window = batch_size * 50
        order = [
            i
            for start in range(0, len(order), window)
            for i in sorted(order[start : start + window], key=lambda j: -lengths[j])
        ]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        perm = torch.randperm(len(batches), generator=gen).tolist()
        batches = [batches[i] for i in perm]
    return batches


def steps_per_epoch(n_examples: int, batch_size: int, accumulation: int) -> int:
    return math.ceil(math.ceil(n_examples / batch_size) / accumulation)


def collate(items: list[Tokenized], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(item) for item in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item)
        ids[row, :n] = torch.tensor(item.input_ids)
        labels[row, :n] = torch.tensor(item.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def autocast(dtype: torch.dtype | None, device: torch.device) -> AbstractContextManager[Any]:
    if dtype is None or dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _needs_full_logits(model: Any) -> bool:
    """Models that post-process logits (soft-capping) or lack the decoder/head accessors take the
    plain path through forward()."""
    config = getattr(model, "config", None)
    if getattr(config, "final_logit_softcapping", None):
        return True
    try:
        return model.get_decoder() is None or model.get_output_embeddings() is None
    except (AttributeError, NotImplementedError):
        return True


def loss_sum(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over answer tokens, and their count (so accumulation averages per token)."""
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    count = int(keep.sum())
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT wrapper
    if _needs_full_logits(inner):
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits
        picked = logits[:, :-1][keep]
    else:
        hidden = inner.get_decoder()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).last_hidden_state
        picked = inner.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(picked.float(), targets[keep], reduction="sum"), count


@torch.no_grad()
def evaluate(
    model: Any,
    data: list[Tokenized],
    batch_size: int,
    pad_id: int,
    device: torch.device,
    dtype: torch.dtype | None,
    world: World = SINGLE,
    forward: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
) -> float:
    """Mean loss per answer token over the whole set. Under torchrun each rank scores its shard of every
    batch and the sums are added up; every rank runs the same number of forwards (a rank with an empty
    shard scores a stand-in it does not count) so that sharded models can gather their weights.
    `forward` (a batch's summed loss) replaces loss_sum(model, ...) where the model must be entered
    through a wrapper (FSDP)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    order = sorted(range(len(data)), key=lambda i: len(data[i]))
    step = batch_size * world.size
    for start in range(0, len(order), step):
        mine = world.shard(order[start : start + step])
        ids = mine or order[start : start + 1]
        batch = to_device(collate([data[i] for i in ids], pad_id), device)
        with autocast(dtype, device):
            loss = forward(batch) if forward else loss_sum(model, batch)[0]
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        if mine:
            total += float(loss)
            count += n
    model.train(was_training)
    summed, tokens = world.sum(total, count)
    return summed / max(tokens, 1)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def accumulation_groups(batches: list[list[int]], accumulation: int) -> Iterator[list[list[int]]]:
    for start in range(0, len(batches), accumulation):
        yield batches[start : start + accumulation]
