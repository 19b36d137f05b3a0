"""Versions through `chatmodel gateway`: a canary's share by weight, promotion and rollback without a
dropped request, a version scaled to zero started by the first request (held, then streamed), a start that
cannot happen answered 503 + Retry-After, and unknown models in OpenAI's shape."""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

from chatmodel_serving.launch import ServerProcess
from tests.serving.gateway.conftest import MODELS
from tests.serving.gateway.namespace import Emulator, GatewayProcess, Namespace, wait_for


def _ask(gateway: GatewayProcess, model: str) -> httpx.Response:
    body = {"model": model, "prompt": "hi", "max_tokens": 1}
    return httpx.post(gateway.url + "/completions", json=body, timeout=60)


def test_a_canary_gets_its_share_and_promotion_and_rollback_drop_nothing(
    gateway: GatewayProcess, namespace: Namespace, pods: list[ServerProcess]
) -> None:
    namespace.pods("canary", "v1", [p.port for p in pods[:3]])
    namespace.pods("canary", "v2", [pods[3].port])
    namespace.chatmodel("canary", "v1", canary="v2", percent=10)
    wait_for(lambda: _ask(gateway, "canary").status_code == 200, what="the gateway serving canary")

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: _ask(gateway, "canary"), range(1000)))
    assert {r.status_code for r in answers} == {200}
    share = collections.Counter(r.headers["x-chatmodel-version"] for r in answers)
    print(f"canary share over 1000 requests: {share['v2'] / 10:.1f}% (asked for 10%)")
    assert 70 <= share["v2"] <= 130, share

    failures: list[str] = []
    seen: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            r = _ask(gateway, "canary")
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text}")
            else:
                seen.append(r.headers["x-chatmodel-version"])

    senders = [threading.Thread(target=traffic) for _ in range(4)]
    for t in senders:
        t.start()
    try:
        namespace.chatmodel("canary", "v2")  # promoted: v2 serves everything
        time.sleep(1.5)
        mark = len(seen)
        time.sleep(1.0)
        assert set(seen[mark:]) == {"v2"}, collections.Counter(seen[mark:])
        namespace.chatmodel("canary", "v1")  # rolled back
        time.sleep(1.5)
        mark = len(seen)
        time.sleep(1.0)
        assert set(seen[mark:]) == {"v1"}, collections.Counter(seen[mark:])
    finally:
        stop.set()
        for t in senders:
            t.join()
    assert not failures, failures[:3]


def test_a_version_at_zero_replicas_starts_on_the_first_request_which_then_streams(
    gateway: GatewayProcess, namespace: Namespace, tiny: Path, folder: Path
) -> None:
    namespace.deployment("zero", "v1", replicas=0)
    namespace.chatmodel("zero", "v1")
    wait_for(lambda: "zero" in httpx.get(gateway.url.removesuffix("/v1") + "/ready").text, what="zero listed")
    client = openai.OpenAI(base_url=gateway.url, api_key="none", max_retries=0, timeout=120)
    got: dict[str, float | str] = {}

    def stream() -> None:
        began = time.monotonic()
        chunks = client.chat.completions.create(
            model="zero", messages=[{"role": "user", "content": "hello"}], max_tokens=4, stream=True
        )
        text = ""
        for chunk in chunks:
            got.setdefault("first", time.monotonic())
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
        got["text"], got["began"] = text, began

    asker = threading.Thread(target=stream)
    asker.start()
    wait_for(lambda: namespace.replicas("zero-v1") == 1, what="the gateway asking for one replica")
    assert "first" not in got  # held: no byte before a pod answers
    # The Deployment controller's and kubelet's part: a pod starts and its EndpointSlice turns ready.
    args = ["--dtype", "float32"] + [
        a for m in MODELS for a in ("--model", str(tiny), "--served-model-name", m)
    ]
    with ServerProcess(args, log_path=folder / "cold-pod.log") as pod:
        published = time.monotonic()
        namespace.pods("zero", "v1", [pod.port])
        asker.join(120)
        assert not asker.is_alive()
        assert float(got["first"]) >= published
        assert isinstance(got["text"], str)
        print(
            f"cold start through the gateway: {float(got['first']) - float(got['began']):.1f}s to first token"
        )
        namespace.delete("/apis/discovery.k8s.io/v1/namespaces/team-a/endpointslices", f"zero-v1-{pod.port}")


def test_a_start_that_cannot_happen_is_a_503_with_retry_after(
    gateway: GatewayProcess, namespace: Namespace, emulator: Emulator, folder: Path
) -> None:
    namespace.chatmodel("missing", "v1")  # no Deployment to scale: the scale call is refused
    r = wait_for(lambda: (x := _ask(gateway, "missing")).status_code != 404 and x, what="missing listed")
    assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0, r.text
    assert r.json()["error"]["type"] == "service_unavailable"

    namespace.deployment("stuck", "v1", replicas=0)  # scaled up, but no pod ever gets ready
    namespace.chatmodel("stuck", "v1")
    with GatewayProcess(emulator.url, ["--cold-start-timeout", "2"], folder / "gateway-short.log") as short:
        began = time.monotonic()
        r = _ask(short, "stuck")
        assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0, r.text
        assert 2 <= time.monotonic() - began < 30
        assert namespace.replicas("stuck-v1") == 1


def test_unknown_models_and_bad_bodies_get_openai_errors(gateway: GatewayProcess) -> None:
    r = _ask(gateway, "no-such-model")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(gateway.url + "/chat/completions", content=b"{not json", timeout=10)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = httpx.post(gateway.url + "/chat/completions", json={"messages": []}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
