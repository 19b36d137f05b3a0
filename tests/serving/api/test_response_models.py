"""The response models send exactly the JSON the API has always sent: null where OpenAI sends null
(logprobs, a streamed piece's finish_reason), nothing where it sends nothing (a chunk's usage until the
last one, the opening chunk's finish_reason, a delta's role after the first)."""

from __future__ import annotations

from typing import Any

from chatmodel_serving.api.protocol import Usage
from chatmodel_serving.api.responses import CHAT, TEXT
from chatmodel_serving.engine.types import TokenLogprob


def test_whole_answers() -> None:
    chat = CHAT.response(
        id="c", created=1, model="m", choices=[CHAT.choice(0, "hi", "stop", None)], usage=Usage.of(3, 2)
    )
    assert chat.body() == {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    text = TEXT.response(
        id="t", created=1, model="m", choices=[TEXT.choice(0, "x", "length", None)], usage=Usage.of(1, 1)
    )
    assert text.body()["object"] == "text_completion"
    assert text.body()["choices"] == [{"index": 0, "text": "x", "logprobs": None, "finish_reason": "length"}]


def test_stream_chunks() -> None:
    assert CHAT.opening is not None
    opening = CHAT.chunk(id="c", created=1, model="m", choices=[CHAT.opening(0)])
    assert opening.body() == {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}],
    }
    piece = CHAT.chunk(id="c", created=1, model="m", choices=[CHAT.delta(0, "a", None, None)])
    assert piece.body()["choices"] == [
        {"index": 0, "delta": {"content": "a"}, "logprobs": None, "finish_reason": None}
    ]
    last = TEXT.chunk(id="t", created=1, model="m", choices=[], usage=Usage.of(1, 2))
    assert list(last.body()) == ["id", "object", "created", "model", "choices", "usage"]
    assert TEXT.chunk(id="t", created=1, model="m", choices=[TEXT.delta(0, "b", "stop", None)]).body()[
        "choices"
    ] == [{"index": 0, "text": "b", "logprobs": None, "finish_reason": "stop"}]


class Letters:
    """A tokenizer stub: token i is the i-th letter."""

    def batch_decode(self, ids: list[list[int]], **_: Any) -> list[str]:
        return [chr(ord("a") + i[0]) for i in ids]


def test_logprobs_shapes() -> None:
    lps = [TokenLogprob(1, -0.5, [(1, -0.5), (2, -1.5)]), TokenLogprob(0, -2.0, [(2, -0.1)])]
    chat, _ = CHAT.logprobs(Letters(), lps, 0)
    assert chat.body() == {
        "content": [
            {
                "token": "b",
                "logprob": -0.5,
                "bytes": [98],
                "top_logprobs": [
                    {"token": "b", "logprob": -0.5, "bytes": [98]},
                    {"token": "c", "logprob": -1.5, "bytes": [99]},
                ],
            },
            {
                "token": "a",
                "logprob": -2.0,
                "bytes": [97],
                "top_logprobs": [{"token": "c", "logprob": -0.1, "bytes": [99]}],
            },
        ]
    }
    text, offset = TEXT.logprobs(Letters(), lps, 3)
    assert offset == 5
    assert text.body() == {
        "tokens": ["b", "a"],
        "token_logprobs": [-0.5, -2.0],
        "top_logprobs": [{"b": -0.5, "c": -1.5}, {"c": -0.1, "a": -2.0}],  # the sampled one always there
        "text_offset": [3, 4],
    }
