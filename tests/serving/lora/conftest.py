"""The multi-LoRA tests' shared base and adapters: a tiny random Llama and eight adapters of it, each trained
by our trainer on its own data set (tests/serving/lora/adapters.py), made once per session (~70 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.tiny_model import write_tiny_model
from tests.serving.lora.adapters import WORDS, train_adapter


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("lora-base") / "model", context=512)


@pytest.fixture(scope="session")
def adapters(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """word -> adapter folder, eight of them."""
    d = tmp_path_factory.mktemp("lora-adapters")
    return {word: train_adapter(tiny_base, d, word) for word in WORDS}
