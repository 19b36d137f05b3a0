"""The response models send exactly the JSON the API has always sent: null where OpenAI sends null
(logprobs, a streamed piece's finish_reason), nothing where it sends nothing (a chunk's usage until the
last one, the opening chunk's finish_reason, a delta's role after the first)."""

from __future__ import annotations

from chatmodel_serving.api.protocol import Usage
from chatmodel_serving.api.responses import CHAT, TEXT


def test_whole_answers() -> None:
    chat = CHAT.response(
        id="c", created=1, model="m", choices=[CHAT.choice(0, "hi", "stop")], usage=Usage.of(3, 2)
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
        id="t", created=1, model="m", choices=[TEXT.choice(0, "x", "length")], usage=Usage.of(1, 1)
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
    piece = CHAT.chunk(id="c", created=1, model="m", choices=[CHAT.delta(0, "a", None)])
    assert piece.body()["choices"] == [
        {"index": 0, "delta": {"content": "a"}, "logprobs": None, "finish_reason": None}
    ]
    last = TEXT.chunk(id="t", created=1, model="m", choices=[], usage=Usage.of(1, 2))
    assert list(last.body()) == ["id", "object", "created", "model", "choices", "usage"]
    assert TEXT.chunk(id="t", created=1, model="m", choices=[TEXT.delta(0, "b", "stop")]).body()[
        "choices"
    ] == [{"index": 0, "text": "b", "logprobs": None, "finish_reason": "stop"}]
