"""The multi-LoRA tests' shared base and adapters: a tiny random Llama and eight adapters of it, each trained
by our trainer on its own data set (tests/serving/lora/adapters.py), made once per session (~70 s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatmodel_serving.engine.core import Engine
from chatmodel_serving.models import load_model
from tests.fuzz.tiny_model import write_tiny_model
from tests.serving.lora.adapters import QUESTIONS, WORDS, answers, chat_ids, train_adapter


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("lora-base") / "model", context=512)


@pytest.fixture(scope="session")
def adapters(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """word -> adapter folder, eight of them."""
    d = tmp_path_factory.mktemp("lora-adapters")
    return {word: train_adapter(tiny_base, d, word) for word in WORDS}


@pytest.fixture(scope="session")
def prompts(tiny_base: Path) -> list[list[int]]:
    """QUESTIONS as chat prompts (token ids)."""
    tokenizer = load_model(str(tiny_base), dtype="float32", device="cpu").tokenizer
    return [chat_ids(tokenizer, q) for q in QUESTIONS]


@pytest.fixture(scope="session")
def merged_answers(adapters: dict[str, Path], prompts: list[list[int]]) -> dict[str, list[str]]:
    """word -> the greedy answers of its adapter merged into the base (as `chatmodel serve ADAPTER` loads
    it), each question served alone."""
    out = {}
    for word, folder in adapters.items():
        engine = Engine(load_model(str(folder), dtype="float32", device="cpu")).start()
        try:
            out[word] = answers(engine, [(p, None) for p in prompts], alone=True)
        finally:
            engine.shutdown()
    return out
