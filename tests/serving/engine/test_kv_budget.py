"""The KV budget (`--max-kv-tokens`) on a tiny random model: 64 requests of 1,500-token prompts where the
budget holds only 16 are all answered, the pool never allocates past the budget, answers that outgrow it
are preempted and resumed, and a prompt that could never fit is refused at once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from chatmodel_serving.engine.core import Engine
from chatmodel_serving.engine.kvcache import COLUMN_STEP
from chatmodel_serving.engine.types import Event, PromptTooLongError, SamplingParams
from chatmodel_serving.models import LoadedModel, load_model
from tests.fuzz.tiny_model import write_tiny_model

PROMPT, ANSWER = 1500, 16
COLUMNS = -(-(PROMPT + ANSWER) // COLUMN_STEP) * COLUMN_STEP  # one row's columns in the pool


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    folder = write_tiny_model(tmp_path_factory.mktemp("tiny") / "model", context=2048)
    return load_model(str(folder), dtype="float32", device="cpu")


def watch(engine: Engine) -> dict[str, int]:
    """Record the pool's largest allocation and the preemptions."""
    seen = {"tokens": 0, "slots": 0, "preempted": 0}
    resize: Callable[[int, int], None] = engine.pool.resize
    preempt: Callable[[], None] = engine._preempt_newest

    def resized(slots: int, columns: int) -> None:
        resize(slots, columns)
        seen["tokens"] = max(seen["tokens"], slots * columns)
        seen["slots"] = max(seen["slots"], slots)

    def preempted() -> None:
        seen["preempted"] += 1
        preempt()

    engine.pool.resize = resized  # type: ignore[method-assign]
    engine._preempt_newest = preempted  # type: ignore[method-assign]
    return seen


def answer_all(engine: Engine, prompts: list[list[int]], max_tokens: int) -> list[Event]:
    finals: list[Event] = []
    done = threading.Semaphore(0)

    def sink(event: Event) -> None:
        if event.finish_reason is not None:
            finals.append(event)
            done.release()

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    for prompt in prompts:
        engine.submit(prompt, params, sink)
    for _ in prompts:
        assert done.acquire(timeout=600), "the engine did not answer every request"
    return finals


def prompts(count: int, length: int) -> list[list[int]]:
    return [[100 + (i * 7 + j) % 5000 for j in range(length)] for i in range(count)]


def test_64_long_prompts_in_a_budget_of_16(loaded: LoadedModel) -> None:
    budget = 16 * COLUMNS
    engine = Engine(loaded, max_batch_size=64, max_waiting_requests=64, max_kv_tokens=budget).start()
    seen: dict[str, Any] = watch(engine)
    try:
        finals = answer_all(engine, prompts(64, PROMPT), ANSWER)
    finally:
        engine.shutdown()
    assert [e.finish_reason for e in finals] == ["length"] * 64
    assert all(e.completion_tokens == ANSWER for e in finals)
    assert 0 < seen["tokens"] <= budget and seen["slots"] == 16  # never past the budget, and it was used
    assert engine.pool.tokens == 0  # idle: the memory is given back


def test_answers_that_outgrow_the_budget_are_preempted_and_resumed(loaded: LoadedModel) -> None:
    # 8 prompts of 200 tokens fit 8 rows of 256 columns; answering 400 tokens each needs 768 per row.
    engine = Engine(loaded, max_batch_size=8, max_kv_tokens=8 * COLUMN_STEP).start()
    seen = watch(engine)
    try:
        finals = answer_all(engine, prompts(8, 200), 400)
        assert engine.stats().waiting == 0
    finally:
        engine.shutdown()
    assert [e.finish_reason for e in finals] == ["length"] * 8
    assert all(e.completion_tokens == 400 for e in finals)
    assert seen["preempted"] > 0 and seen["tokens"] <= 8 * COLUMN_STEP


def test_a_prompt_that_can_never_fit_is_refused(loaded: LoadedModel) -> None:
    engine = Engine(loaded, max_kv_tokens=1024)
    with pytest.raises(PromptTooLongError, match="1500 tokens"):
        engine.submit([5] * 1500, SamplingParams(max_tokens=4), lambda e: None)
