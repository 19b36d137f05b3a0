"""The KV of recent prompts, so a new prompt that shares a prefix (a system prompt, the chat template's
header, an earlier turn) prefills only what differs. Bounded by total tokens, LRU. Entries are kept per
namespace (the LoRA adapter's load id; 0 = the base model): a prefix's KV under one adapter is not the
same as under another."""

from __future__ import annotations

import collections

import torch

DEFAULT_TOKENS = 16384  # the bound on the positions whose KV the cache keeps
LayerKV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer, (keys, values) of one row


class PrefixCache:
    def __init__(self, max_tokens: int = DEFAULT_TOKENS, min_tokens: int = 8):
        self.entries: collections.OrderedDict[tuple[int, tuple[int, ...]], LayerKV] = (
            collections.OrderedDict()
        )
        self.max_tokens, self.min_tokens, self.tokens = max_tokens, min_tokens, 0
        self.hits = 0

    def lookup(self, prompt: list[int], namespace: int = 0) -> tuple[int, LayerKV | None]:
        """The longest cached prefix of `prompt` in `namespace`, leaving at least one token to compute."""
        best, best_key = 0, None
        for key in self.entries:
            if key[0] != namespace:
                continue
            n = 0
            for a, b in zip(key[1], prompt, strict=False):
                if a != b:
                    break
                n += 1
            n = min(n, len(prompt) - 1)
            if n > best:
                best, best_key = n, key
        if best_key is None or best < self.min_tokens:
            return 0, None
        self.entries.move_to_end(best_key)
        self.hits += 1
        return best, [(k[:, :, :best], v[:, :, :best]) for k, v in self.entries[best_key]]

    def store(self, prompt: list[int], kv: LayerKV, namespace: int = 0) -> None:
        key = (namespace, tuple(prompt))
        if len(prompt) < self.min_tokens or key in self.entries:
            return
        self.entries[key] = kv
        self.tokens += len(prompt)
        while self.tokens > self.max_tokens and self.entries:
            (_, old), _ = self.entries.popitem(last=False)
            self.tokens -= len(old)
