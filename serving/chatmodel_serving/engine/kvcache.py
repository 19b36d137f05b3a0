"""A KV cache whose layers grow in place: decode steps write into spare capacity instead of
concatenating (and so copying) every layer's whole cache on every token, as DynamicCache does."""

from __future__ import annotations

from typing import Any, cast

import torch
from transformers.cache_utils import Cache, DynamicLayer

HEADROOM = 64  # columns allocated beyond what is needed, so ~64 decode steps run without a copy
KV = tuple[torch.Tensor, torch.Tensor]


class GrowingLayer(DynamicLayer):
    def __init__(self) -> None:
        super().__init__()
        self.kbuf: torch.Tensor | None = None
        self.vbuf: torch.Tensor | None = None
        self.n = 0

    def assign(self, keys: torch.Tensor, values: torch.Tensor, room: int = HEADROOM) -> KV:
        """Replace the contents (after rows joined or left the batch), with `room` columns to grow."""
        shape = list(keys.shape)
        shape[-2] += max(room, HEADROOM)
        kbuf, vbuf = keys.new_empty(shape), values.new_empty(shape)
        self.n = keys.shape[-2]
        kbuf[:, :, : self.n] = keys
        vbuf[:, :, : self.n] = values
        self.kbuf, self.vbuf = kbuf, vbuf
        self.keys, self.values = kbuf[:, :, : self.n], vbuf[:, :, : self.n]
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        return self.keys, self.values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> KV:
        if self.kbuf is None or self.vbuf is None:
            return self.assign(key_states, value_states)
        need = self.n + key_states.shape[-2]
        if need > self.kbuf.shape[-2]:  # one copy per HEADROOM decode steps; a long prefill gets all it needs
            self.assign(self.kbuf[:, :, : self.n], self.vbuf[:, :, : self.n], key_states.shape[-2] + HEADROOM)
        kbuf, vbuf = self.kbuf, self.vbuf
        kbuf[:, :, self.n : need] = key_states
        vbuf[:, :, self.n : need] = value_states
        self.n = need
        self.keys, self.values = kbuf[:, :, :need], vbuf[:, :, :need]
        return self.keys, self.values

    def kv(self) -> KV:
        assert self.kbuf is not None and self.vbuf is not None
        return self.kbuf[:, :, : self.n], self.vbuf[:, :, : self.n]


def new_cache(layers: list[KV] | None = None) -> Cache:
    """An empty cache, or one holding the given per-layer (keys, values)."""
    if not layers:
        return Cache(layer_class_to_replicate=GrowingLayer)
    grown: list[Any] = []
    for k, v in layers:
        layer = GrowingLayer()
        layer.assign(k, v)
        grown.append(layer)
    return Cache(layers=grown)


def contents(cache: Cache) -> list[KV]:
    """Per layer, the (keys, values) the cache holds."""
    return [cast(GrowingLayer, layer).kv() for layer in cache.layers]


def assign(cache: Cache, layers: list[KV]) -> None:
    for layer, (k, v) in zip(cache.layers, layers, strict=True):
        cast(GrowingLayer, layer).assign(k, v)


def left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """Pad dim -2 of a KV tensor (or dim 1 of a mask) on the left with zeros up to `width`."""
    dim = 1 if t.dim() == 2 else 2
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim)
