"""The KV pool: per layer one keys and one values tensor of shape [slots, kv_heads, columns, head_dim].
Each running row owns a slot, and its token at position p has its keys/values in column p, so rows join
and leave without copying anyone else's cache, and a decode step writes one column per row in place.

The pool grows (slots by SLOT_STEP, columns by COLUMN_STEP: a copy now and then) within a budget of
slots x columns, the memory it really takes; the engine admits and preempts by that measure.
"""

from __future__ import annotations

import torch

SLOT_STEP = 8
COLUMN_STEP = 256
KV = tuple[torch.Tensor, torch.Tensor]


def round_up(n: int, step: int) -> int:
    return -(-n // step) * step


class KVPool:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device):
        self.layers, self.kv_heads, self.head_dim = layers, kv_heads, head_dim
        self.dtype, self.device = dtype, device
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.slots = self.columns = 0

    @property
    def tokens(self) -> int:
        """Token positions the pool holds memory for (slots x columns)."""
        return self.slots * self.columns

    def bytes_per_token(self) -> int:
        return (
            2 * self.layers * self.kv_heads * self.head_dim * torch.empty(0, dtype=self.dtype).element_size()
        )

    def resize(self, slots: int, columns: int) -> None:
        """Reallocate as `slots` x `columns`, keeping what fits (the caller keeps its rows inside)."""
        if (slots, columns) == (self.slots, self.columns):
            return
        shape = (slots, self.kv_heads, columns, self.head_dim)
        keep_s, keep_c = min(slots, self.slots), min(columns, self.columns)
        if not self.keys:
            self.keys, self.values = [torch.empty(0)] * self.layers, [torch.empty(0)] * self.layers
        # Layer by layer, each old tensor dropped as soon as it is copied: the pool's memory passes its
        # size by one layer while it grows, never by a whole second pool.
        for store in (self.keys, self.values):
            for layer in range(self.layers):
                # Zeros, not empty: attention weighs a row's masked columns by 0, and 0 x NaN (whatever
                # bits fresh memory holds) would poison the row. What a row leaves behind is finite.
                new = torch.zeros(shape, dtype=self.dtype, device=self.device)
                if keep_s and keep_c:
                    new[:keep_s, :, :keep_c] = store[layer][:keep_s, :, :keep_c]
                store[layer] = new
        self.slots, self.columns = slots, columns

    def release(self) -> None:
        """Free the memory (the engine is idle)."""
        self.keys, self.values = [], []
        self.slots = self.columns = 0

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy a row's first `length` positions from slot `src` to slot `dst`."""
        for k, v in zip(self.keys, self.values, strict=True):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]

    def read(self, slot: int, length: int) -> list[KV]:
        """Per layer, a copy of one row's first `length` positions, shaped [1, kv_heads, length, dim]."""
        return [
            (k[slot : slot + 1, :, :length].clone(), v[slot : slot + 1, :, :length].clone())
            for k, v in zip(self.keys, self.values, strict=True)
        ]

    def write(self, slot: int, layers: list[KV]) -> None:
        """Put per-layer [1, kv_heads, n, dim] keys/values at a row's first n positions."""
        for (k, v), (nk, nv) in zip(zip(self.keys, self.values, strict=True), layers, strict=True):
            n = nk.shape[-2]
            k[slot, :, :n] = nk[0]
            v[slot, :, :n] = nv[0]
