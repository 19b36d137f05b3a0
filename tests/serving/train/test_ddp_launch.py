"""The rendered launch line works, not only validates: two "nodes" run as two local processes with
exactly the command, arguments and environment the operator's Indexed Job gives its pods. What the
cluster would supply is supplied the same way here: each volume mount becomes a local folder (the PVCs
shared by both nodes, scratch per node), the downward-API completion index becomes 0 and 1, and pod 0's
DNS name maps to 127.0.0.1 (the port to a free one: parallel test runs share this host)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from chatmodel_operator.builders import training_objects
from chatmodel_operator.builders.meta import COMPLETION_INDEX_ANNOTATION
from chatmodel_operator.builders.training import master_address
from chatmodel_operator.config import Config
from chatmodel_operator.spec import ChatModel, model_version
from chatmodel_serving.launch import free_port
from tests.serving.train.conftest import demo_lines, write_jsonl

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent

MANIFEST: dict[str, Any] = {
    "apiVersion": "chatmodel.dev/v1alpha1",
    "kind": "ChatModel",
    "metadata": {"name": "spread", "namespace": "team-a"},
    "spec": {
        "fineTune": {
            "dataset": {"source": "pvc://datasets/faq.jsonl", "validationSplit": 0.2},
            "method": "full",
            "hyperparameters": {"epochs": 1, "batchSize": 4, "maxSeqLength": 128, "learningRate": 1e-4},
            "resources": {"nodes": 2, "gpu": 0},  # two CPU nodes, one gloo worker each
        },
        "storage": {"accessMode": "ReadWriteMany"},
    },
}


def node_process(
    job: dict[str, Any], index: int, volumes: dict[str, Path], master: str, port: int, log: Path
) -> subprocess.Popen[bytes]:
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}

    def local(text: str) -> str:
        for mount_path, folder in sorted(mounts.items(), key=lambda m: -len(m[0])):
            if text == mount_path or text.startswith(mount_path + "/"):
                return str(folder) + text[len(mount_path) :]
        return text

    env = {"PATH": f"{BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    for var in container["env"]:
        if "valueFrom" in var:
            field = var["valueFrom"]["fieldRef"]["fieldPath"]
            assert field == f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']", field
            env[var["name"]] = str(index)  # what the Job controller puts in that annotation
        elif var["value"] == master:
            env[var["name"]] = "127.0.0.1"
        else:
            env[var["name"]] = local(var["value"])
    env["PET_MASTER_PORT"] = str(port)
    command = [local(a) for a in [*container["command"], *container["args"]]]
    return subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def test_two_nodes_run_the_rendered_indexed_job(tmp_path: Path) -> None:
    cm = ChatModel.model_validate(MANIFEST)
    version = model_version(cm.spec)
    _, job, service = training_objects(cm, version, Config())
    assert job["spec"]["completionMode"] == "Indexed" and service["spec"]["clusterIP"] == "None"
    master = master_address(cm, version)

    shared = {"artifacts": tmp_path / "pvc-artifacts", "source-0": tmp_path / "pvc-datasets"}
    for folder in shared.values():
        folder.mkdir()
    write_jsonl(shared["source-0"] / "faq.jsonl", demo_lines()[:10])  # 8 to train: 2 steps of 4
    port = free_port()
    procs, logs = [], []
    for index in (0, 1):
        scratch = {n: tmp_path / f"node{index}-{n}" for n in ("cache", "tmp", "shm")}
        for folder in scratch.values():
            folder.mkdir()
        logs.append(tmp_path / f"node{index}.log")
        procs.append(node_process(job, index, {**shared, **scratch}, master, port, logs[-1]))
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0], "\n\n".join(log.read_text()[-3000:] for log in logs)

    out = shared["artifacts"] / version
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == metrics["total_steps"] == 2
    assert (out / "model.safetensors").is_file()
    assert "model written to" in logs[0].read_text()  # node 0 hosts rank 0, the only writer
    assert "model written to" not in logs[1].read_text()
