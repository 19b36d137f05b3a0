"""The model cache as pure functions: a remote base model's download Job, its shared name, the plan that
waits for it and then serves from the cache, the version that follows the resolved revision, and the
download contract that both sides read (the Job's command line parsed by `chatmodel download` itself)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from chatmodel_operator.builders.model_cache import (
    CACHE_MOUNT,
    CACHE_PVC,
    DOWNLOAD_CONTAINER,
    cache_prune_job,
    cached_source,
    download_job,
    download_job_name,
    entry_in_cache,
)
from chatmodel_operator.config import Config
from chatmodel_operator.download_contract import last_progress, parse_result, progress_line
from chatmodel_operator.observe import DeploymentObs
from chatmodel_operator.plan import Plan, plan, target_version
from chatmodel_operator.prune import main as prune_main
from chatmodel_operator.prune import prune_entry
from chatmodel_operator.spec import ChatModel, DownloadStatus, RemoteAccess
from chatmodel_serving.cli import download as download_cli

NOW = "2026-01-01T00:00:00Z"
SOURCE = "hf://acme/chat"
SHA1, SHA2 = "a" * 40, "b" * 40
ENDPOINT = "http://hub.internal:8090"


def cm(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None) -> ChatModel:
    base = {"baseModel": {"source": SOURCE, "endpoint": ENDPOINT}, **(spec or {})}
    return ChatModel.model_validate(
        {"metadata": {"name": "x", "namespace": "ns"}, "spec": base, "status": status}
    )


def download(state: str, revision: str | None = SHA1, **more: Any) -> DownloadStatus:
    pinned = f"{SOURCE}@{revision}" if revision else SOURCE
    return DownloadStatus.model_validate(
        {"requested": SOURCE, "source": pinned, "revision": revision, "state": state, **more}
    )


def run(c: ChatModel, d: DownloadStatus | None, deps: list[DeploymentObs] = ()) -> Plan:  # type: ignore[assignment]
    return plan(c, {}, {x.version: x for x in deps}, Config(), NOW, generation=3, download=d)


def kinds(objs: list[dict[str, Any]]) -> list[str]:
    return [o["kind"] for o in objs]


def test_a_remote_base_model_waits_for_one_download_job_and_serves_nothing_yet() -> None:
    p = run(cm(), download("Pending"))
    assert kinds(p.create_only) == ["PersistentVolumeClaim", "Job"]
    pvc, job = p.create_only
    assert pvc["metadata"]["name"] == CACHE_PVC and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "ownerReferences" not in pvc["metadata"]  # it outlives every ChatModel
    assert job["metadata"]["name"] == download_job_name(f"{SOURCE}@{SHA1}", ENDPOINT)
    assert "ownerReferences" not in job["metadata"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == DOWNLOAD_CONTAINER
    assert container["command"][:3] == ["chatmodel", "download", f"{SOURCE}@{SHA1}"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HF_ENDPOINT"] == ENDPOINT
    assert not any(o["kind"] == "Deployment" for o in p.apply)
    assert p.phase == "Pending"
    assert p.status["download"]["state"] == "Pending"
    downloaded = next(c for c in p.status["conditions"] if c["type"] == "Downloaded")
    assert downloaded["status"] == "Unknown" and downloaded["reason"] == "Downloading"


def test_progress_shows_in_the_phase_message() -> None:
    d = download(
        "Downloading", job="j", bytes_done=50_000_000, bytes_total=200_000_000, files_done=1, files_total=4
    )
    p = run(cm(), d)
    assert p.create_only == [] or all(o["kind"] != "Job" for o in p.create_only)  # the Job exists already
    assert p.phase == "Pending"
    assert "50.0 of 200.0 MB" in p.message and "1 of 4 files" in p.message
    assert p.status["download"]["bytesDone"] == 50_000_000


def test_a_finished_download_is_served_from_the_cache_read_only() -> None:
    path = f"{CACHE_MOUNT}/hf/acme--chat/{SHA1}"
    p = run(cm(), download("Succeeded", path=path))
    assert not any(o["kind"] == "Job" for o in p.create_only)
    dep = next(o for o in p.apply if o["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    args = " ".join(a for c in pod["containers"] for a in c.get("args", []) + c.get("command", []))
    assert f"/sources/{CACHE_PVC}/hf/acme--chat/{SHA1}" in args
    assert SOURCE not in args  # nothing is fetched at start-up
    cache = next(
        v for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == CACHE_PVC
    )
    assert cache["persistentVolumeClaim"]["readOnly"] is True
    mounts = [m for c in pod["containers"] for m in c.get("volumeMounts", []) if m["name"] == cache["name"]]
    assert mounts and all(m["readOnly"] for m in mounts)
    # The version records the resolved source: a pin later serves exactly this commit.
    assert p.status["versions"][0]["baseModel"] == f"{SOURCE}@{SHA1}"


def test_the_resolved_commit_is_part_of_the_version() -> None:
    c = cm()
    first = target_version(c, download("Succeeded", SHA1))
    assert target_version(c, download("Pending", SHA1)) == first  # the same commit, the same version
    assert target_version(c, download("Pending", SHA2)) != first  # a moved branch: a new version
    assert run(c, download("Pending", SHA2)).status["targetVersion"] != first


def test_a_failed_download_fails_the_version_with_the_stores_message() -> None:
    said = "401 Client Error: Repository Not Found for url: http://hub/api/models/acme/chat"
    p = run(cm(), download("Failed", None, message=said))
    assert p.phase == "Failed"
    assert said in p.message
    assert p.status["versions"][0]["state"] == "Failed"
    downloaded = next(c for c in p.status["conditions"] if c["type"] == "Downloaded")
    assert downloaded["status"] == "False" and downloaded["reason"] == "DownloadFailed"
    assert not any(o["kind"] in ("Job", "Deployment") for o in [*p.create_only, *p.apply])


def test_a_failed_download_of_a_new_version_keeps_the_old_one_serving() -> None:
    old = DeploymentObs("old", "x-old", 1, 1)
    p = run(cm(status={"activeVersion": "old"}), download("Failed", None, message="no such bucket"), [old])
    assert p.phase == "Degraded"
    service = next(o for o in p.apply if o["kind"] == "Service")
    assert service["spec"]["selector"]["chatmodel.dev/version"] == "old"


def test_a_fine_tune_trains_on_the_cached_base_model_once_it_is_there() -> None:
    ft = {"fineTune": {"dataset": {"source": "pvc://d/train.jsonl"}, "method": "lora"}}
    waiting = run(cm(ft), download("Downloading", job="j"))
    assert not any(o["kind"] == "Job" and "train" in o["metadata"]["name"] for o in waiting.create_only)
    path = f"{CACHE_MOUNT}/hf/acme--chat/{SHA1}"
    ready = run(cm(ft), download("Succeeded", path=path))
    train = next(o for o in ready.create_only if o["kind"] == "Job")
    text = json.dumps(train["spec"]["template"]["spec"])
    assert f"/sources/{CACHE_PVC}/hf/acme--chat/{SHA1}" in text


def test_every_user_of_one_source_shares_one_job_and_another_revision_gets_its_own() -> None:
    access = RemoteAccess(endpoint=ENDPOINT)
    a = download_job("ns", f"{SOURCE}@{SHA1}", access, Config())
    b = download_job("ns", f"{SOURCE}@{SHA1}", access, Config(runtime_image="other:1"))
    assert a["metadata"]["name"] == b["metadata"]["name"]
    other = download_job("ns", f"{SOURCE}@{SHA2}", access, Config())
    assert other["metadata"]["name"] != a["metadata"]["name"]
    elsewhere = download_job("ns", f"{SOURCE}@{SHA1}", RemoteAccess(endpoint="http://mirror:1"), Config())
    assert elsewhere["metadata"]["name"] != a["metadata"]["name"]


def test_a_refused_source_fails_the_job_at_once_and_a_lost_node_is_retried() -> None:
    job = download_job("ns", f"{SOURCE}@{SHA1}", RemoteAccess(), Config())
    rule = job["spec"]["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [2]
    assert job["spec"]["backoffLimit"] > 0


def test_the_jobs_command_line_is_one_chatmodel_download_accepts() -> None:
    job = download_job("ns", f"{SOURCE}@{SHA1}", RemoteAccess(), Config(download_stall_seconds=120))
    argv = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert argv[:2] == ["chatmodel", "download"]
    parser = argparse.ArgumentParser()
    download_cli.add_arguments(parser)
    args = parser.parse_args(argv[2:])
    assert args.source == f"{SOURCE}@{SHA1}"
    assert args.cache_dir == Path(CACHE_MOUNT)
    assert args.stall_seconds == 120
    assert args.result_file == Path("/dev/termination-log")


def test_progress_lines_and_results_round_trip() -> None:
    log = "\n".join(
        [
            "starting",
            progress_line({"state": "Downloading", "bytesDone": 10, "bytesTotal": 100, "extra": 1}),
            "some other line with chatmodelDownload but not JSON",
            progress_line({"state": "Downloading", "bytesDone": 60, "bytesTotal": 100}),
        ]
    )
    record = last_progress(log)
    assert record == {"state": "Downloading", "bytesDone": 60, "bytesTotal": 100}
    assert last_progress("nothing here") is None
    assert parse_result('{"path": "/model-cache/x"}') == {"path": "/model-cache/x"}
    assert parse_result("Traceback: killed") == {"error": "Traceback: killed"}
    assert parse_result(None) == {}


def test_cache_paths_never_leave_the_cache() -> None:
    assert cached_source(f"{CACHE_MOUNT}/hf/a/b") == f"pvc://{CACHE_PVC}/hf/a/b"
    for bad in ("/etc/passwd", f"{CACHE_MOUNT}/../etc", CACHE_MOUNT):
        with pytest.raises(ValueError):
            entry_in_cache(bad)
    job = cache_prune_job("ns", f"{CACHE_MOUNT}/hf/a/b", Config())
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == ["--entry", "hf/a/b"]


def test_prune_entry_removes_one_download_and_refuses_paths_outside(tmp_path: Path) -> None:
    keep = tmp_path / "hf" / "a" / "keep"
    gone = tmp_path / "hf" / "a" / "gone"
    for folder in (keep, gone):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"x")
    (tmp_path / "hf" / "a" / "gone.lock").write_text("")
    assert prune_entry(tmp_path, "hf/a/gone") is True
    assert not gone.exists() and not (tmp_path / "hf" / "a" / "gone.lock").exists()
    assert keep.is_dir()
    assert prune_entry(tmp_path, "hf/a/gone") is False  # a retried pod
    for bad in ("../x", "/abs", "hf/../../x", ""):
        with pytest.raises(ValueError):
            prune_entry(tmp_path, bad)
    assert prune_main(["--root", str(tmp_path), "--entry", "../x"]) == 2
    assert keep.is_dir()
