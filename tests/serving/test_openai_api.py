"""The OpenAI API through the official client, against the real server on the real model."""

from __future__ import annotations

from typing import TYPE_CHECKING

import openai

from tests.serving.helpers import MODEL, Ask

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Q = "What is the capital of France? Answer in one sentence."


def test_models_list(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]


def test_chat_greedy_answers_and_counts_usage_exactly(ask: Ask, tokenizer: PreTrainedTokenizerBase) -> None:
    r = ask(Q, max_tokens=40)
    choice = r.choices[0]
    assert choice.message.content is not None and r.usage is not None
    assert "Paris" in choice.message.content
    assert choice.finish_reason == "stop"
    prompt_ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": Q}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert r.usage.prompt_tokens == len(prompt_ids)
    # Re-tokenising the answer (plus the end-of-turn token) gives the tokens generated.
    answer_ids = tokenizer.encode(choice.message.content, add_special_tokens=False)
    assert r.usage.completion_tokens == len(answer_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_greedy_is_deterministic(ask: Ask) -> None:
    a = ask("Name three colours.", max_tokens=24).choices[0].message.content
    b = ask("Name three colours.", max_tokens=24).choices[0].message.content
    assert a == b and a


def test_streaming_joins_to_the_non_streamed_answer(client: openai.OpenAI, ask: Ask) -> None:
    whole = ask(Q, max_tokens=40).choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": Q}],
            max_tokens=40,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 3, "the answer must arrive in pieces"
    assert "".join(texts) == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_max_tokens_gives_finish_reason_length(ask: Ask) -> None:
    r = ask("Write a long story about a dragon.", max_tokens=7)
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 7
    r = ask("Write a long story about a dragon.", max_completion_tokens=5)
    assert r.usage is not None and r.usage.completion_tokens == 5


def test_stop_string_cuts_the_answer(ask: Ask) -> None:
    full = ask(Q, max_tokens=40).choices[0].message.content
    stop = "Paris"
    assert full is not None and stop in full
    r = ask(Q, max_tokens=40, stop=[stop, "zzz-never"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == full[: full.index(stop)]


def test_n_choices(ask: Ask) -> None:
    r = ask("Invent a name for a cat.", n=2, temperature=1.0, seed=7, max_tokens=12)
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.message.content for c in r.choices)
    assert r.choices[0].message.content != r.choices[1].message.content
    assert r.usage is not None and r.usage.completion_tokens <= 24


def test_seed_reproduces_sampled_answers(ask: Ask) -> None:
    a = ask("Invent a name for a dog.", temperature=1.0, top_p=0.95, seed=1234, max_tokens=16)
    b = ask("Invent a name for a dog.", temperature=1.0, top_p=0.95, seed=1234, max_tokens=16)
    others = {
        ask("Invent a name for a dog.", temperature=1.0, seed=s, max_tokens=16).choices[0].message.content
        for s in (1, 2, 3)
    }
    assert a.choices[0].message.content == b.choices[0].message.content
    assert len(others | {a.choices[0].message.content}) > 1, "different seeds should vary"


def test_completions_endpoint_and_streaming(client: openai.OpenAI) -> None:
    prompt = "The three primary colours are"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].text and r.choices[0].finish_reason in ("length", "stop")
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=12, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == r.choices[0].text
    batch = client.completions.create(
        model=MODEL, prompt=[prompt, "One plus one is"], max_tokens=4, temperature=0
    )
    assert [c.index for c in batch.choices] == [0, 1] and batch.choices[0].text == r.choices[0].text[
        : len(batch.choices[0].text)
    ]


def test_beam_search_extension(ask: Ask) -> None:
    r = ask(Q, max_tokens=20, extra_body={"use_beam_search": True, "best_of": 3})
    assert "Paris" in (r.choices[0].message.content or "")
