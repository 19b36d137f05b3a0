"""The engine's parts without a model: admission (scheduler), the prefix cache and the sampler."""

from __future__ import annotations

import collections
from typing import TypedDict, Unpack

import torch

from chatmodel_serving.engine.prefix_cache import PrefixCache
from chatmodel_serving.engine.sampler import sample, sample_step
from chatmodel_serving.engine.scheduler import Budget, admit
from chatmodel_serving.engine.sequence import Request, Sequence
from chatmodel_serving.engine.types import Event, SamplingParams


class Params(TypedDict, total=False):
    """SamplingParams' fields but max_tokens (4 here)."""

    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    ignore_eos: bool
    beams: int
    presence_penalty: float
    frequency_penalty: float
    logit_bias: dict[int, float]
    repetition_penalty: float
    top_k: int
    min_p: float
    min_tokens: int
    stop_token_ids: tuple[int, ...]
    logprobs: int | None


def request(
    rid: int, prompt_len: int, events: list[Event] | None = None, **params: Unpack[Params]
) -> Request:
    sink = (events if events is not None else []).append
    return Request(rid, [1] * prompt_len, SamplingParams(max_tokens=4, **params), sink)


def test_admission_respects_free_rows_and_the_prefill_budget() -> None:
    waiting = collections.deque(request(i, 10) for i in range(5))
    got = admit(waiting, running=1, budget=Budget(8, 25))
    assert [r.id for r in got] == [0, 1, 2]  # the third starts within the budget and goes on in chunks
    assert [r.id for r in waiting] == [3, 4]
    got = admit(waiting, running=7, budget=Budget(8, 1000))
    assert [r.id for r in got] == [3]  # one free row


def test_a_long_prompt_is_admitted_over_the_prefill_budget() -> None:
    waiting = collections.deque([request(1, 500), request(2, 1)])
    assert [r.id for r in admit(waiting, 0, Budget(8, 100))] == [1]


def test_the_kv_pool_holds_back_a_request_it_cannot_fit() -> None:
    waiting = collections.deque([request(1, 10), request(2, 10)])
    got = admit(waiting, 1, Budget(8, 1000), fits=lambda taken, req: not taken)
    assert [r.id for r in got] == [1] and [r.id for r in waiting] == [2]


def test_cancelled_requests_are_dropped_with_abort() -> None:
    events: list[Event] = []
    gone = request(1, 3, events)
    gone.cancelled = True
    waiting = collections.deque([gone, request(2, 3)])
    assert [r.id for r in admit(waiting, 0, Budget(8, 100))] == [2]
    assert [e.finish_reason for e in events] == ["abort"]


def test_beam_search_runs_alone() -> None:
    waiting = collections.deque([request(1, 3, beams=2), request(2, 3)])
    assert admit(waiting, running=1, budget=Budget(8, 100)) == []  # waits for an empty batch
    assert [r.id for r in admit(waiting, 0, Budget(8, 100))] == [1]
    waiting = collections.deque([request(2, 3), request(1, 3, beams=2)])
    assert [r.id for r in admit(waiting, 0, Budget(8, 100))] == [2]  # nothing joins it either


def kv(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    t = torch.arange(n, dtype=torch.float32).reshape(1, 1, n, 1)
    return [(t, t + 100)]


def test_prefix_cache_returns_the_longest_shared_prefix() -> None:
    cache = PrefixCache(max_tokens=100, min_tokens=2)
    cache.store([1, 2, 3, 4, 5], kv(5))
    n, hit = cache.lookup([1, 2, 3, 9])
    assert n == 3 and hit is not None and hit[0][0].shape[2] == 3 and cache.hits == 1
    n, hit = cache.lookup([1, 2, 3, 4, 5])  # one token is always left to compute
    assert n == 4 and hit is not None
    assert cache.lookup([7, 8, 9]) == (0, None) and cache.hits == 2


def test_prefix_cache_evicts_least_recently_used_beyond_its_bound() -> None:
    cache = PrefixCache(max_tokens=10, min_tokens=2)
    cache.store([1] * 4, kv(4))
    cache.store([2] * 4, kv(4))
    cache.lookup([1, 1, 1, 9])  # [1]*4 is now the most recent
    cache.store([3] * 4, kv(4))
    assert set(cache.entries) == {(0, (1,) * 4), (0, (3,) * 4)} and cache.tokens == 8


def test_prefix_cache_keeps_namespaces_apart() -> None:
    cache = PrefixCache(max_tokens=100, min_tokens=2)
    cache.store([1, 2, 3, 4], kv(4), namespace=7)  # computed under adapter 7
    assert cache.lookup([1, 2, 3, 4, 5]) == (0, None)  # not for the base
    assert cache.lookup([1, 2, 3, 4, 5], namespace=8) == (0, None)  # nor another adapter
    n, hit = cache.lookup([1, 2, 3, 4, 5], namespace=7)
    assert n == 4 and hit is not None


def seq(**params: Unpack[Params]) -> Sequence:
    return Sequence(request(1, 1, **params), tokenizer=None, eos_ids=set())


def test_sampler_greedy_and_top_p() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0], [0.0, 5.0, 4.9]])
    assert sample(logits, [seq(temperature=0.0), seq(temperature=0.0)]) == [1, 1]
    # top_p small keeps only the most likely token, whatever the temperature
    sampled = {sample(logits, [seq(temperature=2.0, top_p=1e-9)] * 2)[1] for _ in range(20)}
    assert sampled == {1}


def test_sampler_seeded_rows_are_reproducible() -> None:
    logits = torch.zeros((1, 50))

    def draw() -> list[int]:
        s = seq(temperature=1.0)
        s.req.generator = torch.Generator().manual_seed(7)
        return [sample(logits, [s])[0] for _ in range(5)]

    assert draw() == draw()


def test_sampler_controls_are_per_row() -> None:
    """Each row gets its own bias and penalties, in one batch; a row without any is left as it was."""
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0]] * 4)
    plain = seq(temperature=0.0)
    biased = seq(temperature=0.0, logit_bias={1: -100.0})
    frequent = seq(temperature=0.0, frequency_penalty=2.0)
    frequent.generated = [1]  # token 1 once: 5 - 2 = 3 < 4
    present = seq(temperature=0.0, presence_penalty=0.5)
    present.generated = [1, 1]  # presence counts once: 5 - 0.5 = 4.5 > 4
    assert sample(logits, [plain, biased, frequent, present]) == [1, 3, 3, 1]
    repeated = seq(temperature=0.0, repetition_penalty=2.0)  # the prompt's token 1 counts: 5 / 2 < 4
    assert sample(logits[:1], [repeated]) == [3]


def test_min_tokens_masks_the_end_and_stop_token_ids_end() -> None:
    events: list[Event] = []
    req = request(1, 1, events, temperature=0.0, min_tokens=2, stop_token_ids=(1,))
    s = Sequence(req, tokenizer=None, eos_ids={0})
    logits = torch.tensor([[9.0, 8.0, 1.0]])
    assert sample(logits, [s]) == [2]  # neither EOS (0) nor the stop token (1) before 2 tokens
    s.generated = [2, 2]
    assert sample(logits, [s]) == [0]


def test_top_k_and_min_p_keep_only_the_best_when_strict() -> None:
    logits = torch.tensor([[1.0, 1.5, 1.2, 0.3]])
    for params in ({"top_k": 1}, {"min_p": 1.0}):
        drawn = {sample(logits, [seq(temperature=1.0, **params)])[0] for _ in range(30)}
        assert drawn == {1}, params


def test_logprobs_are_of_the_raw_distribution() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    rows = [seq(temperature=0.0, logprobs=2, logit_bias={2: 50.0}), seq(temperature=0.0)]
    step = sample_step(logits, rows)
    assert step.tokens == [2, 0] and step.logprobs[1] is None
    lp = step.logprobs[0]
    raw = torch.log_softmax(logits[0], -1)
    assert lp is not None and lp.token_id == 2 and abs(lp.logprob - float(raw[2])) < 1e-6
    assert [t for t, _ in lp.top] == [1, 2] and abs(lp.top[0][1] - float(raw[1])) < 1e-6
