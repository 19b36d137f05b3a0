"""Multi-LoRA through the real server (`chatmodel serve`) and the official openai client: an adapter from
--lora-modules and one loaded at run time through vLLM's /v1/load_lora_adapter answer as each adapter merged
and served alone; /v1/models lists them with their parent; bad adapters get a 400 naming the adapter and the
reason while the others keep serving; unloading takes a name off; the routes need the API key and the
absence of --no-runtime-lora; the metrics carry each adapter's name and the slots."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from chatmodel_serving.launch import ServerProcess
from tests.fuzz.tiny_model import write_tiny_model
from tests.serving.helpers import API_KEY, metric
from tests.serving.lora.adapters import MAX_TOKENS, QUESTIONS, WORDS, train_adapter

pytestmark = pytest.mark.slow

BASE = "tiny-base"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def lora_server(
    tiny_base: Path, adapters: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    d = tmp_path_factory.mktemp("lora-server")
    keys = d / "keys"
    keys.write_text(f"{API_KEY}\n")
    first = WORDS[0]
    args = ["--model", str(tiny_base), "--served-model-name", BASE, "--dtype", "float32"]
    args += ["--api-keys-file", str(keys), "--lora-modules", f"{first}={adapters[first]}"]
    args += ["--max-loras", "4", "--max-lora-rank", "8"]
    with ServerProcess(args, log_path=d / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def client(lora_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=lora_server.url, api_key=API_KEY, max_retries=0)


def post(srv: ServerProcess, route: str, body: Mapping[str, object], auth: bool = True) -> httpx.Response:
    return httpx.post(f"{srv.url}/{route}", json=body, headers=AUTH if auth else {}, timeout=60)


def ask(client: openai.OpenAI, model: str, question: str) -> str:
    out = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        max_tokens=MAX_TOKENS,
        temperature=0.0,
    )
    return out.choices[0].message.content or ""


def test_adapters_from_the_command_line_and_loaded_at_run_time_answer_as_merged(
    lora_server: ServerProcess,
    client: openai.OpenAI,
    adapters: dict[str, Path],
    merged_answers: dict[str, list[str]],
) -> None:
    second = WORDS[1]
    r = post(lora_server, "load_lora_adapter", {"lora_name": second, "lora_path": str(adapters[second])})
    assert r.status_code == 200 and r.text == f"Success: LoRA adapter '{second}' added successfully.", r.text
    cards = {m.id: m.model_dump() for m in client.models.list().data}
    assert cards[BASE]["parent"] is None
    for word in WORDS[:2]:
        assert cards[word]["parent"] == BASE and cards[word]["root"] == str(adapters[word])
        for i, question in enumerate(QUESTIONS[:2]):
            assert ask(client, word, question) == merged_answers[word][i], (word, question)
    text = httpx.get(f"{lora_server.url.removesuffix('/v1')}/metrics", timeout=10).text
    assert metric(text, "chatmodel_lora_adapters_loaded", model=BASE) == 2
    assert metric(text, "chatmodel_lora_slots", model=BASE) == 4
    assert metric(text, "chatmodel_lora_loads_total", model=BASE, result="loaded") == 2
    assert metric(text, "chatmodel_lora_load_seconds_count", model=BASE) == 2
    assert (
        metric(text, "chatmodel_request_success_total", model=second, finished_reason="length")
        + metric(text, "chatmodel_request_success_total", model=second, finished_reason="stop")
        == 2
    )  # the adapter's own series


def test_bad_adapters_get_a_400_naming_them_and_the_others_keep_serving(
    lora_server: ServerProcess,
    client: openai.OpenAI,
    tiny_base: Path,
    merged_answers: dict[str, list[str]],
    tmp_path: Path,
) -> None:
    other = write_tiny_model(tmp_path / "other-base", hidden_size=32)
    cases = {
        "foreign": (train_adapter(other, tmp_path, "foreign"), "does not fit this base model"),
        "high-rank": (
            train_adapter(tiny_base, tmp_path, "steep", rank=16),
            "rank 16 .* above --max-lora-rank 8",
        ),
        "missing": (tmp_path / "nowhere", "no such folder"),
        BASE: (tmp_path / "nowhere", "a model of that name is already served"),
    }
    for name, (path, reason) in cases.items():
        r = post(lora_server, "load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        assert r.status_code == 400, (name, r.text)
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert re.search(f"LoRA adapter '{name}': .*{reason}", error["message"]), error
    assert "foreign" not in {m.id for m in client.models.list().data}
    assert ask(client, WORDS[0], QUESTIONS[1]) == merged_answers[WORDS[0]][1]
    r = post(lora_server, "load_lora_adapter", {"lora_name": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "lora_path"


def test_unloading_takes_the_name_off_and_the_routes_need_the_key(
    lora_server: ServerProcess, client: openai.OpenAI, adapters: dict[str, Path]
) -> None:
    word = WORDS[2]
    body = {"lora_name": word, "lora_path": str(adapters[word])}
    assert post(lora_server, "load_lora_adapter", body, auth=False).status_code == 401
    assert post(lora_server, "load_lora_adapter", body).status_code == 200
    assert ask(client, word, QUESTIONS[0])
    r = post(lora_server, "unload_lora_adapter", {"lora_name": word})
    assert r.status_code == 200 and r.text == f"Success: LoRA adapter '{word}' removed successfully."
    with pytest.raises(openai.NotFoundError, match=r"model_not_found|does not exist"):
        ask(client, word, QUESTIONS[0])
    r = post(lora_server, "unload_lora_adapter", {"lora_name": word})
    assert r.status_code == 404 and r.json()["error"]["param"] == "lora_name"
    assert post(lora_server, "unload_lora_adapter", {"lora_name": BASE}).status_code == 404  # not an adapter
    assert word not in {m.id for m in client.models.list().data}


def test_a_server_with_no_runtime_lora_refuses_the_routes(
    tiny_base: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    args = ["--model", str(tiny_base), "--dtype", "float32", "--no-runtime-lora"]
    with ServerProcess(args, log_path=tmp_path / "server.log") as srv:
        body = {"lora_name": "a", "lora_path": str(adapters[WORDS[0]])}
        for route in ("load_lora_adapter", "unload_lora_adapter"):
            r = post(srv, route, body if route.startswith("load") else {"lora_name": "a"}, auth=False)
            assert r.status_code == 403 and "--no-runtime-lora" in r.json()["error"]["message"], r.text


def test_a_lora_dir_serves_what_is_there_and_what_arrives_later_without_a_restart(
    tiny_base: Path, adapters: dict[str, Path], merged_answers: dict[str, list[str]], tmp_path: Path
) -> None:
    shelf = tmp_path / "adapters"
    shelf.mkdir()
    first, later = WORDS[4], WORDS[5]
    shutil.copytree(adapters[first], shelf / first)
    (shelf / "not-an-adapter").mkdir()  # skipped: holds no adapter_config.json
    spec = json.dumps({"name": "by-json", "path": str(adapters[WORDS[6]])})  # vLLM's JSON form of the flag
    args = ["--model", str(tiny_base), "--served-model-name", BASE, "--dtype", "float32"]
    args += ["--lora-dir", str(shelf), "--lora-modules", spec]
    with ServerProcess(args, log_path=tmp_path / "server.log") as srv:
        c = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0)
        assert {m.id for m in c.models.list().data} == {BASE, first, "by-json"}
        assert ask(c, first, QUESTIONS[0]) == merged_answers[first][0]
        assert ask(c, "by-json", QUESTIONS[1]) == merged_answers[WORDS[6]][1]
        # A new version lands in the folder (written aside, then renamed in, as the trainer publishes).
        shutil.copytree(adapters[later], shelf / f".{later}.tmp")
        (shelf / f".{later}.tmp").rename(shelf / later)
        assert ask(c, later, QUESTIONS[2]) == merged_answers[later][2]  # loaded when first asked for
        assert later in {m.id for m in c.models.list().data}
        shutil.rmtree(shelf / first)  # pruned: the next request for it finds it gone
        with pytest.raises(openai.NotFoundError):
            ask(c, first, QUESTIONS[0])
        assert first not in {m.id for m in c.models.list().data}
        with pytest.raises(openai.NotFoundError):
            ask(c, "not-an-adapter", QUESTIONS[0])


def write_table(path: Path, adapters: Mapping[str, Path], aliases: Mapping[str, Mapping[str, int]]) -> None:
    """As the kubelet updates a ConfigMap volume: the new file renamed over the old one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"adapters": {n: str(p) for n, p in adapters.items()}, "aliases": aliases}))
    tmp.replace(path)


def test_an_adapters_file_loads_unloads_and_moves_an_alias_while_the_server_runs(
    tiny_base: Path, adapters: dict[str, Path], merged_answers: dict[str, list[str]], tmp_path: Path
) -> None:
    v1, v2, bad = WORDS[1], WORDS[2], tmp_path / "missing"
    table = tmp_path / "adapters.json"
    write_table(table, {v1: adapters[v1], "broken": bad}, {"bot": {v1: 100}})
    args = ["--model", str(tiny_base), "--served-model-name", BASE, "--dtype", "float32"]
    args += ["--adapters-file", str(table)]
    with ServerProcess(args, log_path=tmp_path / "server.log") as srv:

        def ready() -> dict[str, Any]:
            body: dict[str, Any] = httpx.get(f"{srv.url.removesuffix('/v1')}/ready", timeout=10).json()
            return body

        # Loaded before the server answered at all: no request needed, the refused one reported.
        state = ready()
        assert set(state["models"]) == {BASE, v1}, state
        assert "broken" in state["adapter_errors"] and str(bad) in str(state["adapter_errors"])
        c = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0)
        out = c.chat.completions.create(
            model="bot", messages=[{"role": "user", "content": QUESTIONS[0]}], max_tokens=MAX_TOKENS,
            temperature=0.0,
        )  # fmt: skip
        assert out.model == v1 and out.choices[0].message.content == merged_answers[v1][0]
        # A canary: v2 loaded beside v1, a share of the alias; then promoted, then v1 retired.
        write_table(table, {v1: adapters[v1], v2: adapters[v2]}, {"bot": {v1: 50, v2: 50}})
        wait_for(lambda: v2 in ready()["models"], "v2 loaded")
        seen = {c.chat.completions.create(model="bot", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=1).model for _ in range(40)}  # fmt: skip
        assert seen == {v1, v2}
        write_table(table, {v2: adapters[v2]}, {"bot": {v2: 100}})
        wait_for(lambda: v1 not in ready()["models"], "v1 unloaded")
        assert ask(c, "bot", QUESTIONS[3]) == merged_answers[v2][3]
        with pytest.raises(openai.NotFoundError):
            ask(c, v1, QUESTIONS[0])
        # A broken table is logged and the last one stays.
        table.write_text("{not json")
        time.sleep(2)
        assert ask(c, v2, QUESTIONS[3]) == merged_answers[v2][3]
    assert "the last table stays" in (tmp_path / "server.log").read_text()


def test_a_table_that_cannot_be_read_at_start_is_one_line_naming_it(tmp_path: Path) -> None:
    table = tmp_path / "adapters.json"
    table.write_text('{"adapters": {"a": 3}}')
    out = subprocess.run(
        [sys.executable, "-m", "chatmodel_serving.cli", "serve", "--model", str(tmp_path), "--adapters-file",
         str(table)], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"--adapters-file {table}" in out.stderr and '"adapters"' in out.stderr


def wait_for(ok: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(0.2)
