"""Engine features that an answer alone cannot show, on the shipped model in process (float32, so greedy
answers are reproducible whatever the batch): beam search finds a likelier answer than greedy decoding,
and the prefix cache is hit on a repeated long prompt without changing a single answer token."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from chatmodel_serving.engine.core import Engine
from chatmodel_serving.engine.types import Event, SamplingParams
from chatmodel_serving.models import LoadedModel, load_model

# Greedy starts "The waves of the sea, a silent"; 3 beams find "In the depths of the abyss," (measured
# cumulative log-probabilities over the 8 tokens: -11.05 greedy, -5.80 beam).
BEAM_QUESTION = "Write a haiku about the sea."
# A system prompt far over the cache's 8-token minimum; the two questions share it (and the template).
SYSTEM = "You are the support assistant of Tidewell, a maker of water filters. " * 12
QUESTIONS = ("How do I reset the H2?", "What does the red light mean?")


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model("builtin://smollm2-135m", dtype="float32", device="cpu")


@pytest.fixture
def engine(loaded: LoadedModel) -> Iterator[Engine]:
    engine = Engine(loaded).start()
    yield engine
    engine.shutdown()


def chat_prompt(loaded: LoadedModel, question: str, system: str | None = None) -> list[int]:
    messages = [{"role": "user", "content": question}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    ids: Any = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    if not isinstance(ids, list):  # a BatchEncoding in newer transformers
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def generate(engine: Engine, prompts: list[list[int]], **params: Any) -> list[list[int]]:
    """Greedy answers (token ids) to `prompts`, all submitted at once so the engine may batch them."""
    answers: list[list[int]] = []
    finals: list[Event] = []
    done = [threading.Event() for _ in prompts]
    for i, prompt in enumerate(prompts):
        tokens: list[int] = []
        answers.append(tokens)

        def sink(event: Event, tokens: list[int] = tokens, finished: threading.Event = done[i]) -> None:
            tokens.extend(event.token_ids)
            if event.finish_reason is not None:
                finals.append(event)
                finished.set()

        engine.submit(prompt, SamplingParams(temperature=0.0, **params), sink)
    for finished in done:
        assert finished.wait(300), "the engine did not answer"
    assert all(e.finish_reason in ("length", "stop") for e in finals), finals
    # Every token reached the sink (none held back unseen), so the answers can be scored exactly.
    assert sorted(e.completion_tokens for e in finals) == sorted(len(a) for a in answers)
    return answers


def log_probability(loaded: LoadedModel, prompt: list[int], answer: list[int]) -> float:
    """The model's cumulative log-probability of `answer` after `prompt`, scored in one forward pass."""
    ids = torch.tensor([prompt + answer])
    with torch.inference_mode():
        logits = loaded.model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
    picked = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(answer)[:, None])
    return float(picked.sum())


def test_beam_search_finds_a_likelier_answer_than_greedy(loaded: LoadedModel, engine: Engine) -> None:
    prompt = chat_prompt(loaded, BEAM_QUESTION)
    (greedy,) = generate(engine, [prompt], max_tokens=8)
    (beam,) = generate(engine, [prompt], max_tokens=8, beams=3)
    assert len(greedy) == len(beam) == 8
    assert beam != greedy, loaded.tokenizer.decode(beam)
    # Greedy picks the likeliest next token; beam search keeps 3 candidates and must end likelier overall.
    assert log_probability(loaded, prompt, beam) > log_probability(loaded, prompt, greedy) + 1.0


def test_prefix_cache_is_hit_and_changes_no_answer(loaded: LoadedModel, engine: Engine) -> None:
    first, second = (chat_prompt(loaded, q, SYSTEM) for q in QUESTIONS)
    cache = engine.prefix_cache
    assert cache is not None and cache.hits == 0
    (alone,) = generate(engine, [first], max_tokens=8)
    assert cache.hits == 0 and cache.tokens == len(first)  # a miss; the prompt is remembered
    again = generate(engine, [first, second], max_tokens=8)
    assert cache.hits == 2  # the same prompt again, and another sharing its long system prompt
    shared = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    assert shared > 150 and cache.lookup(second)[0] == len(second) - 1  # both prompts now cached whole

    uncached = Engine(loaded, prefix_cache_tokens=0).start()
    try:
        assert uncached.prefix_cache is None
        reference = generate(uncached, [first, second], max_tokens=8)
    finally:
        uncached.shutdown()
    assert alone == reference[0] and again == reference
