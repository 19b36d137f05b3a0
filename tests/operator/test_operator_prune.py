"""The artifact-prune Job of a version that left the history: a valid, restricted object, and its exact
command, run here against a folder laid out like the PVC, removes that version only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chatmodel_operator.builders.storage import prune_job
from chatmodel_operator.config import Config
from chatmodel_operator.prune import prune
from chatmodel_operator.spec import ChatModel
from tests.operator.operator_pss import pod_spec_of, violations
from tests.operator.operator_schemas import validate

CM = ChatModel.model_validate(
    {
        "apiVersion": "chatmodel.dev/v1alpha1",
        "kind": "ChatModel",
        "metadata": {"name": "bot", "namespace": "team-a", "uid": "u-1"},
        "spec": {
            "baseModel": {"source": "builtin://smollm2-135m"},
            "fineTune": {"dataset": {"source": "pvc://data/train.jsonl"}},
        },
    }
)


def test_prune_job_is_valid_restricted_and_owned() -> None:
    job = prune_job(CM, "v1abc", Config())
    validate(job)
    pod = pod_spec_of(job)
    assert pod is not None and violations(pod) == []
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] != "training"  # not a training Job
    assert job["spec"]["ttlSecondsAfterFinished"] > 0


def test_the_jobs_command_removes_that_version_only(tmp_path: Path) -> None:
    for v in ("v1abc", "v2def"):
        (tmp_path / v).mkdir()
        (tmp_path / v / "model.safetensors").write_bytes(b"weights")
    command = prune_job(CM, "v1abc", Config())["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[0] == "python3"
    run = [sys.executable, *command[1:], "--root", str(tmp_path)]
    out = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    assert "v1abc" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v2def"]
    # Idempotent: a retried pod finds nothing to do and succeeds.
    subprocess.run(run, capture_output=True, text=True, check=True)


@pytest.mark.parametrize("bad", ["..", ".", "", "a/b", "../etc"])
def test_names_reaching_outside_the_root_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="not a version folder name"):
        prune(tmp_path, [bad])
