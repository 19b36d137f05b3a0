"""A KV cache whose layers grow in place: decode steps write into spare capacity instead of
concatenating (and so copying) every layer's whole cache on every token, as DynamicCache does."""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer

HEADROOM = 64  # columns allocated beyond what is needed, so ~64 decode steps run without a copy


class GrowingLayer(DynamicLayer):
    def __init__(self) -> None:
        super().__init__()
        self.kbuf: torch.Tensor | None = None
        self.vbuf: torch.Tensor | None = None
        self.n = 0

    def assign(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Replace the contents (after rows joined or left the batch), with headroom to grow."""
        shape = list(keys.shape)
        shape[-2] += HEADROOM
        self.kbuf, self.vbuf = keys.new_empty(shape), values.new_empty(shape)
        self.n = keys.shape[-2]
        self.kbuf[:, :, : self.n] = keys
        self.vbuf[:, :, : self.n] = values
        self.keys, self.values = self.kbuf[:, :, : self.n], self.vbuf[:, :, : self.n]
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kbuf is None or self.vbuf is None:
            self.assign(key_states, value_states)
            return self.keys, self.values
        need = self.n + key_states.shape[-2]
        if need > self.kbuf.shape[-2]:
            self.assign(self.keys, self.values)  # grow: one copy per HEADROOM steps
            assert self.kbuf is not None and self.vbuf is not None
        self.kbuf[:, :, self.n : need] = key_states
        self.vbuf[:, :, self.n : need] = value_states
        self.n = need
        self.keys, self.values = self.kbuf[:, :, :need], self.vbuf[:, :, :need]
        return self.keys, self.values


def new_cache(layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> Cache:
    """An empty cache, or one holding the given per-layer (keys, values)."""
    if not layers:
        return Cache(layer_class_to_replicate=GrowingLayer)
    grown = []
    for k, v in layers:
        layer = GrowingLayer()
        layer.assign(k, v)
        grown.append(layer)
    return Cache(layers=grown)


def assign(cache: Cache, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for layer, (k, v) in zip(cache.layers, layers, strict=True):
        layer.assign(k, v)  # type: ignore[union-attr]
