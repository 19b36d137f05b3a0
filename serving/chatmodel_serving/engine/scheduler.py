"""Admission: which waiting requests join the running batch as the next prefill group. No torch, no model:
the engine thread calls it with its lock held."""

from __future__ import annotations

import collections
from dataclasses import dataclass

from .sequence import Request
from .types import Event


@dataclass(frozen=True)
class Budget:
    max_batch_size: int  # sequences decoded together
    max_prefill_tokens: int  # prompt tokens prefilled in one group (beyond the first request's)
    max_kv_tokens: int  # KV-cache capacity in tokens


def admit(waiting: collections.deque[Request], running: int, kv_used: int, budget: Budget) -> list[Request]:
    """Take requests off the front of `waiting` for one prefill group: as many as fit the free batch rows,
    the prefill budget and the KV budget (the first always, so a long prompt is never starved). Cancelled
    requests are dropped with an 'abort' event. A beam-search request runs alone: it waits for an empty
    batch and nothing joins it."""
    free = budget.max_batch_size - running
    batch: list[Request] = []
    tokens = 0
    while waiting and len(batch) < free:
        req = waiting[0]
        if req.cancelled:
            waiting.popleft()
            req.sink(Event(finish_reason="abort"))
            continue
        n = len(req.prompt)
        if batch and (tokens + n > budget.max_prefill_tokens or kv_used + tokens + n > budget.max_kv_tokens):
            break
        if req.params.beams > 1 and (batch or running):
            break  # beam search runs alone
        batch.append(waiting.popleft())
        tokens += n
        if req.params.beams > 1:
            break
    return batch
