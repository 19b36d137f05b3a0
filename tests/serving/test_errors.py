"""Bad requests get the right 4xx with an OpenAI error body; nothing a client sends gives a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from chatmodel_serving.launch import ServerProcess
from tests.serving.helpers import API_KEY, MODEL

MSG = [{"role": "user", "content": "hi"}]
LONG = "word " * 9000  # more tokens than the 8,192-token context

CASES = [
    # (name, method, path, body or raw bytes, headers override, status, param)
    (
        "wrong type for content",
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": 5}]},
        400,
        "messages.0.content",
    ),
    (
        "wrong type for temperature",
        "/v1/chat/completions",
        {"model": MODEL, "messages": MSG, "temperature": "hot"},
        400,
        "temperature",
    ),
    (
        "temperature out of range",
        "/v1/chat/completions",
        {"model": MODEL, "messages": MSG, "temperature": 5},
        400,
        "temperature",
    ),
    (
        "seed beyond int64 (found by the fuzzer: was a 500)",
        "/v1/chat/completions",
        {"model": MODEL, "messages": MSG, "seed": 2**70},
        400,
        "seed",
    ),
    ("empty messages", "/v1/chat/completions", {"model": MODEL, "messages": []}, 400, "messages"),
    ("missing messages", "/v1/chat/completions", {"model": MODEL}, 400, "messages"),
    (
        "unknown role",
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]},
        400,
        "messages.0.role",
    ),
    (
        "negative max_tokens",
        "/v1/chat/completions",
        {"model": MODEL, "messages": MSG, "max_tokens": -5},
        400,
        "max_tokens",
    ),
    (
        "zero max_tokens",
        "/v1/completions",
        {"model": MODEL, "prompt": "a", "max_tokens": 0},
        400,
        "max_tokens",
    ),
    (
        "huge max_tokens",
        "/v1/chat/completions",
        {"model": MODEL, "messages": MSG, "max_tokens": 10**9},
        400,
        "max_tokens",
    ),
    ("n too large", "/v1/chat/completions", {"model": MODEL, "messages": MSG, "n": 1000}, 400, "n"),
    (
        "too many stops",
        "/v1/chat/completions",
        {"model": MODEL, "messages": MSG, "stop": list("abcde")},
        400,
        "stop",
    ),
    (
        "a tool of an unknown type",
        "/v1/chat/completions",
        {"model": MODEL, "messages": MSG, "tools": [{"type": "x"}]},
        400,
        "tools.0.type",
    ),
    (
        "a field named like a type (found by hypothesis: the param was lost)",
        "/v1/completions",
        {"model": MODEL, "prompt": "x", "stream": -1},
        400,
        "stream",
    ),
    (
        "unknown response_format type",
        "/v1/chat/completions",
        {"model": MODEL, "messages": MSG, "response_format": {"type": "yaml"}},
        400,
        "response_format.type",
    ),
    (
        "top_logprobs without logprobs",
        "/v1/chat/completions",
        {"model": MODEL, "messages": MSG, "top_logprobs": 2},
        400,
        "top_logprobs",
    ),
    ("unknown model", "/v1/chat/completions", {"model": "gpt-9", "messages": MSG}, 404, "model"),
    ("unknown model, completions", "/v1/completions", {"model": "gpt-9", "prompt": "x"}, 404, "model"),
    ("empty prompt", "/v1/completions", {"model": MODEL, "prompt": ""}, 400, "prompt"),
    (
        "token id out of vocabulary",
        "/v1/completions",
        {"model": MODEL, "prompt": [1, 99999999]},
        400,
        "prompt",
    ),
    (
        "over-long chat prompt",
        "/v1/chat/completions",
        {"model": MODEL, "messages": [{"role": "user", "content": LONG}]},
        413,
        "messages",
    ),
    ("over-long completion prompt", "/v1/completions", {"model": MODEL, "prompt": LONG}, 413, "prompt"),
    ("body is a list", "/v1/chat/completions", [1, 2], 400, None),
]


def check_error(r: httpx.Response, status: int, param: str | None = "-") -> dict[str, Any]:
    assert r.status_code == status, r.text
    err: dict[str, Any] = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param != "-":
        assert err["param"] == param, err
    return err


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as c:
        yield c


@pytest.mark.parametrize(("name", "path", "body", "status", "param"), CASES, ids=[c[0] for c in CASES])
def test_bad_request(
    http: httpx.Client, name: str, path: str, body: object, status: int, param: str | None
) -> None:
    check_error(http.post(path, json=body), status, param)


def test_invalid_json(http: httpx.Client) -> None:
    err = check_error(
        http.post(
            "/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
        ),
        400,
    )
    assert "JSON" in err["message"]


def test_missing_and_wrong_key(server: ServerProcess) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {API_KEY}"}):
        r = httpx.post(
            f"{server.base}/v1/chat/completions", json={"model": MODEL, "messages": MSG}, headers=headers
        )
        assert check_error(r, 401)["code"] == "invalid_api_key"
    assert httpx.get(f"{server.base}/v1/models").status_code == 401
    # Probes and metrics stay open for the kubelet and Prometheus.
    assert httpx.get(f"{server.base}/health").status_code == 200
    assert httpx.get(f"{server.base}/ready").status_code == 200


def test_unknown_route_and_method(http: httpx.Client) -> None:
    check_error(http.get("/v1/nothing"), 404)
    check_error(http.get("/v1/chat/completions"), 405)


def test_streaming_errors_are_reported_before_the_stream(http: httpx.Client) -> None:
    r = http.post("/v1/chat/completions", json={"model": "gpt-9", "messages": MSG, "stream": True})
    check_error(r, 404, "model")


@pytest.mark.parametrize(
    "sampling",
    [
        {"top_p": 5e-324},
        {"temperature": 1e-300},
        {"top_p": 1e-5, "n": 3},
        {"seed": 2**63 - 1, "n": 2},
        {"seed": -(2**63)},
    ],
)
def test_extreme_sampling_values_still_answer(http: httpx.Client, sampling: dict[str, float]) -> None:
    """Found by the fuzzer: a denormal top_p kept no token, a ~0 temperature overflowed the softmax, an
    int64 seed overflowed (the engine's generator takes uint64; choice i's seed is seed + i)."""
    r = http.post("/v1/chat/completions", json={"model": MODEL, "messages": MSG, "max_tokens": 3, **sampling})
    assert r.status_code == 200, r.text
    assert all(c["message"]["content"] for c in r.json()["choices"])


def test_prompts_that_encode_to_no_token_still_answer(http: httpx.Client) -> None:
    """Found by the fuzzer: some control characters encode to no token at all; in a list of prompts that
    reached the engine as an empty prompt (a 500)."""
    for prompt in ("\x04", ["\x04\x06", "Hi"]):
        r = http.post("/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 2})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] >= 1


def test_a_request_larger_than_the_queue_is_a_400_not_a_429(http: httpx.Client) -> None:
    """Found by the fuzzer: prompts x n beyond the queue's bound got 429 "retry shortly", forever."""
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": ["a"] * 9, "n": 16, "max_tokens": 1})
    check_error(r, 400, "n")
    assert "144 sequences" in r.json()["error"]["message"]
