"""The fine-tune Job: runs `chatmodel train` and writes the version's artifact to the PVC."""

from __future__ import annotations

from chatmodel_operator.builders import meta
from chatmodel_operator.builders.meta import Obj
from chatmodel_operator.builders.sources import Mounts
from chatmodel_operator.config import Config
from chatmodel_operator.spec import ChatModel, FineTune

TERMINATION_LOG = "/dev/termination-log"
DEFAULT_VALIDATION_SPLIT = 0.1


def train_args(ft: FineTune, base: str, data: str, validation: str | None, version: str) -> list[str]:
    hp = ft.hyperparameters
    args = ["train", "--base-model", base, "--data", data]
    if validation is not None:
        args += ["--validation-data", validation]
    else:
        split = ft.dataset.validation_split
        args += ["--validation-split", str(DEFAULT_VALIDATION_SPLIT if split is None else split)]
    args += [
        "--method", ft.method,
        "--epochs", str(hp.epochs),
        "--learning-rate", str(hp.learning_rate),
        "--batch-size", str(hp.batch_size),
        "--max-seq-length", str(hp.max_seq_length),
        "--output", meta.artifact_path(version),
        # Retried pods (backoffLimit) pick up where the last one stopped.
        "--resume",
        "--checkpoint-dir", f"{meta.ARTIFACTS_MOUNT}/.checkpoints/{version}",
    ]  # fmt: skip
    return args


def training_job(cm: ChatModel, version: str, config: Config) -> Obj:
    ft = cm.spec.fine_tune
    if ft is None:
        raise ValueError(f"{cm.metadata.name}: no spec.fineTune, so no training Job")
    sources = Mounts()
    base = sources.resolve(cm.spec.base_model.source)
    data = sources.resolve(ft.dataset.source)
    validation = sources.resolve(ft.dataset.validation_source) if ft.dataset.validation_source else None
    scratch_vols, scratch_mounts = meta.scratch_volumes("1Gi")
    artifacts = {"name": "artifacts", "persistentVolumeClaim": {"claimName": meta.pvc_name(cm)}}
    container: Obj = {
        "name": "trainer",
        "image": ft.image or config.runtime_image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["chatmodel"],
        "args": train_args(ft, base, data, validation, version),
        "env": meta.base_env(),
        "resources": meta.resources(ft.resources.gpu, ft.resources.cpu, ft.resources.memory),
        "securityContext": meta.container_security_context(),
        # The trainer writes a JSON summary (or the failure reason) here; the operator reads it back.
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "artifacts", "mountPath": meta.ARTIFACTS_MOUNT},
            *scratch_mounts,
            *sources.mounts,
        ],
    }
    pod_labels = meta.labels(cm, "training", version)
    pod = meta.pod_spec(
        config,
        [container],
        [artifacts, *scratch_vols, *sources.volumes],
        restartPolicy="Never",
        nodeSelector=dict(ft.node_selector),
        tolerations=meta.tolerations(ft.tolerations, ft.resources.gpu),
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta.metadata(cm, meta.job_name(cm, version), "training", version),
        "spec": {
            "backoffLimit": ft.backoff_limit,
            "activeDeadlineSeconds": ft.active_deadline_seconds,
            "template": {"metadata": {"labels": pod_labels}, "spec": pod},
        },
    }
