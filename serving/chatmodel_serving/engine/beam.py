"""Beam search (an extension, as vLLM's `use_beam_search`): deterministic, one request at a time, run by
transformers' generate() on the engine thread; the answer is emitted through the request's Sequence, so
stop strings and max_tokens end it exactly as they end a sampled answer."""

from __future__ import annotations

from typing import Any

import torch

from .sequence import Request, Sequence
from .types import Event


def beam_search(
    model: Any,
    tokenizer: Any,
    device: torch.device,
    req: Request,
    eos_ids: set[int],
    pad_id: int,
    context_length: int,
) -> None:
    p = req.params
    ids = torch.tensor([req.prompt], device=device)
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        num_beams=p.beams,
        num_return_sequences=1,
        do_sample=False,
        max_new_tokens=min(p.max_tokens, context_length - len(req.prompt)),
        eos_token_id=sorted(eos_ids) or None,
        pad_token_id=pad_id,
    )
    seq = Sequence(req, tokenizer, eos_ids)
    for tok in out[0, len(req.prompt) :].tolist():
        seq.add(tok, context_length)
        if seq.finish_reason:
            break
    if not seq.finish_reason:
        seq.finish_reason = "length"
        req.sink(Event(finish_reason="length", completion_tokens=len(seq.generated)))
