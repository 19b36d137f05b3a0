"""One token per row of a batch's logits, each row with its own settings."""

from __future__ import annotations

import torch

from .sequence import Sequence
from .types import GREEDY_BELOW


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """Greedy rows in one argmax, sampled rows (temperature, top-p) with their own generator."""
    tokens: list[int] = logits.argmax(-1).tolist()
    for i, seq in enumerate(seqs):
        p = seq.req.params
        if p.temperature < GREEDY_BELOW:  # dividing by ~0 overflows the softmax: that is greedy
            continue
        probs = torch.softmax(logits[i].float() / p.temperature, -1)
        if p.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(-1) - sorted_probs < p.top_p
            keep[0] = True  # the top token, always: a denormal top_p is 0 in float32
            probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
        tokens[i] = int(torch.multinomial(probs, 1, generator=seq.req.generator).item())
    return tokens
