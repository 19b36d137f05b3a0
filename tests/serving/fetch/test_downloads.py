"""Models and datasets from a real hub mirror (olah, offline, serving git repos) and a real S3 server
(moto, signatures checked) through the download cache: the same bytes as the built-in model, its answers
through `chatmodel run`, resume after a kill, corruption re-fetched, revisions pinned, bad sources refused
with the store's own message."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import yaml

from chatmodel_operator.download_contract import parse_progress
from chatmodel_serving.fetch import FetchError, Settings, pull
from chatmodel_serving.launch import ServerProcess
from chatmodel_serving.models import resolve_source
from chatmodel_serving.train.data import BUILTIN_DATA
from tests.serving.fetch.stores import (
    Hub,
    S3Server,
    commit_folder,
    hub_serving,
    s3_server,
    same_files,
    sha256_of,
)

MODEL = "tidewell/smollm2"
QUESTION = "What is the capital of France? Answer in one word."


@pytest.fixture(scope="module")
def builtin() -> Path:
    return resolve_source("builtin://smollm2-135m")


@pytest.fixture(scope="module")
def hub(builtin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    data = tmp_path_factory.mktemp("faq")
    (data / "train.jsonl").write_bytes((BUILTIN_DATA / "tidewell-faq.jsonl").read_bytes())
    repos = {f"models/{MODEL}": builtin, "datasets/tidewell/faq": data}
    with hub_serving(tmp_path_factory.mktemp("hub"), repos) as h:
        yield h


@pytest.fixture(scope="module")
def s3(builtin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        server.upload_folder("models", "smollm2", builtin)
        data = tmp_path_factory.mktemp("faq")
        (data / "train.jsonl").write_bytes((BUILTIN_DATA / "tidewell-faq.jsonl").read_bytes())
        server.upload_folder("data", "faq", data)
        yield server


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A download cache the tests share where a second download of the same bytes shows nothing new."""
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def small_repo(hub: Hub, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A small model-shaped repo (an LFS weights file, a git config), for tests that fetch it often."""
    files = tmp_path_factory.mktemp("small")
    (files / "config.json").write_text('{"model_type": "llama"}\n')
    (files / "model.safetensors").write_bytes(os.urandom(3 << 20))
    commit_folder(hub.repo("tidewell/small"), files, "small")
    return "tidewell/small"


def hub_settings(hub: Hub) -> Settings:
    return Settings.for_source("hf://x/y", hub.endpoint)


def s3_settings(s3: S3Server) -> Settings:
    keys = {"s3_access_key": s3.access_key, "s3_secret_key": s3.secret_key}
    return Settings.for_source("s3://x", s3.endpoint, "us-east-1", None, **keys)


def s3_env(s3: S3Server) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_REGION": "us-east-1",
    }


def test_hub_and_s3_give_the_built_in_models_bytes(
    hub: Hub, s3: S3Server, builtin: Path, cache: Path
) -> None:
    by_hub = pull(f"hf://{MODEL}", hub_settings(hub), cache)
    by_s3 = pull("s3://models/smollm2", s3_settings(s3), cache)
    for pulled in (by_hub, by_s3):
        same_files(pulled.path, builtin)
        assert pulled.fetched_bytes >= (builtin / "model.safetensors").stat().st_size
    assert len(by_hub.revision) == 40  # the commit main resolved to
    again = pull(f"hf://{MODEL}", hub_settings(hub), cache)
    assert (again.path, again.fetched_bytes) == (by_hub.path, 0)


def test_datasets_come_as_one_file_from_either_store(hub: Hub, s3: S3Server, tmp_path: Path) -> None:
    want = (BUILTIN_DATA / "tidewell-faq.jsonl").read_bytes()
    by_hub = pull("hf://datasets/tidewell/faq/train.jsonl", hub_settings(hub), tmp_path)
    by_s3 = pull("s3://data/faq/train.jsonl", s3_settings(s3), tmp_path)
    assert by_hub.path.read_bytes() == by_s3.path.read_bytes() == want


def answer(url: str, model: str) -> str:
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=300)
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=24, temperature=0
    )
    return reply.choices[0].message.content or ""


def test_chatmodel_run_serves_both_downloads_with_the_built_in_answers(
    hub: Hub, s3: S3Server, cache: Path, tmp_path: Path
) -> None:
    with ServerProcess(["--dtype", "float32"], log_path=tmp_path / "builtin.log") as srv:
        want = answer(srv.url, srv_model(srv.url))
    sources = {
        "from-hub": ({"source": f"hf://{MODEL}", "endpoint": hub.endpoint}, {}),
        "from-s3": (
            {"source": "s3://models/smollm2", "endpoint": s3.endpoint, "region": "us-east-1"},
            s3_env(s3),
        ),
    }
    # The hub's copy from the shared cache (olah sends 540 MB slowly), S3's downloaded by the run itself.
    caches = {"from-hub": cache, "from-s3": tmp_path / "downloads"}
    for name, (base, env) in sources.items():
        env_cache = {"CHATMODEL_DOWNLOAD_CACHE": str(caches[name])}
        manifest = tmp_path / f"{name}.yaml"
        spec = {"baseModel": base, "serving": {"dtype": "float32"}}
        doc = {
            "apiVersion": "chatmodel.dev/v1alpha1",
            "kind": "ChatModel",
            "metadata": {"name": name},
            "spec": spec,
        }
        manifest.write_text(yaml.safe_dump(doc))
        log = tmp_path / f"{name}.log"
        with ServerProcess([str(manifest)], log_path=log, env={**env, **env_cache}, subcommand="run") as srv:
            assert answer(srv.url, name) == want, name
        if name == "from-s3":
            assert '"state": "done"' in log.read_text()  # the progress lines of a download that ran


def srv_model(url: str) -> str:
    return openai.OpenAI(base_url=url, api_key="none").models.list().data[0].id


def download(
    source: str, cache: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    cmd = [
        sys.executable,
        "-m",
        "chatmodel_serving.cli",
        "download",
        source,
        "--cache-dir",
        str(cache),
        *args,
    ]
    return subprocess.Popen(
        cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_a_download_killed_halfway_resumes_and_checks_out(
    s3: S3Server, builtin: Path, tmp_path: Path
) -> None:
    weights = (builtin / "model.safetensors").stat().st_size
    args = ("--endpoint", s3.endpoint, "--region", "us-east-1", "--json")
    proc = download("s3://models/smollm2", tmp_path, *args, env=s3_env(s3))
    partials: list[Path] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        partials = list(tmp_path.glob("s3/models/*/*.partial/model.safetensors"))
        if partials and partials[0].stat().st_size >= weights // 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, "the download ended before it could be killed halfway"
    partial = partials[0].parent
    assert not partial.with_name(partial.name.removesuffix(".partial")).exists()  # never served half-done
    present = sum(f.stat().st_size for f in partial.rglob("*") if f.is_file())
    assert weights // 2 <= present < sum(f.stat().st_size for f in builtin.iterdir())
    proc = download("s3://models/smollm2", tmp_path, *args, env=s3_env(s3))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    done = json.loads(out)
    total = sum(f.stat().st_size for f in builtin.iterdir())
    assert done["fetchedBytes"] == total - present  # resumed: only what was missing came again
    same_files(Path(done["path"]), builtin)


def test_a_stalled_store_fails_the_download_with_a_message_instead_of_hanging(
    s3: S3Server, tmp_path: Path
) -> None:
    args = ("--endpoint", s3.endpoint, "--region", "us-east-1", "--stall-seconds", "2")
    proc = download("s3://models/smollm2", tmp_path, *args, env=s3_env(s3))
    partials: list[Path] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        partials = list(tmp_path.glob("s3/models/*/*.partial/model.safetensors"))
        if partials and partials[0].stat().st_size > 0:
            break
        time.sleep(0.002)
    os.kill(s3.pid, signal.SIGSTOP)  # the store hangs mid-file: the connection stays open, no byte comes
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        os.kill(s3.pid, signal.SIGCONT)
    assert proc.returncode == 2, "the download ended before the store could be frozen"
    said = [line for line in err.strip().splitlines() if not parse_progress(line)]  # progress lines aside
    assert len(said) == 1 and "Traceback" not in err, err
    assert said[0].startswith("chatmodel download: s3://models/smollm2: model.safetensors: "), err
    assert "download stalled, no data for 2 s at " in said[0], err
    partial = partials[0].parent
    assert not partial.with_name(partial.name.removesuffix(".partial")).exists()  # nothing served


def test_a_corrupted_cached_file_is_detected_and_fetched_again(
    s3: S3Server, hub: Hub, small_repo: str, tmp_path: Path
) -> None:
    for source, settings in (
        ("s3://models/smollm2", s3_settings(s3)),
        (f"hf://{small_repo}", hub_settings(hub)),
    ):
        first = pull(source, settings, tmp_path)
        kept = {f.name: sha256_of(f) for f in first.path.iterdir() if f.is_file()}
        weights = first.path / "model.safetensors"
        with weights.open("r+b") as f:  # same size, one byte changed: only a checksum sees it
            f.seek(weights.stat().st_size // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
        again = pull(source, settings, tmp_path)
        assert again.path == first.path
        assert again.fetched_bytes == weights.stat().st_size, source  # that file, and only it
        assert {f.name: sha256_of(f) for f in again.path.iterdir() if f.is_file()} == kept


def test_a_moved_branch_makes_a_new_version_and_a_pinned_revision_does_not(hub: Hub, tmp_path: Path) -> None:
    from chatmodel_serving.cli.run import plan

    repo = hub.repo("tidewell/moving")
    files = tmp_path / "files"
    files.mkdir()
    (files / "config.json").write_text('{"model_type": "llama", "revision": 1}\n')
    first = commit_folder(repo, files, "one")

    def version(source: str) -> str:
        spec = {
            "baseModel": {"source": source, "endpoint": hub.endpoint},
            "fineTune": {"dataset": {"source": "builtin://tidewell-faq"}},
        }
        doc = {
            "apiVersion": "chatmodel.dev/v1alpha1",
            "kind": "ChatModel",
            "metadata": {"name": "m"},
            "spec": spec,
        }
        manifest = tmp_path / "m.yaml"
        manifest.write_text(yaml.safe_dump(doc))
        p = plan(manifest, tmp_path / "work")
        assert p.train is not None
        return p.train.output.name

    os.environ["CHATMODEL_DOWNLOAD_CACHE"] = str(tmp_path / "downloads")
    try:
        moving, pinned = version("hf://tidewell/moving"), version(f"hf://tidewell/moving@{first}")
        assert version("hf://tidewell/moving") == moving  # nothing moved: the same version
        (files / "config.json").write_text('{"model_type": "llama", "revision": 2}\n')
        commit_folder(repo, files, "two")
        assert version("hf://tidewell/moving") != moving
        assert version(f"hf://tidewell/moving@{first}") == pinned
    finally:
        del os.environ["CHATMODEL_DOWNLOAD_CACHE"]


@pytest.mark.parametrize(
    ("source", "store", "says"),
    [
        ("hf://tidewell/no-such-model", "hub", "Repository Not Found"),
        (f"hf://{MODEL}@no-such-branch", "hub", "Repository Not Found"),
        ("hf://datasets/tidewell/faq/missing.jsonl", "hub", "no file 'missing.jsonl'"),
        ("s3://no-such-bucket/model", "s3", "NoSuchBucket"),
        ("s3://models/no-such-prefix", "s3", "NoSuchKey"),
        ("s3://models/smollm2", "s3-wrong-secret", "SignatureDoesNotMatch"),
        ("s3://models/smollm2", "s3-unknown-key", "InvalidAccessKeyId"),
    ],
)
def test_bad_sources_fail_at_once_with_the_stores_message(
    source: str, store: str, says: str, hub: Hub, s3: S3Server, tmp_path: Path
) -> None:
    env = s3_env(s3)
    if store == "s3-wrong-secret":
        env["AWS_SECRET_ACCESS_KEY"] = "wrong"
    if store == "s3-unknown-key":
        env["AWS_ACCESS_KEY_ID"] = "AKIAUNKNOWN"
    endpoint = hub.endpoint if store == "hub" else s3.endpoint
    started = time.monotonic()
    proc = download(source, tmp_path, "--endpoint", endpoint, "--region", "us-east-1", env=env)
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - started < 60
    assert proc.returncode == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err  # one line, no traceback
    assert lines[0].startswith(f"chatmodel download: {source.split('@')[0]}") and says in lines[0], err
    assert not any(tmp_path.rglob("*.safetensors"))  # nothing half-written


def test_offline_uses_what_the_cache_holds_and_says_what_is_missing(
    hub: Hub, small_repo: str, tmp_path: Path
) -> None:
    online = pull(f"hf://{small_repo}", hub_settings(hub), tmp_path)
    offline = Settings.for_source("hf://x", "http://127.0.0.1:9", offline=True)  # nothing listens there
    assert pull(f"hf://{small_repo}", offline, tmp_path).path == online.path
    assert pull(f"hf://{small_repo}@{online.revision}", offline, tmp_path).path == online.path
    with pytest.raises(FetchError, match="not in the download cache"):
        pull("hf://tidewell/never-fetched", offline, tmp_path)


def test_the_operators_resolver_asks_the_hub_for_the_commit_and_keeps_its_refusal(
    hub: Hub, tmp_path: Path
) -> None:
    """The operator resolves hf:// revisions itself (stdlib, no huggingface_hub in its image): the same
    commit the runtime's download pins, and the hub's own words when it refuses."""
    from chatmodel_operator.revisions import ResolveError, resolve

    by_runtime = pull(f"hf://{MODEL}", hub_settings(hub), tmp_path)
    assert resolve(f"hf://{MODEL}", hub.endpoint) == by_runtime.revision
    assert resolve(f"hf://{MODEL}@{by_runtime.revision}", hub.endpoint) == by_runtime.revision
    for bad in ("hf://tidewell/no-such-model", f"hf://{MODEL}@no-such-branch"):
        with pytest.raises(
            ResolveError, match=rf"^the hub at {hub.endpoint} answered 401: Repository not found"
        ):
            resolve(bad, hub.endpoint)
    with pytest.raises(ResolveError, match="could not be reached"):
        resolve(f"hf://{MODEL}", "http://127.0.0.1:9")
