"""Linear layers packed for oneDNN (engine/linears.py): a bfloat16 CPU model gives the same logits packed
as unpacked (the same kernel, without the per-call weight reorder), keeps its tied embedding, and a
float32 model is left as it is."""

from __future__ import annotations

import copy

import pytest
import torch

from chatmodel_serving.engine import linears
from chatmodel_serving.models import load_model
from tests.fuzz.tiny_model import write_tiny_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def test_a_packed_bfloat16_model_gives_the_same_logits(folder: str) -> None:
    model = load_model(folder, dtype="bfloat16", device="cpu").model
    ids = torch.randint(0, int(model.config.vocab_size), (1, 37))
    if not linears.onednn_packs_bf16():
        # An AVX2-only CPU: oneDNN refuses to reorder a bfloat16 weight, so nothing is packed and the model
        # runs on PyTorch's own kernels (packing here made `chatmodel serve --dtype bfloat16` exit).
        assert not linears.can_pack(model) and linears.pack(model) == 0
        with torch.inference_mode():
            assert torch.isfinite(model(input_ids=ids).logits).all()
        return
    assert linears.can_pack(model)  # PyPI's torch is built with oneDNN
    plain = copy.deepcopy(model)
    count = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert linears.pack(model) == count > 0
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    with torch.inference_mode():
        assert torch.equal(model(input_ids=ids).logits, plain(input_ids=ids).logits)
    # The packed copy is no parameter: the state dict is the model's own, names unchanged.
    assert set(model.state_dict()) <= set(plain.state_dict())


def test_a_float32_model_is_left_alone(folder: str) -> None:
    model = load_model(folder, dtype="float32", device="cpu").model
    assert linears.pack(model) == 0
    assert any(type(m) is torch.nn.Linear for m in model.modules())
