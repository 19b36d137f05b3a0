"""The KV pool: rows keep their positions when it grows, and a row moves into a freed slot whole."""

from __future__ import annotations

import torch

from chatmodel_serving.engine.kvcache import KVPool


def test_resize_keeps_every_row_and_move_copies_a_row() -> None:
    pool = KVPool(layers=2, kv_heads=2, head_dim=4, dtype=torch.float32, device=torch.device("cpu"))
    pool.resize(2, 8)
    assert pool.tokens == 16 and torch.count_nonzero(pool.keys[0]) == 0  # fresh memory is zeros
    row = [(torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)) for _ in range(2)]
    pool.write(1, row)
    pool.resize(4, 16)
    kept = pool.read(1, 5)
    assert all(torch.equal(k, rk) and torch.equal(v, rv) for (k, v), (rk, rv) in zip(kept, row, strict=True))
    pool.move(1, 3, 5)
    moved = pool.read(3, 5)
    assert all(torch.equal(k, rk) for (k, _), (rk, _) in zip(moved, row, strict=True))
    pool.release()
    assert pool.tokens == 0 and pool.keys == []
