"""Distributed fine-tuning objects: 2 nodes x 4 GPUs render an Indexed Job plus a headless rendezvous
Service (pinned by a golden file, valid Kubernetes, restricted PSS), Kueue's label and suspension,
a Kubeflow Trainer TrainJob that validates against Kubeflow's published TrainJob models, the
API refusing impossible combinations, and the operator's reading of a multi-node Job's pods.

Regenerate the golden file after an intended change: CHATMODEL_UPDATE_GOLDEN=1 pytest this file."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pydantic
import pytest
import yaml

from chatmodel_operator.builders import training_objects
from chatmodel_operator.builders.training import QUEUE_LABEL, launch
from chatmodel_operator.config import Config
from chatmodel_operator.observe import parse_result, termination_message
from chatmodel_operator.plan import plan
from chatmodel_operator.spec import ChatModel, model_version
from tests.operator.operator_crdcheck import validate
from tests.operator.operator_pss import pod_spec_of, violations
from tests.operator.operator_schemas import validate as schema_validate

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden" / "distributed-2x4.yaml"
K8S_VERSION = "1.37.0"


def manifest(**fine_tune: Any) -> dict[str, Any]:
    ft = {
        "dataset": {"source": "pvc://datasets/support.jsonl"},
        "method": "full",
        "resources": {"nodes": 2, "gpu": 4, "cpu": "16", "memory": "64Gi"},
        **fine_tune,
    }
    return {
        "apiVersion": "chatmodel.dev/v1alpha1",
        "kind": "ChatModel",
        "metadata": {"name": "big", "namespace": "team-a"},
        "spec": {"fineTune": ft, "storage": {"accessMode": "ReadWriteMany", "size": "100Gi"}},
    }


def workload(**fine_tune: Any) -> list[dict[str, Any]]:
    cm = ChatModel.model_validate(manifest(**fine_tune))
    return training_objects(cm, model_version(cm.spec), Config())[1:]  # without the PVC


def test_two_nodes_by_four_gpus_match_the_golden_file_and_validate() -> None:
    objs = workload(queueName="gpu-queue")
    if os.environ.get("CHATMODEL_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(yaml.safe_dump_all(objs, sort_keys=False))
    assert objs == list(yaml.safe_load_all(GOLDEN.read_text()))
    for obj in objs:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    job, service = objs
    assert [job["kind"], service["kind"]] == ["Job", "Service"]
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert pod["subdomain"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["PET_NNODES"]["value"] == "2" and env["PET_NPROC_PER_NODE"]["value"] == "4"
    assert env["PET_MASTER_ADDR"]["value"] == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert c["command"] == ["torchrun"] and c["args"][:3] == ["--no-python", "chatmodel", "train"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"  # per node
    assert violations(pod_spec_of(job) or {}) == []


def test_queue_name_suspends_and_labels_the_workload() -> None:
    job, _ = workload(queueName="gpu-queue")
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"][QUEUE_LABEL] == "gpu-queue"
    (trainjob,) = workload(queueName="gpu-queue", engine="kubeflow")
    assert trainjob["spec"]["suspend"] is True and trainjob["metadata"]["labels"][QUEUE_LABEL] == "gpu-queue"
    job, _ = workload()
    assert "suspend" not in job["spec"] and QUEUE_LABEL not in job["metadata"]["labels"]


def test_launch_line_for_each_shape() -> None:
    def ft(**resources: Any) -> Any:
        return ChatModel.model_validate(manifest(resources=resources)).spec.fine_tune

    assert launch(ft(nodes=1, gpu=1), ["train"], None).command == ["chatmodel"]  # unchanged
    one_node = launch(ft(nodes=1, gpu=8), ["train"], None)
    assert one_node.args == ["--standalone", "--nproc-per-node=8", "--no-python", "chatmodel", "train"]
    cpu_nodes = launch(ft(nodes=3, gpu=0), ["train"], "m")
    assert {e["name"]: e.get("value") for e in cpu_nodes.env}["PET_NPROC_PER_NODE"] == "1"


def trainjob_errors(obj: dict[str, Any]) -> list[str]:
    """What Kubeflow's published TrainJob models (PyPI kubeflow-trainer-api) say about `obj`."""
    try:
        schema_validate(obj)
    except ValueError as e:
        return [str(e)]
    return []


def test_trainjob_validates_against_kubeflow_trainers_models() -> None:
    (trainjob,) = workload(engine="kubeflow", queueName="gpu-queue")
    assert trainjob["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and trainjob["kind"] == "TrainJob"
    assert trainjob_errors(trainjob) == []
    trainer = trainjob["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 4)
    assert trainer["command"] == ["torchrun"]  # Trainer sets PET_* (ranks, master) itself
    assert not any(e["name"].startswith("PET_") for e in trainer["env"])
    # The check can fail: an unknown field and an impossible count are refused.
    bad = copy.deepcopy(trainjob)
    bad["spec"]["trainer"]["gpus"] = 4
    assert trainjob_errors(bad)
    bad = copy.deepcopy(trainjob)
    bad["spec"]["trainer"]["numNodes"] = "two"
    assert trainjob_errors(bad)


def test_several_nodes_need_shared_storage() -> None:
    doc = manifest()
    doc["spec"]["storage"] = {"accessMode": "ReadWriteOnce"}
    message = "spec.fineTune.resources.nodes > 1 needs spec.storage.accessMode ReadWriteMany"
    with pytest.raises(pydantic.ValidationError, match="nodes > 1 needs"):
        ChatModel.model_validate(doc)
    assert any(message in e for e in validate(doc))  # the same rule as CEL in the CRD
    assert validate(manifest()) == []
    del doc["spec"]["storage"]
    assert any(message in e for e in validate(doc))  # the default (ReadWriteOnce) is refused too
    doc = manifest(engine="slurm")
    assert any("engine" in e for e in validate(doc))


def pod(index: str | None, exit_code: int, message: str, finished: str, reason: str = "") -> dict[str, Any]:
    annotations = {"batch.kubernetes.io/job-completion-index": index} if index is not None else {}
    term = {"exitCode": exit_code, "message": message, "finishedAt": finished, "reason": reason}
    return {
        "metadata": {"annotations": annotations},
        "status": {"containerStatuses": [{"state": {"terminated": term}}]},
    }


def test_result_comes_from_rank_0_and_failure_from_the_first_failing_node() -> None:
    ok = '{"eval_loss": 0.5, "eval_loss_before": 2.0}'
    # Node 1 finished later with a (non-result) message: node 0's result still wins.
    assert termination_message([pod("1", 0, "bye", "3"), pod("0", 0, ok, "2")]) == ok
    # Node 1 ran out of memory first; node 0 then lost its peer.
    lost = "error: rank 0: DistBackendError: connection closed by peer"
    pods = [pod("0", 1, lost, "5"), pod("1", 137, "", "4", reason="OOMKilled")]
    text = termination_message(pods)
    assert text == "node 1: OOMKilled"
    assert parse_result(text).message == "node 1: OOMKilled"
    # A single-pod Job keeps its newest message.
    assert termination_message([pod(None, 1, "old", "1"), pod(None, 0, ok, "2")]) == ok


def test_plan_creates_the_job_and_its_rendezvous_service() -> None:
    cm = ChatModel.model_validate(manifest())
    p = plan(cm, {}, {}, Config(), "2026-01-01T00:00:00Z")
    kinds = [o["kind"] for o in p.create_only]
    assert kinds == ["PersistentVolumeClaim", "Job", "Service"]
    cm = ChatModel.model_validate(manifest(engine="kubeflow"))
    p = plan(cm, {}, {}, Config(), "2026-01-01T00:00:00Z")
    assert [o["kind"] for o in p.create_only] == ["PersistentVolumeClaim", "TrainJob"]
