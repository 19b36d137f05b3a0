"""The fine-tune workload: runs `chatmodel train` and writes the version's artifact to the PVC.

One device: a Job whose pod runs `chatmodel train`. One node with several GPUs: the same pod runs it
under `torchrun --nproc-per-node=GPUS`. Several nodes: an Indexed Job (one pod per node, the node rank
from its completion index) plus a headless Service that gives pod 0 the DNS name every node meets at.
engine kubeflow: a Kubeflow Trainer TrainJob, which builds the pods and the rendezvous itself. With a
Kueue queue the workload starts suspended and labelled, so Kueue admits all its pods at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatmodel_operator.builders import meta
from chatmodel_operator.builders.meta import Obj
from chatmodel_operator.builders.sources import Mounts, remote_env
from chatmodel_operator.config import Config
from chatmodel_operator.spec import ChatModel, FineTune

TERMINATION_LOG = "/dev/termination-log"
DEFAULT_VALIDATION_SPLIT = 0.1
RENDEZVOUS_PORT = 29500
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
TRAINJOB_API = "trainer.kubeflow.org/v1alpha1"
KUBEFLOW_RUNTIME = "torch-distributed"  # the ClusterTrainingRuntime Kubeflow Trainer installs
KUBEFLOW_NODE = "node"  # that runtime's replicated job and container name
PATCH_MANAGER = f"{meta.DOMAIN}/operator"


@dataclass(frozen=True)
class Launch:
    """How a training container starts: command, args and the environment torchrun reads (PET_*)."""

    command: list[str]
    args: list[str]
    env: list[Obj]


def procs_per_node(ft: FineTune) -> int:
    return max(ft.resources.gpu, 1)  # one worker per GPU; one (gloo) worker on a CPU node


def launch(ft: FineTune, train: list[str], master: str | None) -> Launch:
    """The one place the launch line is rendered. `master` is pod 0's address (several nodes only);
    None means the rendezvous is someone else's job (one node, or Kubeflow Trainer, which sets PET_*)."""
    nodes, procs = ft.resources.nodes, procs_per_node(ft)
    if ft.engine == "job" and nodes == 1 and procs == 1:
        return Launch(["chatmodel"], train, [])
    worker = ["--no-python", "chatmodel", *train]  # torchrun runs the unchanged CLI on every worker
    if ft.engine == "kubeflow":
        return Launch(["torchrun"], worker, [])
    if nodes == 1:
        return Launch(["torchrun"], ["--standalone", f"--nproc-per-node={procs}", *worker], [])
    index: Obj = {"fieldRef": {"fieldPath": f"metadata.annotations['{meta.COMPLETION_INDEX_ANNOTATION}']"}}
    env: list[Obj] = [
        {"name": "PET_NNODES", "value": str(nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(procs)},
        {"name": "PET_NODE_RANK", "valueFrom": index},
        {"name": "PET_MASTER_ADDR", "value": master},
        {"name": "PET_MASTER_PORT", "value": str(RENDEZVOUS_PORT)},
    ]
    return Launch(["torchrun"], worker, env)


def rendezvous_service_name(cm: ChatModel, version: str) -> str:
    return meta.job_name(cm, version)


def master_address(cm: ChatModel, version: str) -> str:
    """Pod 0 of an Indexed Job is named <job>-0; with `subdomain` set, <job>-0.<service> resolves to it."""
    return f"{meta.job_name(cm, version)}-0.{rendezvous_service_name(cm, version)}"


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


def _fine_tune(cm: ChatModel) -> FineTune:
    if cm.spec.fine_tune is None:
        raise ValueError(f"{cm.metadata.name}: no spec.fineTune, so no training workload")
    return cm.spec.fine_tune


def _queued(cm: ChatModel, obj: Obj) -> Obj:
    """Kueue admits a suspended workload carrying its queue label (and unsuspends it)."""
    queue = _fine_tune(cm).queue_name
    if queue:
        obj["metadata"]["labels"][QUEUE_LABEL] = queue
        obj["spec"] = {"suspend": True, **obj["spec"]}
    return obj


def _unique(env: list[Obj]) -> list[Obj]:
    """One entry per variable name, the last given winning."""
    return list({e["name"]: e for e in env}.values())


@dataclass(frozen=True)
class _Pod:
    """The trainer container and its volumes, shared by the Job and the TrainJob."""

    container: Obj
    volumes: list[Obj]


def _trainer_pod(cm: ChatModel, version: str, config: Config, master: str | None) -> _Pod:
    ft = _fine_tune(cm)
    sources = Mounts()
    base = sources.resolve(cm.spec.base_model.source)
    data = sources.resolve(ft.dataset.source)
    validation = sources.resolve(ft.dataset.validation_source) if ft.dataset.validation_source else None
    scratch_vols, scratch_mounts = meta.scratch_volumes("1Gi")
    artifacts = {"name": "artifacts", "persistentVolumeClaim": {"claimName": meta.pvc_name(cm)}}
    run = launch(ft, train_args(ft, base, data, validation, version), master)
    container: Obj = {
        "name": "trainer",
        "image": ft.image or config.runtime_image_for(ft.resources.gpu),
        "imagePullPolicy": config.image_pull_policy,
        "command": run.command,
        "args": run.args,
        # The dataset's store settings first: where both are on one kind of store, the model's win.
        "env": [
            *meta.base_env(),
            *_unique(
                remote_env(ft.dataset, ft.dataset.source)
                + remote_env(cm.spec.base_model, cm.spec.base_model.source)
            ),
            *run.env,
        ],
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
    return _Pod(container, [artifacts, *scratch_vols, *sources.volumes])


def training_job(cm: ChatModel, version: str, config: Config) -> Obj:
    ft = _fine_tune(cm)
    nodes = ft.resources.nodes
    name = meta.job_name(cm, version)
    pod = _trainer_pod(cm, version, config, master_address(cm, version) if nodes > 1 else None)
    pod_spec = meta.pod_spec(
        config,
        [pod.container],
        pod.volumes,
        restartPolicy="Never",
        nodeSelector=dict(ft.node_selector),
        tolerations=meta.tolerations(ft.tolerations, ft.resources.gpu),
        subdomain=rendezvous_service_name(cm, version) if nodes > 1 else None,
    )
    spec: Obj = {
        "backoffLimit": ft.backoff_limit,
        "activeDeadlineSeconds": ft.active_deadline_seconds,
        "template": {"metadata": {"labels": meta.labels(cm, "training", version)}, "spec": pod_spec},
    }
    if nodes > 1:  # one pod per node, each knowing its index; all must run at once
        spec = {"completionMode": "Indexed", "completions": nodes, "parallelism": nodes, **spec}
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta.metadata(cm, name, "training", version),
        "spec": spec,
    }
    return _queued(cm, job)


def rendezvous_service(cm: ChatModel, version: str) -> Obj:
    """Headless, and publishing pods before they are ready: workers look pod 0 up while it starts."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta.metadata(cm, rendezvous_service_name(cm, version), "training", version),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": meta.selector(cm, "training", version),
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }


def train_job(cm: ChatModel, version: str, config: Config) -> Obj:
    """A Kubeflow Trainer TrainJob on the torch-distributed runtime. Our volumes, scheduling and
    security settings reach its pods through a runtime patch (the fields Trainer lets a TrainJob set)."""
    ft = _fine_tune(cm)
    pod = _trainer_pod(cm, version, config, None)
    c = pod.container
    node_pod: Obj = {
        "securityContext": meta.pod_security_context(config),
        "volumes": pod.volumes,
        "containers": [
            {
                "name": KUBEFLOW_NODE,
                "securityContext": c["securityContext"],
                "volumeMounts": c["volumeMounts"],
            }
        ],
    }
    if ft.node_selector:
        node_pod["nodeSelector"] = dict(ft.node_selector)
    tolerations = meta.tolerations(ft.tolerations, ft.resources.gpu)
    if tolerations:
        node_pod["tolerations"] = tolerations
    replicated = {"name": KUBEFLOW_NODE, "template": {"spec": {"template": {"spec": node_pod}}}}
    trainjob = {
        "apiVersion": TRAINJOB_API,
        "kind": "TrainJob",
        "metadata": meta.metadata(cm, meta.job_name(cm, version), "training", version),
        "spec": {
            "runtimeRef": {"name": KUBEFLOW_RUNTIME},
            "activeDeadlineSeconds": ft.active_deadline_seconds,
            "trainer": {
                "image": c["image"],
                "command": c["command"],
                "args": c["args"],
                "env": c["env"],
                "numNodes": ft.resources.nodes,
                "numProcPerNode": procs_per_node(ft),
                "resourcesPerNode": c["resources"],
            },
            "runtimePatches": [
                {
                    "manager": PATCH_MANAGER,
                    "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [replicated]}}},
                }
            ],
        },
    }
    return _queued(cm, trainjob)


def training_workload(cm: ChatModel, version: str, config: Config) -> list[Obj]:
    """What trains one version: a TrainJob, or a Job plus (across nodes) its rendezvous Service."""
    ft = _fine_tune(cm)
    if ft.engine == "kubeflow":
        return [train_job(cm, version, config)]
    job = training_job(cm, version, config)
    return [job, rendezvous_service(cm, version)] if ft.resources.nodes > 1 else [job]
