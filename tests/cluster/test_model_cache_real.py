"""Issue 25 on the real control plane: hf:// and s3:// base models downloaded once into the namespace's
model cache by a download Job (the served answers are the built-in model's), with the stores on
loopback (olah serving the built-in model's plain folder as a hub repo, offline; moto's S3 server with
signatures checked).

kwok runs no containers, so the test is the download pod's kubelet: it runs the pod's own command
(`chatmodel download ...`, as the operator wrote it, with the pod's environment and Secrets) on this
machine, with the cache volume at a local folder, serves its output as the pod's log (kwok answers
pods/log from a file: the operator reads progress from there) and writes the container's end
(exit code, termination message) into the pod's status, as a kubelet would. The Job controller, the
garbage collector, the scheduler and the API server's validation are the real ones. The tests run in
file order: each goes on from the namespace the one before left."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from chatmodel_operator.builders.model_cache import CACHE_MOUNT, CACHE_PVC, DOWNLOAD_CONTAINER
from chatmodel_operator.download_contract import parse_progress
from chatmodel_serving.launch import ServerProcess
from chatmodel_serving.models import resolve_source
from tests.cluster.devcluster import LocalCluster, eventually
from tests.cluster.operator_process import running_operator
from tests.serving.fetch.stores import (
    Hub,
    S3Server,
    commit_folder,
    hub_serving,
    s3_server,
    same_files,
)

NS = "model-cache"
MODEL = "tidewell/smollm2"
DOWNLOADS = "app.kubernetes.io/component=model-download"
FINE_TUNE = {"dataset": {"source": "builtin://tidewell-faq"}, "method": "full", "backoffLimit": 0}
CHATMODEL = Path(sys.executable).with_name("chatmodel")
QUESTION = "What is the capital of France? Answer in one word."


@pytest.fixture(scope="module")
def builtin() -> Path:
    return resolve_source("builtin://smollm2-135m")


@pytest.fixture(scope="module")
def hub(builtin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with hub_serving(tmp_path_factory.mktemp("hub"), {f"models/{MODEL}": builtin}) as h:
        yield h


@pytest.fixture(scope="module")
def s3(builtin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        server.upload_folder("models", "smollm2", builtin)
        yield server


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    cluster.kubectl("create", "namespace", NS)
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    # Progress is polled: once a second here (the chart's default is 5 s).
    env = {"CHATMODEL_DOWNLOAD_POLL_SECONDS": "1"}
    with running_operator(cluster.kubeconfig, log, namespaces=[NS], env=env) as proc:
        yield proc


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the model cache PVC holds: every download pod of the module mounts it at CACHE_MOUNT."""
    return tmp_path_factory.mktemp("model-cache-volume")


def chatmodel(name: str, base: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "chatmodel.dev/v1alpha1",
        "kind": "ChatModel",
        "metadata": {"name": name},
        "spec": {"baseModel": base, **spec},
    }


def get(cluster: LocalCluster, *what: str) -> Any:
    out = cluster.kubectl("get", *what, "-n", NS, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def status(cluster: LocalCluster, name: str) -> dict[str, Any]:
    return dict((get(cluster, "chatmodel", name) or {}).get("status") or {})


def download_jobs(cluster: LocalCluster) -> list[dict[str, Any]]:
    return list(get(cluster, "jobs", "-l", DOWNLOADS)["items"])


def downloading(cluster: LocalCluster, name: str, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    return dict(
        eventually(
            f"{name}: status.download",
            lambda: (d := status(cluster, name).get("download")) and ok(d) and d,
            why=lambda: status(cluster, name),
        )
    )


def secret_value(cluster: LocalCluster, ref: dict[str, str]) -> str:
    secret = get(cluster, "secret", ref["name"])
    return base64.b64decode(secret["data"][ref["key"]]).decode()


def container_env(cluster: LocalCluster, container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as a kubelet makes it: values, and Secrets' keys."""
    env = {}
    for e in container.get("env", []):
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        env[e["name"]] = secret_value(cluster, ref) if ref else e["value"]
    return env


def run_pod_command(
    cluster: LocalCluster, pod: dict[str, Any], volume: Path, scratch: Path
) -> tuple[int, list[str], str]:
    """The download container's command here, its cache volume at `volume`: exit code, output lines,
    termination message (paths in it as the container sees them)."""
    container = next(c for c in pod["spec"]["containers"] if c["name"] == DOWNLOAD_CONTAINER)
    argv = list(container["command"])
    assert argv[:2] == ["chatmodel", "download"]
    result = scratch / "termination-log"
    mounted = {"--cache-dir": str(volume), "--result-file": str(result)}
    for i, arg in enumerate(argv[:-1]):
        if arg in mounted:
            assert argv[i + 1] == (CACHE_MOUNT if arg == "--cache-dir" else "/dev/termination-log")
            argv[i + 1] = mounted[arg]
    env = container_env(cluster, container)
    # The container's own paths (HOME, HF_HOME, CHATMODEL_CACHE) become this pod's scratch folder.
    env = {k: (str(scratch / v.strip("/")) if v.startswith("/") else v) for k, v in env.items()}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "AWS_", "CHATMODEL_"))}
    done = subprocess.run(
        [str(CHATMODEL), *argv[1:]], env={**base, **env}, capture_output=True, text=True, timeout=300
    )
    message = result.read_text() if result.exists() else ""
    return (
        done.returncode,
        (done.stdout + done.stderr).splitlines(),
        message.replace(str(volume), CACHE_MOUNT),
    )


def end_container(cluster: LocalCluster, pod: dict[str, Any], code: int, message: str) -> None:
    """The pod's end as its kubelet writes it: phase, and the container's exit code and message."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    container = pod["spec"]["containers"][0]
    terminated = {
        "exitCode": code,
        "reason": "Completed" if code == 0 else "Error",
        "message": message,
        "startedAt": now,
        "finishedAt": now,
    }
    body = {
        "status": {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "started": False,
                    "state": {"terminated": terminated},
                }
            ],
        }
    }
    cluster.kubectl(
        "patch", "pod", pod["metadata"]["name"], "-n", NS, "--subresource=status", "--type=merge",
        "-p", json.dumps(body),
    )  # fmt: skip


def running_pod(cluster: LocalCluster, job: str) -> dict[str, Any]:
    def pod() -> dict[str, Any] | None:
        pods = get(cluster, "pods", "-l", f"batch.kubernetes.io/job-name={job}")["items"]
        return next((p for p in pods if p["status"].get("phase") == "Running"), None)

    return dict(eventually(f"a Running pod of {job}", pod))


def play_download(
    cluster: LocalCluster, job: str, volume: Path, scratch: Path, watch: str | None = None
) -> tuple[int, str]:
    """Be the kubelet of the download Job's pod. With `watch` (a ChatModel), the log is served in two
    steps, and each step's progress must show in that ChatModel's status.download before the next."""
    pod = running_pod(cluster, job)
    scratch.mkdir(parents=True, exist_ok=True)
    code, lines, message = run_pod_command(cluster, pod, volume, scratch)
    if watch is not None:
        marks = [i for i, line in enumerate(lines) if parse_progress(line)]
        assert len(marks) >= 2, lines  # the first chunk's line, and the last one's
        for upto in (marks[0], marks[-1]):
            cluster.write_pod_log(DOWNLOAD_CONTAINER, lines[: upto + 1])
            record = parse_progress(lines[upto]) or {}

            def shows(d: dict[str, Any], r: dict[str, Any] = record) -> bool:
                return bool(d["state"] == "Downloading" and d.get("bytesDone") == r["bytesDone"])

            d = downloading(cluster, watch, shows)
            assert d["bytesTotal"] == record["bytesTotal"] and d["filesTotal"] == record["filesTotal"]
    end_container(cluster, pod, code, message)
    return code, message


def ready(cluster: LocalCluster, name: str, replicas: int) -> dict[str, Any]:
    return dict(
        eventually(
            f"{name} Ready with {replicas} replicas",
            lambda: (
                (s := status(cluster, name)).get("phase") == "Ready"
                and s.get("readyReplicas") == replicas
                and s
            ),
            timeout=90,
            why=lambda: status(cluster, name),
        )
    )


def serving_args(cluster: LocalCluster, name: str, version: str) -> str:
    dep = get(cluster, "deployment", f"{name}-{version}")
    spec = dep["spec"]["template"]["spec"]
    return " ".join(a for c in spec["containers"] for a in [*c.get("command", []), *c.get("args", [])])


def pod_serve_args(cluster: LocalCluster, name: str, version: str, volume: Path) -> list[str]:
    """The serving container's `chatmodel serve` options as the operator wrote them, the cache volume at
    `volume` (ServerProcess picks the port; float32, as tests that compare texts run)."""
    dep = get(cluster, "deployment", f"{name}-{version}")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    argv = [*container.get("command", []), *container.get("args", [])]
    assert argv[:2] == ["chatmodel", "serve"], argv
    mount = f"/sources/{CACHE_PVC}"
    assert {"mountPath": mount, "readOnly": True}.items() <= next(
        m for m in container["volumeMounts"] if m["mountPath"] == mount
    ).items()
    options = {"--host": "127.0.0.1", "--dtype": "float32", "--device": "cpu"}
    out, rest = [], iter(argv[2:])
    for arg in rest:
        value = next(rest)
        if arg == "--port":
            continue
        if arg == "--model":
            value = str(volume / value.removeprefix(mount + "/"))
        out += [arg, options.get(arg, value)]
    return out


def answer(args: list[str], log: Path) -> str:
    with ServerProcess(args, log_path=log) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="none", max_retries=0, timeout=300)
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=24, temperature=0
        )
    return reply.choices[0].message.content or ""


def test_replicas_and_versions_on_one_hf_base_model_download_it_once(
    cluster: LocalCluster, operator: Any, hub: Hub, builtin: Path, volume: Path, tmp_path: Path
) -> None:
    base = {"source": f"hf://{MODEL}", "endpoint": hub.endpoint}
    commit = subprocess.run(
        ["git", "-C", str(hub.repo(MODEL)), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    cluster.apply(
        [
            chatmodel("alpha", base, serving={"replicas": {"min": 2}}),
            chatmodel("beta", {**base, "cachePolicy": "Delete"}, serving={"replicas": {"min": 1}}),
        ],
        "-n", NS,
    )  # fmt: skip
    for name in ("alpha", "beta"):
        d = downloading(cluster, name, lambda d: d["state"] in ("Pending", "Downloading") and "job" in d)
        assert d["revision"] == commit and d["source"] == f"hf://{MODEL}@{commit}"
        assert status(cluster, name)["phase"] == "Pending"
    jobs = download_jobs(cluster)
    assert [j["metadata"]["name"] for j in jobs] == [status(cluster, "alpha")["download"]["job"]]
    assert status(cluster, "beta")["download"]["job"] == jobs[0]["metadata"]["name"]
    assert not get(cluster, "deployments")["items"]  # nothing serves before the model is there
    pvc = get(cluster, "pvc", CACHE_PVC)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"] and "ownerReferences" not in pvc["metadata"]

    code, message = play_download(
        cluster, jobs[0]["metadata"]["name"], volume, tmp_path / "pod", watch="alpha"
    )
    assert code == 0, message
    path = json.loads(message)["path"]
    st = ready(cluster, "alpha", 2)
    ready(cluster, "beta", 1)
    assert st["download"]["state"] == "Succeeded" and st["download"]["path"] == path
    entry = volume / Path(path).relative_to(CACHE_MOUNT)
    files = [p for p in entry.rglob("*") if p.is_file() and p.name != ".chatmodel-source.json"]
    assert st["download"]["bytesTotal"] == sum(p.stat().st_size for p in files)  # its own record aside
    downloaded = next(c for c in st["conditions"] if c["type"] == "Downloaded")
    assert downloaded["status"] == "True"
    same_files(entry, builtin)  # the built-in model's bytes: its answers
    rel = Path(path).relative_to(CACHE_MOUNT).as_posix()
    assert f"/sources/{CACHE_PVC}/{rel}" in serving_args(cluster, "alpha", st["activeVersion"])
    # kwok starts no container: run the serving pod's own command on the cache's files, and the same
    # command on the built-in model's folder. The answers are the same.
    served = pod_serve_args(cluster, "alpha", st["activeVersion"], volume)
    at = served.index("--model") + 1
    want = answer([*served[:at], str(builtin), *served[at + 1 :]], tmp_path / "builtin.log")
    assert want.strip() and answer(served, tmp_path / "pod.log") == want

    # A second version of alpha (fine-tuned on the same base): trains from the cache, no new download.
    cluster.apply([chatmodel("alpha", base, serving={"replicas": {"min": 2}}, fineTune=FINE_TUNE)], "-n", NS)
    tuned = eventually(
        "alpha's fine-tuned version Ready",
        lambda: (
            (s := status(cluster, "alpha")).get("activeVersion") not in (None, st["activeVersion"])
            and s.get("phase") == "Ready"
            and s
        ),
        timeout=120,
        why=lambda: status(cluster, "alpha"),
    )
    train = next(j for j in get(cluster, "jobs")["items"] if tuned["activeVersion"] in j["metadata"]["name"])
    assert f"/sources/{CACHE_PVC}/{rel}" in json.dumps(train["spec"]["template"]["spec"])
    assert len(download_jobs(cluster)) == 1  # two replicas, three versions, two ChatModels: one download


def test_a_moved_branch_makes_a_new_version_and_a_pinned_revision_does_not(
    cluster: LocalCluster, operator: Any, hub: Hub, builtin: Path, volume: Path, tmp_path: Path
) -> None:
    first = status(cluster, "alpha")["download"]["revision"]
    base = {"source": f"hf://{MODEL}", "endpoint": hub.endpoint, "cachePolicy": "Delete"}
    pinned = {**base, "source": f"hf://{MODEL}@{first}"}
    cluster.apply([chatmodel("gamma", pinned, serving={"replicas": {"min": 1}})], "-n", NS)
    gamma = ready(cluster, "gamma", 1)  # alpha's download of that commit is there: nothing to fetch
    assert gamma["download"]["job"] == status(cluster, "alpha")["download"]["job"]
    beta_before = status(cluster, "beta")["activeVersion"]

    readme = tmp_path / "moved"
    readme.mkdir()
    (readme / "README.md").write_text("main moved\n")
    moved = commit_folder(hub.repo(MODEL), readme, "main moves")
    for name, spec in (("beta", base), ("gamma", pinned)):  # a spec change: the source is resolved again
        cluster.apply([chatmodel(name, spec, serving={"replicas": {"min": 2}})], "-n", NS)
    d = downloading(cluster, "beta", lambda d: d.get("revision") == moved and "job" in d)
    assert status(cluster, "beta")["targetVersion"] != beta_before
    assert len(download_jobs(cluster)) == 2
    code, _ = play_download(cluster, d["job"], volume, tmp_path / "pod")
    assert code == 0
    beta = ready(cluster, "beta", 2)
    assert beta["activeVersion"] != beta_before
    assert (volume / Path(beta["download"]["path"]).relative_to(CACHE_MOUNT) / "README.md").is_file()
    gamma_after = ready(cluster, "gamma", 2)
    assert gamma_after["activeVersion"] == gamma["activeVersion"]  # pinned: the same version
    assert gamma_after["download"]["revision"] == first
    assert len(download_jobs(cluster)) == 2


def test_deleting_keeps_or_removes_the_download_as_its_cache_policy_says(
    cluster: LocalCluster, operator: Any
) -> None:
    shared = status(cluster, "gamma")["download"]["job"]
    own = status(cluster, "beta")["download"]
    assert shared == status(cluster, "alpha")["download"]["job"] != own["job"]
    # gamma's policy is Delete, but alpha still uses that download: it stays.
    cluster.kubectl("delete", "chatmodel", "gamma", "-n", NS, "--wait=true")
    # beta's policy is Delete and it alone uses its download: a prune Job removes it from the cache.
    cluster.kubectl("delete", "chatmodel", "beta", "-n", NS, "--wait=true")

    def names() -> set[str]:
        return {j["metadata"]["name"] for j in download_jobs(cluster)}

    def prune_jobs() -> list[dict[str, Any]]:
        jobs = get(cluster, "jobs")["items"]
        return [j for j in jobs if j["metadata"]["name"].startswith("chatmodel-cache-prune-")]

    eventually("beta's download Job deleted", lambda: names() == {shared}, why=names)
    prune = eventually("a cache prune Job", prune_jobs)
    command = prune[0]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[-2:] == ["--entry", str(Path(own["path"]).relative_to(CACHE_MOUNT))]
    # alpha's policy is Keep (the default): its download outlives it.
    cluster.kubectl("delete", "chatmodel", "alpha", "-n", NS, "--wait=true")
    time.sleep(2)
    assert names() == {shared}
    assert len(prune_jobs()) == len(prune)
    assert get(cluster, "pvc", CACHE_PVC) is not None  # the cache itself is the namespace's


def test_an_s3_base_model_downloads_through_the_job_with_the_secrets_keys(
    cluster: LocalCluster, operator: Any, s3: S3Server, builtin: Path, volume: Path, tmp_path: Path
) -> None:
    keys = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
    cluster.kubectl(
        "create",
        "secret",
        "generic",
        "s3-keys",
        "-n",
        NS,
        *(f"--from-literal={k}={v}" for k, v in keys.items()),
    )
    base = {
        "source": "s3://models/smollm2",
        "endpoint": s3.endpoint,
        "region": "us-east-1",
        "credentialsSecretRef": {"name": "s3-keys"},
    }
    cluster.apply([chatmodel("delta", base)], "-n", NS)
    d = downloading(cluster, "delta", lambda d: "job" in d)
    code, message = play_download(cluster, d["job"], volume, tmp_path / "pod")
    assert code == 0, message
    st = ready(cluster, "delta", 1)
    same_files(volume / Path(st["download"]["path"]).relative_to(CACHE_MOUNT), builtin)


@pytest.mark.parametrize(
    ("name", "source", "store", "says"),
    [
        ("no-repo", "hf://tidewell/no-such-model", "hub", "Repository Not Found"),
        ("no-revision", f"hf://{MODEL}@no-such-branch", "hub", "Repository Not Found"),
        (
            "no-secret",
            f"hf://{MODEL}",
            "hub-no-secret",
            "credentialsSecretRef: Secret no-such-secret not found",
        ),
        ("no-bucket", "s3://no-such-bucket/model", "s3", "NoSuchBucket"),
        # Not delta's prefix: the namespace's cache would serve what another ChatModel downloaded.
        ("denied", "s3://models/smollm2-private", "s3-wrong-key", "InvalidAccessKeyId"),
    ],
)
def test_a_bad_source_fails_the_version_with_the_stores_message_quickly(
    cluster: LocalCluster,
    operator: Any,
    hub: Hub,
    s3: S3Server,
    volume: Path,
    tmp_path: Path,
    name: str,
    source: str,
    store: str,
    says: str,
) -> None:
    base: dict[str, Any]
    if store.startswith("hub"):
        base = {"source": source, "endpoint": hub.endpoint}
        if store == "hub-no-secret":
            base["credentialsSecretRef"] = {"name": "no-such-secret"}
    else:
        secret = f"{name}-keys"
        key = "AKIAUNKNOWN" if store == "s3-wrong-key" else s3.access_key
        cluster.kubectl(
            "create", "secret", "generic", secret, "-n", NS, f"--from-literal=AWS_ACCESS_KEY_ID={key}",
            f"--from-literal=AWS_SECRET_ACCESS_KEY={s3.secret_key}",
        )  # fmt: skip
        base = {"source": source, "endpoint": s3.endpoint, "region": "us-east-1",
                "credentialsSecretRef": {"name": secret}}  # fmt: skip
    started = time.monotonic()
    cluster.apply([chatmodel(name, base)], "-n", NS)
    if store.startswith("s3"):  # S3 has no revision to ask for: the download Job meets the refusal
        d = downloading(cluster, name, lambda d: "job" in d)
        code, message = play_download(cluster, d["job"], volume, tmp_path / "pod")
        assert code == 2, message  # a refused source: the pod failure policy fails the Job at once
    st = eventually(
        f"{name} Failed", lambda: (s := status(cluster, name)).get("phase") == "Failed" and s,
        why=lambda: status(cluster, name),
    )  # fmt: skip
    assert time.monotonic() - started < 60
    assert says.lower() in st["message"].lower(), st["message"]
    assert st["message"].startswith(f"downloading {source}: "), st["message"]
    assert st["versions"][0]["state"] == "Failed"
    assert not get(cluster, "deployments", "-l", f"chatmodel.dev/name={name}")["items"]
    if store.startswith("s3"):
        job = get(cluster, "job", st["download"]["job"])
        assert job["status"].get("failed") == 1  # not retried: exit code 2 is a refused source
    cluster.kubectl("delete", "chatmodel", name, "-n", NS)
