"""Fuzzing the HTTP API: schemathesis generates requests from the server's own OpenAPI document
(/openapi.json) and sends them to a real `chatmodel serve` process (a tiny random model, so thousands of
requests fit in CI). Every endpoint gets CHATMODEL_FUZZ_EXAMPLES requests (default 2,000; `make fuzz` sends
more): schema-valid ones and, for request bodies, schema-violating ones too, with the right key, a wrong one
or none. Any answer must be a 2xx of the right shape or an OpenAI-shaped 4xx; never a 5xx, a hang or a crash.
The Triton runtime (tritonserver + our front on the same tiny model) gets its POST endpoints fuzzed too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, GenerationMode
from schemathesis.core.errors import InvalidSchema
from schemathesis.core.result import Err, Ok

from chatmodel_serving.launch import ServerProcess
from tests.bench.soak import rss_mb
from tests.fuzz.tiny_model import write_tiny_model
from tests.tools import missing

EXAMPLES = int(os.environ.get("CHATMODEL_FUZZ_EXAMPLES", "2000"))
# The Triton runtime shares the API front; its request bodies go on to another backend, so only they are
# fuzzed there, with an eighth of the requests (tritonserver answers several times slower here).
TRITON_EXAMPLES = EXAMPLES // 8
# Both by default; one of them to reproduce a failure found in the other half faster.
MODES = os.environ.get("CHATMODEL_FUZZ_MODES", "positive,negative")
KEY, MODEL = "fuzz-key-0123", "tiny"
Operation = APIOperation[Any, Any, Any, Any]
OPERATIONS = [
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "GET /v1/models",
    "GET /health",
    "GET /ready",
    "GET /metrics",
]
POSTS = [op for op in OPERATIONS if op.startswith("POST")]
PROTECTED = ("/v1/",)
# Most requests carry the right key, so most reach the handlers; the rest must be refused with 401.
AUTH = st.sampled_from(["right"] * 8 + ["none", "wrong"])
# Noise schemathesis does not vary for operations without parameters: unknown query parameters.
NOISE = st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=16), max_size=3)
RESULTS: dict[str, dict[str, Any]] = {}


@contextlib.contextmanager
def serving(runtime: str, d: Path) -> Iterator[ServerProcess]:
    model = write_tiny_model(d / MODEL)
    (d / "keys").write_text(f"{KEY}\n")
    args = ["--served-model-name", MODEL, "--api-keys-file", str(d / "keys"), "--default-max-tokens", "8"]
    if runtime == "triton":
        if importlib.util.find_spec("pytriton") is None:
            missing("tritonserver", "make install")  # it comes with the triton extra
        from chatmodel_serving.triton.server import triton_front

        with triton_front(d, args, model=str(model), dtype="float32") as (tritonserver, srv):
            yield srv
            assert tritonserver.proc is not None and tritonserver.proc.poll() is None, "tritonserver died"
            assert srv.proc is not None and srv.proc.poll() is None, "the front died"
    else:
        args += ["--model", str(model), "--dtype", "float32"]
        with ServerProcess(args, log_path=d / "server.log") as srv:
            yield srv
            assert srv.proc is not None and srv.proc.poll() is None, "the server died"
    ours = {k: v for k, v in RESULTS.items() if k.startswith(runtime)}
    (d / "fuzz-results.json").write_text(json.dumps(ours, indent=2))
    print(f"\nfuzz ({runtime}):", json.dumps(ours))


@pytest.fixture(scope="module")
def pytorch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serving("pytorch", tmp_path_factory.mktemp("fuzz-pytorch")) as srv:
        yield srv


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serving("triton", tmp_path_factory.mktemp("fuzz-triton")) as srv:
        yield srv


def check(operation: str, response: Any, auth: str, stream: bool) -> None:
    """`response`: schemathesis' transport response (headers map to lists of values)."""
    status = response.status_code
    assert status < 500, f"{operation}: {status} {response.text[:300]}"
    if auth != "right" and operation.split()[1].startswith(PROTECTED):
        assert status == 401, f"{operation} without the right key: {status}"
    if 400 <= status < 500:
        error = response.json()["error"]
        assert isinstance(error["message"], str) and error["message"], error
        assert isinstance(error["type"], str) and "param" in error and "code" in error, error
    elif operation.startswith("POST"):
        if stream:
            assert not response.stream_cut_short, "the stream was not read to its end"
            assert response.headers["content-type"][0].startswith("text/event-stream")
            assert response.text.rstrip().endswith("data: [DONE]"), response.text[-200:]
        else:
            body = response.json()
            assert body["choices"], body

            # No token only when every answer ended at once (the model's first token was its end token).
            def empty(c: dict[str, Any]) -> bool:
                return not (c.get("text") or (c.get("message") or {}).get("content"))

            ended_at_once = all(c["finish_reason"] == "stop" and empty(c) for c in body["choices"])
            assert body["usage"]["completion_tokens"] >= 1 or ended_at_once, body


def fuzz(server: ServerProcess, op: Any, operation: str, mode: GenerationMode, examples: int) -> Counter[int]:
    statuses: Counter[int] = Counter()
    headers = {"right": {"Authorization": f"Bearer {KEY}"}, "wrong": {"Authorization": "Bearer nope"}}

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,  # a fixed seed: CI fuzzes the same requests every run
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode), auth=AUTH, noise=NOISE)
    def one(case: Any, auth: str, noise: dict[str, str]) -> None:
        if mode is GenerationMode.POSITIVE and isinstance(case.body, dict):
            case.body["model"] = MODEL  # a valid request names a served model; random names only 404
            # And follows the rules between fields that OpenAPI cannot state (each refused with a 400 of its
            # own, which the negative half and tests/serving check): tool_choice only beside tools, one guide.
            if "tools" not in case.body:
                case.body.pop("tool_choice", None)
            if "structured_outputs" in case.body:
                case.body.pop("response_format", None)
        stream = isinstance(case.body, dict) and case.body.get("stream") is True
        response = case.call(
            # Long: schemathesis stops reading a stream at the timeout (n x max_tokens on a slow runtime).
            base_url=server.base,
            headers=headers.get(auth, {}),
            params=noise or None,
            timeout=300,
        )
        statuses[response.status_code] += 1
        try:
            check(operation, response, auth, stream)
        except AssertionError as e:  # name the request: hypothesis prints an empty case
            raise AssertionError(f"{e}\nrequest body: {case.body!r:.3000}\nauth: {auth}") from None

    one()
    return statuses


@pytest.mark.parametrize("operation", OPERATIONS)
def test_fuzz_endpoint(pytorch: ServerProcess, operation: str) -> None:
    fuzz_endpoint(pytorch, "pytorch", operation, EXAMPLES)


@pytest.mark.parametrize("operation", POSTS)
def test_fuzz_triton_endpoint(triton: ServerProcess, operation: str) -> None:
    fuzz_endpoint(triton, "triton", operation, TRITON_EXAMPLES)


def schema_operation(result: Ok[Operation] | Err[InvalidSchema]) -> Operation:
    """One operation of the schema; one it cannot describe raises its InvalidSchema."""
    if isinstance(result, Err):
        raise result.err()
    return result.ok()


def fuzz_endpoint(server: ServerProcess, runtime: str, operation: str, examples: int) -> None:
    schema = schemathesis.openapi.from_url(f"{server.base}/openapi.json")
    # Read whole streams (schemathesis stops after 20 events by default): n choices x tokens can be more.
    schema.config.max_stream_events = 100_000
    ops = {
        f"{o.method.upper()} {o.path}": o for o in (schema_operation(r) for r in schema.get_all_operations())
    }
    op = ops[operation]
    start = time.monotonic()
    statuses: Counter[int] = Counter()
    if operation.startswith("POST"):  # bodies: half schema-valid, half schema-violating
        if "positive" in MODES:
            statuses += fuzz(server, op, operation, GenerationMode.POSITIVE, examples // 2)
        if "negative" in MODES:
            statuses += fuzz(server, op, operation, GenerationMode.NEGATIVE, examples - examples // 2)
    else:
        statuses += fuzz(server, op, operation, GenerationMode.POSITIVE, examples)
    sent = sum(statuses.values())
    assert server.proc is not None
    RESULTS[f"{runtime} {operation}"] = result = {
        "requests": sent,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": round(time.monotonic() - start, 1),
        "server_rss_mb": round(rss_mb(server.proc.pid)),
    }
    assert sent >= examples, result
    assert not [s for s in statuses if s >= 500], result
    assert httpx.get(f"{server.base}/ready").status_code == 200
    if operation.startswith("POST"):
        # A floor, not a target: random bodies that the schema allows now mostly break rules it cannot state
        # (tool messages' ids and JSON arguments, compilable guides and tool schemas): 5-7% answer 200
        # (2026-12-02: 142 of 2000 on pytorch, 13 of 250 on triton); fewer means validation refuses all.
        assert statuses[200] > examples // 40, "too few valid requests reached the engine"
