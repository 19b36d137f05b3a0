"""Batched multi-LoRA in the engine (engine/lora.py): one base in memory, eight adapters trained by our
trainer, requests for all of them (and the base) interleaved in the same batches. Every answer (greedy,
float32) equals what the same adapter gives merged into its base and served alone, with as many slots as
adapters or fewer (LRU eviction); the prefix cache never hands one adapter's KV to another; bad adapters
are refused with the adapter and the reason named while the others keep serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chatmodel_serving.engine.core import Engine
from chatmodel_serving.engine.types import AdapterError, SamplingParams, UnknownAdapterError
from chatmodel_serving.models import load_model
from tests.fuzz.tiny_model import write_tiny_model
from tests.serving.lora.adapters import WORDS, Job, answers, train_adapter

pytestmark = pytest.mark.slow


@pytest.fixture
def multi(tiny_base: Path, adapters: dict[str, Path], request: pytest.FixtureRequest) -> Iterator[Engine]:
    """The base with every adapter loaded; `max_loras` from the test's parameter (default 8)."""
    slots = getattr(request, "param", len(adapters))
    engine = Engine(load_model(str(tiny_base), dtype="float32", device="cpu"), max_loras=slots).start()
    for word, folder in adapters.items():
        engine.load_adapter(word, str(folder))
    yield engine
    engine.shutdown()


def test_the_adapters_differ_from_each_other_and_from_the_base(
    merged_answers: dict[str, list[str]], tiny_base: Path, prompts: list[list[int]]
) -> None:
    base = Engine(load_model(str(tiny_base), dtype="float32", device="cpu")).start()
    try:
        plain = answers(base, [(p, None) for p in prompts])
    finally:
        base.shutdown()
    firsts = [merged_answers[w][0] for w in WORDS]
    assert len(set(firsts)) >= 6, firsts  # what makes the interleaved comparison below mean something
    assert all(merged_answers[w] != plain for w in WORDS)


@pytest.mark.parametrize("multi", [8, 3], indirect=True, ids=["a-slot-each", "3-slots-for-8"])
def test_interleaved_requests_answer_as_each_adapter_merged_and_alone(
    multi: Engine, merged_answers: dict[str, list[str]], prompts: list[list[int]]
) -> None:
    jobs: list[Job] = [(p, w) for p in prompts for w in [*WORDS, None]]  # every batch mixes all of them
    got = answers(multi, jobs)
    for (prompt, word), text in zip(jobs, got, strict=True):
        if word is not None:
            assert text == merged_answers[word][prompts.index(prompt)], (word, prompt)
    stats = multi.stats()
    assert stats.lora_loaded == 8 and stats.lora_resident <= stats.lora_slots == multi.adapters.max_loras


def test_a_prefix_cached_under_one_adapter_is_not_reused_under_another(
    multi: Engine, merged_answers: dict[str, list[str]], prompts: list[list[int]]
) -> None:
    assert multi.prefix_cache is not None
    first, second = WORDS[0], WORDS[1]
    assert answers(multi, [(prompts[0], first)]) == [merged_answers[first][0]]
    hits = multi.prefix_cache.hits
    assert answers(multi, [(prompts[0], second)]) == [merged_answers[second][0]]
    assert multi.prefix_cache.hits == hits  # the same prompt, another adapter: computed afresh
    assert answers(multi, [(prompts[0], first)]) == [merged_answers[first][0]]
    assert multi.prefix_cache.hits == hits + 1  # and under its own adapter, reused


def test_bad_adapters_are_refused_by_name_and_reason_and_the_others_keep_serving(
    multi: Engine,
    tiny_base: Path,
    adapters: dict[str, Path],
    merged_answers: dict[str, list[str]],
    prompts: list[list[int]],
    tmp_path: Path,
) -> None:
    other_base = write_tiny_model(tmp_path / "other-base", hidden_size=32)
    foreign = train_adapter(other_base, tmp_path, "foreign")
    cases = {
        "foreign": (str(foreign), "does not fit this base model"),
        "missing": (str(tmp_path / "nowhere"), "no such folder"),
        "plain": (str(tiny_base), "holds no adapter_config.json"),
        WORDS[0]: (str(foreign), "already loaded"),
    }
    for name, (path, reason) in cases.items():
        with pytest.raises(AdapterError, match=f"LoRA adapter '{name}': .*{reason}"):
            multi.load_adapter(name, path)
    low = Engine(load_model(str(tiny_base), dtype="float32", device="cpu"), max_loras=2, max_lora_rank=4)
    with pytest.raises(AdapterError, match=r"'amber': rank 8 .* above --max-lora-rank 4"):
        low.load_adapter("amber", str(adapters["amber"]))
    assert answers(multi, [(prompts[1], WORDS[2])]) == [merged_answers[WORDS[2]][1]]


def test_an_unloaded_adapter_is_refused_and_can_be_loaded_again(
    multi: Engine, adapters: dict[str, Path], merged_answers: dict[str, list[str]], prompts: list[list[int]]
) -> None:
    word = WORDS[3]
    multi.unload_adapter(word)
    with pytest.raises(UnknownAdapterError):
        multi.submit(prompts[0], SamplingParams(max_tokens=4, adapter=word), lambda ev: None)
    with pytest.raises(UnknownAdapterError):
        multi.unload_adapter(word)
    assert multi.stats().lora_loaded == 7
    multi.load_adapter(word, str(adapters[word]))
    assert answers(multi, [(prompts[2], word)]) == [merged_answers[word][2]]


def test_adapters_of_other_ranks_and_layers_batch_with_the_rest(
    multi: Engine,
    tiny_base: Path,
    merged_answers: dict[str, list[str]],
    prompts: list[list[int]],
    tmp_path: Path,
) -> None:
    odd = train_adapter(tiny_base, tmp_path, "quartz", rank=4, targets="q_proj,v_proj")
    multi.load_adapter("quartz", str(odd))
    alone = Engine(load_model(str(odd), dtype="float32", device="cpu")).start()
    try:
        want = answers(alone, [(p, None) for p in prompts], alone=True)
    finally:
        alone.shutdown()
    jobs: list[Job] = [(p, w) for p in prompts for w in ("quartz", WORDS[0], None, WORDS[1])]
    got = answers(multi, jobs)
    for (prompt, word), text in zip(jobs, got, strict=True):
        i = prompts.index(prompt)
        if word is not None:
            assert text == (want[i] if word == "quartz" else merged_answers[word][i]), (word, i)
