"""Serving objects for `serving.runtime: triton`: the pytorch runtime's Deployment and Service, reshaped.

One pod per replica, three parts sharing an emptyDir with the model repository:
- init container `repo`: `chatmodel triton-repo` writes the repository (python backend on our engine);
- container `triton`: `chatmodel triton-server`, the tritonserver from the nvidia-pytriton wheel, holding
  the weights and the GPU; Triton's own APIs and metrics on its usual ports (HTTP moved off 8000);
- container `server`: `chatmodel serve --backend triton://127.0.0.1:GRPC`, the same OpenAI API on the same
  port as the pytorch runtime, so the ChatModel's endpoint, probes and metrics do not depend on the runtime.
"""

from __future__ import annotations

import copy
import dataclasses

from chatmodel_operator.builders import meta, serving
from chatmodel_operator.builders.meta import Obj
from chatmodel_operator.config import Config
from chatmodel_operator.runtime_args import ServeOptions
from chatmodel_operator.spec import ChatModel

# tritonserver's defaults, except HTTP: the OpenAI front keeps the service port (8000).
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8010, 8001, 8002
PORTS = {"triton-http": HTTP_PORT, "triton-grpc": GRPC_PORT, "triton-metrics": METRICS_PORT}
REPO_DIR = "/models"
REPO_MOUNT = {"name": "model-repo", "mountPath": REPO_DIR}
FRONT_RESOURCES = ("500m", "1Gi")  # a tokenizer and the HTTP API; the weights live in Triton


def repo_args(cm: ChatModel, opts: ServeOptions) -> list[str]:
    """`chatmodel triton-repo` for the engine behind Triton: the same model and engine options as the
    front's `chatmodel serve`, so both sides agree on the queue bound."""
    args = ["triton-repo", "--model", opts.models[0], "--out", REPO_DIR, "--name", cm.metadata.name]
    args += ["--dtype", opts.dtype, "--device", opts.device]
    defaults = ServeOptions()
    if opts.max_batch_size != defaults.max_batch_size:
        args += ["--max-batch-size", str(opts.max_batch_size)]
    if opts.max_waiting_requests != defaults.max_waiting_requests:
        args += ["--max-waiting-requests", str(opts.max_waiting_requests)]
    return args


def _probe(path: str, period: int, failures: int) -> Obj:
    return {
        "httpGet": {"path": path, "port": "triton-http"},
        "periodSeconds": period,
        "timeoutSeconds": 3,
        "failureThreshold": failures,
    }


def deployment(cm: ChatModel, version: str, config: Config, fine_tuned: bool | None = None) -> Obj:
    built = serving.build(cm, version, config, fine_tuned)
    obj, opts = built.deployment, built.options
    pod = obj["spec"]["template"]["spec"]
    base = pod["containers"][0]
    # The front's flags are the pytorch runtime's: the same API options, plus where Triton is.
    front_opts = dataclasses.replace(opts, backend=f"triton://127.0.0.1:{GRPC_PORT}/{cm.metadata.name}")
    front = {
        **copy.deepcopy(base),
        "args": ["serve", *front_opts.to_argv()],
        "resources": meta.resources(0, *FRONT_RESOURCES),
    }
    init = {
        "name": "repo",
        "image": base["image"],
        "imagePullPolicy": base["imagePullPolicy"],
        "command": ["chatmodel"],
        "args": repo_args(cm, opts),
        "env": base["env"],
        "resources": meta.resources(0, "100m", "256Mi"),
        "securityContext": meta.container_security_context(),
        "volumeMounts": [REPO_MOUNT],
    }
    server_args = ["triton-server", "--repo", REPO_DIR, "--http-port", str(HTTP_PORT)]
    server_args += ["--grpc-port", str(GRPC_PORT), "--metrics-port", str(METRICS_PORT)]
    # Triton gets the SIGTERM with the front: it must keep serving the front's in-flight streams as long.
    server_args += ["--exit-timeout", str(config.drain_seconds)]
    triton = {
        **copy.deepcopy(base),
        "name": "triton",
        "args": server_args,
        "ports": [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in PORTS.items()],
        # The weights, the GPU and the model-loading time are Triton's.
        "startupProbe": _probe("/v2/health/live", 5, 120),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "readinessProbe": _probe("/v2/health/ready", 5, 2),
        # Everything the front mounts but the API keys and the certificate: only the front uses them.
        "volumeMounts": [
            *(m for m in base["volumeMounts"] if m["name"] not in ("api-keys", "tls")),
            {**REPO_MOUNT, "readOnly": True},
        ],
    }
    pod["initContainers"] = [init]
    pod["containers"] = [triton, front]
    pod["volumes"].append({"name": "model-repo", "emptyDir": {}})
    return obj


def service(cm: ChatModel, version: str | None, config: Config) -> Obj:
    """The pytorch runtime's Service plus Triton's ports, for clients of Triton's own APIs."""
    obj = serving.service(cm, version, config)
    obj["spec"]["ports"] += [
        {"name": name, "port": port, "targetPort": name, "protocol": "TCP"} for name, port in PORTS.items()
    ]
    return obj
