"""The growing KV cache: a long prefill onto an existing (prefix-cached) layer gets all the room it needs.
Found by the fuzzer: a cached prefix plus more than HEADROOM new prompt tokens failed the engine step."""

from __future__ import annotations

import torch

from chatmodel_serving.engine.kvcache import HEADROOM, GrowingLayer


def test_a_long_prefill_onto_a_cached_prefix_fits() -> None:
    layer = GrowingLayer()
    prefix = torch.randn(1, 2, 10, 16)
    layer.assign(prefix, prefix + 1)
    suffix = torch.randn(1, 2, HEADROOM * 2 + 10, 16)
    keys, values = layer.update(suffix, suffix + 1)
    assert keys.shape[-2] == 10 + suffix.shape[-2]
    assert torch.equal(keys[:, :, :10], prefix) and torch.equal(keys[:, :, 10:], suffix)
    assert torch.equal(values[:, :, 10:], suffix + 1)
    # ...and decode steps still append in place afterwards.
    step = torch.randn(1, 2, 1, 16)
    keys, _ = layer.update(step, step)
    assert torch.equal(keys[:, :, -1:], step)
