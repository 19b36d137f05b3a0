"""Admission: which waiting requests join the running batch this step. No torch, no model: the engine
thread calls it with its lock held, and says through `fits` whether the KV pool can hold one more."""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass

from .sequence import Request
from .types import Event


@dataclass(frozen=True)
class Budget:
    max_batch_size: int  # sequences running together
    max_prefill_tokens: int  # prompt tokens computed in one step (long prompts go in chunks)


def admit(
    waiting: collections.deque[Request],
    running: int,
    budget: Budget,
    fits: Callable[[list[Request], Request], bool] = lambda batch, req: True,
    prefill_tokens: int = 0,
) -> list[Request]:
    """Take requests off the front of `waiting` (first come, first served) while a batch row is free, this
    step's prefill budget has tokens left (after `prefill_tokens` already planned; a prompt longer than
    what is left starts now and goes on in chunks) and `fits(taken, req)` says the KV pool holds it.
    Cancelled requests are dropped with an 'abort' event. A beam-search request runs alone: it waits for
    an empty batch and nothing joins it."""
    free = budget.max_batch_size - running
    batch: list[Request] = []
    tokens = prefill_tokens
    while waiting and len(batch) < free and tokens < budget.max_prefill_tokens:
        req = waiting[0]
        if req.cancelled:
            waiting.popleft()
            req.sink(Event(finish_reason="abort"))
            continue
        if req.params.beams > 1 and (batch or running):
            break  # beam search runs alone
        if not fits(batch, req):
            break
        batch.append(waiting.popleft())
        tokens += len(req.prompt)
        if req.params.beams > 1:
            break
    return batch
