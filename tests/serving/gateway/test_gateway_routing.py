"""`chatmodel gateway` in front of real serving processes, with the namespace's ChatModels and
EndpointSlices in kmock's emulator: prefix affinity with the load still spread, a canary's share by
version, promotion and rollback without a dropped request, unknown models and bad bodies answered in
OpenAI's shape."""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai

from chatmodel_serving.launch import ServerProcess
from tests.serving.gateway.namespace import GatewayProcess, Namespace, wait_for

USERS, TURNS = 16, 5


def _client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url, api_key="none", max_retries=0, timeout=120)


def _served(gateway: GatewayProcess, model: str) -> bool:
    r = httpx.post(gateway.url + "/completions", json={"model": model, "prompt": "hi", "max_tokens": 1})
    return r.status_code == 200


def test_a_chat_stays_on_its_pod_and_no_pod_takes_much_more_than_its_share(
    gateway: GatewayProcess, namespace: Namespace, pods: list[ServerProcess]
) -> None:
    namespace.chatmodel("chat", "v1")
    namespace.pods("chat", "v1", [p.port for p in pods[:3]])
    wait_for(lambda: _served(gateway, "chat"), what="the gateway serving model chat")
    client = _client(gateway)

    def converse(user: int) -> None:
        opening = f"I am user {user}. " + "Tell me about tides. " * 8
        history: list[Any] = [{"role": "user", "content": opening}]
        for turn in range(TURNS):
            answer = client.chat.completions.create(
                model="chat", messages=history, max_tokens=8, temperature=0,
                extra_headers={"x-request-id": f"affinity-u{user}-t{turn}"},
            )  # fmt: skip
            history += [
                {"role": "assistant", "content": answer.choices[0].message.content or ""},
                {"role": "user", "content": f"And what about turn {turn}?"},
            ]

    with ThreadPoolExecutor(USERS) as pool:
        list(pool.map(converse, range(USERS)))

    routed = {
        line["request_id"]: line["pod"]
        for line in gateway.log_lines()
        if str(line.get("request_id", "")).startswith("affinity-")
    }
    assert len(routed) == USERS * TURNS, "every turn answered and logged"
    by_user = collections.defaultdict(list)
    for rid, pod in routed.items():
        by_user[rid.split("-")[1]].append(pod)
    on_home = sum(collections.Counter(p).most_common(1)[0][1] for p in by_user.values())
    per_pod = collections.Counter(routed.values())
    print(f"turns on their chat's pod: {on_home}/{len(routed)}; requests per pod: {sorted(per_pod.values())}")
    # Round-robin over 3 pods would keep about 1/3 + of a chat's turns together; affinity keeps most.
    assert on_home / len(routed) >= 0.8, by_user
    assert len(per_pod) == 3, per_pod
    mean = len(routed) / 3
    assert max(per_pod.values()) <= 1.5 * mean, per_pod
