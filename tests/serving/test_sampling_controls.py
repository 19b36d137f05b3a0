"""Logprobs and the sampling controls (issue 23) through the official client, on the real server: greedy
logprobs match a plain-transformers forward pass of the same model in float32, logit_bias, penalties,
min_tokens, stop_token_ids and top_k move the output the way they should, and bad values are 400s naming the
field. On both runtimes: the Triton runtime carries them to the same engine and its logprobs back."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest
import torch

from chatmodel_serving.launch import ServerProcess
from chatmodel_serving.models import resolve_source
from tests.serving.helpers import API_KEY, MODEL

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Q = "What is the capital of France? Answer in one sentence."
TEXT_PROMPT = "The three primary colours are"
TOLERANCE = 1e-3
TOP = 5
STEPS = 12


@dataclass
class Greedy:
    """A reference greedy decode: token ids, their logprobs and the top (id, logprob) pairs at each step."""

    ids: list[int]
    logprobs: list[float]
    top: list[list[tuple[int, float]]]


@pytest.fixture(scope="module")
def reference(tokenizer: PreTrainedTokenizerBase) -> Iterator[Any]:
    """Greedy decoding with plain transformers in float32 (its own KV cache), once per prompt."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        resolve_source("builtin://smollm2-135m"), dtype=torch.float32
    )
    model.eval()
    done: dict[tuple[int, ...], Greedy] = {}

    def decode(prompt: list[int]) -> Greedy:
        if tuple(prompt) in done:
            return done[tuple(prompt)]
        out, ids, past = Greedy([], [], []), torch.tensor([prompt]), None
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the server shares these cores: more threads only contend
        try:
            with torch.inference_mode():
                for _ in range(STEPS):
                    step = model(input_ids=ids, past_key_values=past, use_cache=True)
                    past = step.past_key_values
                    lp = torch.log_softmax(step.logits[0, -1].float(), -1)
                    token = int(lp.argmax())
                    if token == tokenizer.eos_token_id:
                        break
                    values, top = lp.topk(TOP)
                    out.ids.append(token)
                    out.logprobs.append(float(lp[token]))
                    out.top.append(list(zip(top.tolist(), values.tolist(), strict=True)))
                    ids = torch.tensor([[token]])
        finally:
            torch.set_num_threads(threads)
        done[tuple(prompt)] = out
        return out

    yield decode


def chat_prompt(tokenizer: PreTrainedTokenizerBase, content: str) -> list[int]:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    return list(ids)


def piece(tokenizer: PreTrainedTokenizerBase, token: int) -> str:
    return str(tokenizer.decode([token], skip_special_tokens=False, clean_up_tokenization_spaces=False))


def chat(client: openai.OpenAI, content: str, **kw: Any) -> Any:
    kw.setdefault("max_tokens", STEPS)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], **kw)


def check_against(
    tokenizer: PreTrainedTokenizerBase,
    ref: Greedy,
    tokens: list[str],
    logprobs: list[float],
    tops: list[list[tuple[str, float]]],
) -> None:
    assert tokens == [piece(tokenizer, t) for t in ref.ids]
    for got, expected in zip(logprobs, ref.logprobs, strict=True):
        assert abs(got - expected) < TOLERANCE, (got, expected)
    for token, top, want in zip(tokens, tops, ref.top, strict=True):
        values = [v for _, v in top]
        assert values == sorted(values, reverse=True)
        assert token in [t for t, _ in top]  # greedy: the sampled token is the most likely
        assert [t for t, _ in top[:TOP]] == [piece(tokenizer, t) for t, _ in want][: len(top)]
        for (_, got_v), (_, want_v) in zip(top, want, strict=False):
            assert abs(got_v - want_v) < TOLERANCE


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_chat_logprobs_match_a_reference_forward_pass(
    client: openai.OpenAI,
    tokenizer: PreTrainedTokenizerBase,
    reference: Any,
    stream: bool,
) -> None:
    ref = reference(chat_prompt(tokenizer, Q))
    content: list[Any] = []
    if stream:
        chunks = list(chat(client, Q, logprobs=True, top_logprobs=TOP, stream=True))
        for c in chunks:
            if c.choices and c.choices[0].logprobs and c.choices[0].logprobs.content:
                content += c.choices[0].logprobs.content
        assert sum(1 for c in chunks if c.choices and c.choices[0].logprobs) > 1, "logprobs arrive per chunk"
    else:
        choice = chat(client, Q, logprobs=True, top_logprobs=TOP).choices[0]
        assert choice.logprobs is not None and choice.logprobs.content is not None
        content = choice.logprobs.content
        assert "".join(c.token for c in content) == choice.message.content
    for c in content:
        assert c.bytes == list(c.token.encode()) and len(c.top_logprobs) == TOP
    check_against(
        tokenizer,
        ref,
        [c.token for c in content],
        [c.logprob for c in content],
        [[(t.token, t.logprob) for t in c.top_logprobs] for c in content],
    )


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_completion_logprobs_match_a_reference_forward_pass(
    client: openai.OpenAI,
    tokenizer: PreTrainedTokenizerBase,
    reference: Any,
    stream: bool,
) -> None:
    ref = reference(tokenizer.encode(TEXT_PROMPT, add_special_tokens=False))
    kw: dict[str, Any] = {"max_tokens": STEPS, "temperature": 0, "logprobs": TOP}
    tokens: list[str] = []
    values: list[float] = []
    tops: list[dict[str, float]] = []
    offsets: list[int] = []
    if stream:
        for c in client.completions.create(model=MODEL, prompt=TEXT_PROMPT, stream=True, **kw):
            lp = c.choices[0].logprobs if c.choices else None
            if lp and lp.tokens:
                tokens += lp.tokens
                values += [v or 0.0 for v in lp.token_logprobs or []]
                tops += [t or {} for t in lp.top_logprobs or []]
                offsets += lp.text_offset or []
    else:
        choice = client.completions.create(model=MODEL, prompt=TEXT_PROMPT, **kw).choices[0]
        lp = choice.logprobs
        assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs and lp.text_offset
        tokens, values = lp.tokens, [v or 0.0 for v in lp.token_logprobs]
        tops, offsets = [t or {} for t in lp.top_logprobs], lp.text_offset
        assert "".join(tokens) == choice.text
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    check_against(tokenizer, ref, tokens, values, [list(t.items()) for t in tops])


def test_logit_bias_bans_and_forces_tokens(
    client: openai.OpenAI, tokenizer: PreTrainedTokenizerBase, reference: Any
) -> None:
    ref = reference(chat_prompt(tokenizer, Q))
    banned = ref.ids[0]  # the first token greedy decoding produces
    r = chat(client, Q, logprobs=True, logit_bias={str(banned): -100})
    content = r.choices[0].logprobs.content
    assert content and piece(tokenizer, banned) not in [c.token for c in content]
    forced = tokenizer.encode(" banana", add_special_tokens=False)[0]
    r = chat(client, Q, max_tokens=4, logprobs=True, logit_bias={str(forced): 100})
    assert [c.token for c in r.choices[0].logprobs.content] == [piece(tokenizer, forced)] * 4
    # logprobs stay those of the raw distribution (as vLLM's default): the bias does not show in them
    assert r.choices[0].logprobs.content[0].logprob < -1


def repeats(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return len(ids) - len(set(ids))


def together(client: openai.OpenAI, asks: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """Chat requests sent at once: the engine runs them in the same decode steps, each row as it asks."""
    with ThreadPoolExecutor(len(asks)) as pool:
        return list(pool.map(lambda a: chat(client, a[0], **a[1]), asks))


def test_penalties_reduce_repeats(client: openai.OpenAI, tokenizer: PreTrainedTokenizerBase) -> None:
    apple, poem = "Repeat the word 'apple' 20 times.", "Write a short poem about the sea."
    kw: dict[str, Any] = {"max_tokens": 30}
    answers = together(
        client,
        [
            (apple, kw),
            (apple, {**kw, "frequency_penalty": 2.0}),
            (apple, {**kw, "extra_body": {"repetition_penalty": 2.0}}),
            (apple, {**kw, "presence_penalty": 2.0}),
            (poem, kw),
            (poem, {**kw, "presence_penalty": 2.0}),
        ],
    )
    plain, frequency, repetition, presence, poem_plain, poem_presence = (
        a.choices[0].message.content or "" for a in answers
    )
    assert repeats(tokenizer, plain) > 10, plain
    for text in (frequency, repetition):
        assert repeats(tokenizer, text) < repeats(tokenizer, plain) / 2, text
    # presence_penalty takes its 2 once per token, however often it came: not enough against this model's
    # certainty about "apple", but it moves an open answer away from the words it used
    assert repeats(tokenizer, presence) <= repeats(tokenizer, plain)
    assert poem_presence != poem_plain, poem_plain
    assert repeats(tokenizer, poem_presence) <= repeats(tokenizer, poem_plain), (poem_plain, poem_presence)


def test_min_tokens_stop_token_ids_and_top_k(
    client: openai.OpenAI, tokenizer: PreTrainedTokenizerBase, reference: Any
) -> None:
    short = chat(client, "Say hi.", max_tokens=64)
    assert short.choices[0].finish_reason == "stop" and short.usage is not None
    n = short.usage.completion_tokens + 8
    ref = reference(chat_prompt(tokenizer, Q))
    greedy = tokenizer.decode(ref.ids, skip_special_tokens=True)  # what the server answers (test above)
    stop_at = 3
    longer, stopped, top_k, min_p = together(
        client,
        [
            ("Say hi.", {"max_tokens": n, "extra_body": {"min_tokens": n}}),
            (Q, {"extra_body": {"stop_token_ids": [ref.ids[stop_at]]}}),
            (Q, {"temperature": 1.0, "seed": 3, "extra_body": {"top_k": 1}}),
            (Q, {"temperature": 1.0, "seed": 3, "extra_body": {"min_p": 1.0}}),
        ],
    )
    assert longer.usage is not None and longer.usage.completion_tokens == n
    assert longer.choices[0].finish_reason == "length"

    first = ref.ids.index(ref.ids[stop_at])
    assert stopped.choices[0].finish_reason == "stop" and stopped.usage is not None
    assert stopped.usage.completion_tokens == first
    assert stopped.choices[0].message.content == tokenizer.decode(ref.ids[:first], skip_special_tokens=True)

    assert top_k.choices[0].message.content == greedy
    assert min_p.choices[0].message.content == greedy


MSG = [{"role": "user", "content": "hi"}]
CHAT_BODY = {"model": MODEL, "messages": MSG, "max_tokens": 2}
TEXT_BODY = {"model": MODEL, "prompt": "a", "max_tokens": 2}
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/chat/completions", {"top_logprobs": 3}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": False, "top_logprobs": 3}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/completions", {"logprobs": 21}, "logprobs"),
    ("/v1/chat/completions", {"presence_penalty": 2.5}, "presence_penalty"),
    ("/v1/completions", {"frequency_penalty": -3}, "frequency_penalty"),
    ("/v1/chat/completions", {"logit_bias": {"abc": 1}}, "logit_bias"),
    ("/v1/chat/completions", {"logit_bias": {"-5": 1}}, "logit_bias"),
    ("/v1/chat/completions", {"logit_bias": {"5": 101}}, "logit_bias"),
    ("/v1/completions", {"logit_bias": {"99999999": 1}}, "logit_bias"),
    ("/v1/chat/completions", {"repetition_penalty": 0}, "repetition_penalty"),
    ("/v1/chat/completions", {"top_k": -2}, "top_k"),
    ("/v1/chat/completions", {"min_p": 1.5}, "min_p"),
    ("/v1/chat/completions", {"min_tokens": -1}, "min_tokens"),
    ("/v1/chat/completions", {"min_tokens": 3}, "min_tokens"),  # more than max_tokens
    ("/v1/completions", {"stop_token_ids": [99999999]}, "stop_token_ids"),
    ("/v1/chat/completions", {"use_beam_search": True, "logprobs": True}, "logprobs"),
    ("/v1/completions", {"use_beam_search": True, "frequency_penalty": 1}, "frequency_penalty"),
]


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as c:
        yield c


@pytest.mark.parametrize(
    ("path", "fields", "param"), BAD, ids=[f"{p.rsplit('/', 1)[1]}-{f}" for p, f, _ in BAD]
)
def test_bad_values_are_400s_naming_the_field(
    http: httpx.Client, path: str, fields: dict[str, Any], param: str
) -> None:
    body = {**(CHAT_BODY if "chat" in path else TEXT_BODY), **fields}
    r = http.post(path, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error", err


def test_openapi_describes_the_new_fields(http: httpx.Client) -> None:
    schemas = http.get("/openapi.json").json()["components"]["schemas"]
    chat_fields, text_fields = (
        schemas["ChatCompletionRequest"]["properties"],
        schemas["CompletionRequest"]["properties"],
    )
    common = ["presence_penalty", "frequency_penalty", "logit_bias", "repetition_penalty", "top_k", "min_p"]
    for name in [*common, "min_tokens", "stop_token_ids", "logprobs"]:
        assert name in chat_fields and name in text_fields, name
    assert "top_logprobs" in chat_fields
    assert text_fields["logprobs"]["anyOf"][0]["maximum"] == 20
