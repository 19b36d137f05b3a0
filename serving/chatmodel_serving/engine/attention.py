"""The engine's attention: one forward pass carries every running row's decode token and chunks of the
prompts being prefilled, packed into one sequence of tokens (no padding), over the KV pool (kvcache.py).

The model runs with `attn_implementation=NAME`; its attention layers hand each layer's new keys and values
to `paged_attention` with the step's `Plan` (a keyword argument of the forward pass, which transformers
passes through to attention). The function writes the new keys/values into the pool at their (slot,
column), then attends:
- decode tokens: one batched `scaled_dot_product_attention` over the slots' columns, each row masked to its
  own length; grouped-query heads are not repeated (`enable_gqa`), so keys and values are read once;
- each prefill chunk: causal attention of its queries over its row's columns so far (a cached prefix and
  earlier chunks included).
Without a Plan (beam search's `generate()`), it is transformers' own SDPA attention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from .kvcache import KVPool

NAME = "chatmodel_paged"


@dataclass
class Chunk:
    """Tokens [start, end) of the packed sequence are one row's prompt tokens at columns [column, ...)."""

    slot: int
    start: int
    end: int
    column: int
    mask: torch.Tensor | None = None  # additive, causal with an offset; None = plain causal (column 0)


@dataclass
class Plan:
    """Where one forward pass's tokens go and what each attends to. Decode tokens come first, in order of
    `decode_slots` (ascending); then the chunks."""

    pool: KVPool
    write_slot: torch.Tensor  # per packed token
    write_column: torch.Tensor
    decode_slots: list[int]
    decode_mask: torch.Tensor | None  # [span, 1, 1, columns]: 0 where a slot's row has KV, else -inf
    decode_index: torch.Tensor | None  # decode_slots as a tensor; None when they are 0..n-1
    columns: int  # columns the decode rows read
    chunks: list[Chunk] = field(default_factory=list)


def additive(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean attention mask as SDPA's additive form: 0 where visible, -inf elsewhere."""
    mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
    return mask.masked_fill_(~visible, float("-inf"))


def build_plan(
    pool: KVPool,
    decode: list[tuple[int, int]],
    chunks: list[tuple[int, int, int]],
    device: torch.device,
) -> Plan:
    """`decode`: (slot, column of its token) per decode row, ascending slots; `chunks`: (slot, first column,
    tokens) per prefill chunk. Masks are built here once, not per layer, and additive in the pool's dtype:
    what SDPA would turn a boolean mask into in every call (the same values, so the same answers)."""
    slots: list[int] = [s for s, _ in decode]
    cols: list[int] = [c for _, c in decode]
    planned: list[Chunk] = []
    start = len(decode)
    for slot, column, n in chunks:
        mask = None
        if column:
            q = torch.arange(column, column + n, device=device)
            mask = additive(torch.arange(column + n, device=device)[None, :] <= q[:, None], pool.dtype)
        planned.append(Chunk(slot, start, start + n, column, mask))
        slots += [slot] * n
        cols += list(range(column, column + n))
        start += n
    decode_mask = decode_index = None
    columns = 0
    if decode:
        span = decode[-1][0] + 1
        columns = max(c for _, c in decode) + 1
        length = torch.zeros(span, dtype=torch.long)
        for slot, col in decode:
            length[slot] = col + 1
        length.clamp_(min=1)  # a slot not decoding here (mid-prefill) reads one column, then is dropped
        visible = (torch.arange(columns)[None, :] < length[:, None]).to(device)[:, None, None, :]
        decode_mask = additive(visible, pool.dtype)
        if span != len(decode):
            decode_index = torch.tensor([s for s, _ in decode], device=device)
    return Plan(
        pool,
        torch.tensor(slots, device=device),
        torch.tensor(cols, device=device),
        [s for s, _ in decode],
        decode_mask,
        decode_index,
        columns,
        planned,
    )


def paged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    plan: Plan | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """query [1, heads, T, dim], key/value [1, kv_heads, T, dim] -> ([1, T, heads, dim], None)."""
    if plan is None:
        out, weights = sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
        return out, weights
    layer: int = module.layer_idx  # type: ignore[assignment]
    keys, values = plan.pool.keys[layer], plan.pool.values[layer]
    keys[plan.write_slot, :, plan.write_column] = key[0].transpose(0, 1)
    values[plan.write_slot, :, plan.write_column] = value[0].transpose(0, 1)
    outs = []
    if plan.decode_slots:
        n = len(plan.decode_slots)
        q = query[0, :, :n].transpose(0, 1).unsqueeze(2)  # [n, heads, 1, dim]
        assert plan.decode_mask is not None
        span = plan.decode_mask.shape[0]
        if plan.decode_index is not None:  # rows mid-prefill sit between decode rows: give them a dummy query
            full = q.new_zeros((span, *q.shape[1:]))
            full[plan.decode_index] = q
            q = full
        o = F.scaled_dot_product_attention(
            q,
            keys[:span, :, : plan.columns],
            values[:span, :, : plan.columns],
            attn_mask=plan.decode_mask,
            scale=scaling,
            enable_gqa=True,
        )
        if plan.decode_index is not None:
            o = o[plan.decode_index]
        outs.append(o[:, :, 0])  # [n, heads, dim]
    for c in plan.chunks:
        end = c.column + c.end - c.start
        o = F.scaled_dot_product_attention(
            query[:, :, c.start : c.end],
            keys[c.slot : c.slot + 1, :, :end],
            values[c.slot : c.slot + 1, :, :end],
            attn_mask=c.mask,
            is_causal=c.mask is None,
            scale=scaling,
            enable_gqa=True,
        )
        outs.append(o[0].transpose(0, 1))  # [tokens, heads, dim]
    return torch.cat(outs, 0).unsqueeze(0), None


AttentionInterface.register(NAME, paged_attention)
