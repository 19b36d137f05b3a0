"""The engine's batching, on the shipped model in float32: a greedy answer is the same token for token
whether its request runs alone or among 32 requests of mixed prompt lengths arriving together (decode
rows, prompts prefilled in chunks and cached prefixes sharing each forward pass), and the same as
transformers' own `generate()`."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import torch

from chatmodel_serving.engine.core import Engine
from chatmodel_serving.models import LoadedModel, load_model
from tests.serving.engine.test_features import chat_prompt, generate

WORDS = [
    "river",
    "city",
    "engine",
    "garden",
    "robot",
    "light",
    "stone",
    "water",
    "market",
    "train",
    "music",
    "paper",
    "window",
    "cloud",
]


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model("builtin://smollm2-135m", dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def engine(loaded: LoadedModel) -> Iterator[Engine]:
    # A small prefill budget, so long prompts go in several chunks beside running decodes.
    engine = Engine(loaded, max_prefill_tokens=128).start()
    yield engine
    engine.shutdown()


def mixed_prompts(loaded: LoadedModel, count: int) -> list[list[int]]:
    rng = random.Random(5)
    prompts = []
    for i in range(count):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 300)))
        prompts.append(chat_prompt(loaded, f"Note {i}: {words}. Which word comes most often?"))
    return prompts


def test_greedy_answers_do_not_depend_on_the_batch(loaded: LoadedModel, engine: Engine) -> None:
    prompts = mixed_prompts(loaded, 32)
    lengths = sorted(len(p) for p in prompts)
    assert lengths[0] < 60 and lengths[-1] > 300  # mixed: many chunks and short prompts in one step
    alone = [generate(engine, [p], max_tokens=12)[0] for p in prompts]
    together = generate(engine, prompts, max_tokens=12)
    assert together == alone


def test_the_engine_answers_as_transformers_generate_does(loaded: LoadedModel, engine: Engine) -> None:
    prompts = mixed_prompts(loaded, 3)
    ours = generate(engine, prompts, max_tokens=12, ignore_eos=True)
    with torch.inference_mode():
        for prompt, answer in zip(prompts, ours, strict=True):
            out = loaded.model.generate(
                torch.tensor([prompt]), max_new_tokens=12, do_sample=False, min_new_tokens=12
            )
            assert out[0, len(prompt) :].tolist() == answer
