"""The images `make images` builds, run for real with podman (issue #11): the runtime serves the built-in
model to the official openai client and drains on SIGTERM; it fine-tunes with a mounted output volume;
the operator image reconciles a ChatModel against kmock; every image runs as a non-root user."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest

from chatmodel_serving.launch import free_port
from tests.e2e.podman import OPERATOR, ROOT, RUNTIME, TRITON, podman, run_args, size_mb

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

MODEL = "smollm2-135m"
NS = "e2e"
DEMO_DATA = "/opt/chatmodel/site/chatmodel_serving/data/tidewell-faq.jsonl"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CHATMODEL_CACHE as a volume (the root is read-only); shared so the GGUF is converted once."""
    d = tmp_path_factory.mktemp("cache")
    d.chmod(0o777)  # the image's user (1000) writes it
    return d


def writable(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o777)
    return d


def wait_for(url: str, container: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if podman("inspect", "--format", "{{.State.Running}}", container).stdout.strip() != "true":
            break
        time.sleep(1)
    logs = podman("logs", container, check=False)
    raise AssertionError(f"{url} never answered 200:\n{logs.stdout[-3000:]}\n{logs.stderr[-3000:]}")


def openai_client(port: int) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)


@pytest.fixture
def container_name(request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"chatmodel-e2e-{request.node.name.replace('_', '-')}"
    podman("rm", "-f", name, check=False)
    yield name
    podman("rm", "-f", name, check=False)


def test_runtime_serves_openai_then_drains_on_sigterm(cache: Path, container_name: str) -> None:
    port = free_port()
    cmd = ["serve", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--log-format", "text"]
    podman(*run_args(RUNTIME, cmd, ["-v", f"{cache}:/var/cache/chatmodel"], name=container_name))
    wait_for(f"http://127.0.0.1:{port}/ready", container_name)
    client = openai_client(port)
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "What is the capital of France?"}
    ]

    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0)
    assert reply.choices[0].message.content and reply.usage and reply.usage.completion_tokens > 0
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=16, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == reply.choices[0].message.content  # greedy: the same answer either way

    # SIGTERM (what `podman stop` and the kubelet send) while a request streams: it finishes, exit 0.
    first_chunk = threading.Event()
    result: dict[str, Any] = {}

    def stream() -> None:
        parts, reason = [], None
        for c in client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Tell a long story."}],
            max_tokens=48,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        ):
            if c.choices:
                parts.append(c.choices[0].delta.content or "")
                reason = c.choices[0].finish_reason or reason
                first_chunk.set()
        result.update(text="".join(parts), reason=reason)

    worker = threading.Thread(target=stream)
    worker.start()
    assert first_chunk.wait(timeout=120)
    stopper = threading.Thread(target=podman, args=("stop", "-t", "90", container_name))
    stopper.start()
    time.sleep(0.5)
    assert httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 503  # draining
    worker.join(timeout=120)
    stopper.join(timeout=120)
    assert result["reason"] == "length" and result["text"], result
    state = podman("inspect", "--format", "{{.State.ExitCode}}", container_name).stdout.strip()
    assert state == "0", podman("logs", container_name).stderr[-3000:]
    assert "draining" in podman("logs", container_name).stderr


def test_runtime_trains_into_a_mounted_volume(cache: Path, tmp_path: Path) -> None:
    out = writable(tmp_path / "out")
    cmd = ["train", "--data", DEMO_DATA, "--output", "/out/model", "--max-steps", "2", "--progress", "json"]
    cmd += ["--termination-message-path", "/out/termination-log"]
    volumes = ["-v", f"{cache}:/var/cache/chatmodel", "-v", f"{out}:/out"]
    podman(*run_args(RUNTIME, cmd, volumes), timeout=900)
    metrics = json.loads((out / "model" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["train_loss"] > 0
    summary = json.loads((out / "termination-log").read_text())  # what the operator reads from the pod
    assert summary["steps"] == 2 and summary["output"] == "/out/model"


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "kmock", "cluster": {"server": server}}],
                "users": [{"name": "e2e", "user": {"token": "e2e"}}],
                "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "e2e"}}],
                "current-context": "kmock",
            }
        )
    )
    path.chmod(0o644)
    return path


def test_operator_image_reconciles_a_chatmodel_on_kmock(tmp_path: Path, container_name: str) -> None:
    port, metrics_port, health_port = free_port(), free_port(), free_port()
    api = f"http://127.0.0.1:{port}"
    emulator = subprocess.Popen([sys.executable, "-m", "tests.e2e.kmock_server", str(port)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{api}/api/v1/namespaces", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        config = kubeconfig(writable(tmp_path / "kube") / "config", api)
        options = ["-v", f"{config}:/kube/config:ro", "-e", "KUBECONFIG=/kube/config"]
        for var, value in (("METRICS_PORT", metrics_port), ("HEALTH_PORT", health_port)):
            options += ["-e", f"CHATMODEL_{var}={value}"]
        podman(*run_args(OPERATOR, [], options, name=container_name))
        wait_for(f"http://127.0.0.1:{health_port}/healthz", container_name, timeout=120)
        cm = {
            "apiVersion": "chatmodel.dev/v1alpha1",
            "kind": "ChatModel",
            "metadata": {"name": "bot", "namespace": NS, "uid": "uid-bot", "generation": 1},
            "spec": {"baseModel": {"source": "builtin://smollm2-135m"}},
        }
        created = httpx.post(f"{api}/apis/chatmodel.dev/v1alpha1/namespaces/{NS}/chatmodels", json=cm)
        assert created.status_code < 300, created.text
        deployments: list[dict[str, Any]] = []
        service = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (deployments and service):
            time.sleep(1)
            deployments = httpx.get(f"{api}/apis/apps/v1/namespaces/{NS}/deployments").json().get("items", [])
            got = httpx.get(f"{api}/api/v1/namespaces/{NS}/services/bot")
            service = got.json() if got.status_code == 200 else None
        assert deployments and service, podman("logs", container_name).stderr[-3000:]
        (dep,) = deployments
        assert dep["metadata"]["ownerReferences"][0]["uid"] == "uid-bot"
        # The operator's default runtime image is the one `make images` builds.
        assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == RUNTIME
        got = httpx.get(f"{api}/apis/chatmodel.dev/v1alpha1/namespaces/{NS}/chatmodels/bot")
        status = got.json()["status"]
        assert status["phase"] in ("Pending", "Deploying")
        assert "chatmodel_operator_" in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    finally:
        emulator.terminate()
        emulator.wait(timeout=30)


@pytest.mark.parametrize("image", [OPERATOR, RUNTIME, TRITON])
def test_image_user_is_non_root(image: str) -> None:
    uid = podman(*run_args(image, ["-c", "import os; print(os.getuid())"], ["--entrypoint", "python3"]))
    assert uid.stdout.strip() == "1000"
    labels = json.loads(podman("image", "inspect", "--format", "{{json .Labels}}", image).stdout)
    assert labels["org.opencontainers.image.version"] == "0.1.0"


def test_operator_image_is_slim_and_has_no_torch() -> None:
    probe = (
        "import importlib.util as u, chatmodel_operator.main; "
        "print(u.find_spec('torch'), u.find_spec('transformers'))"
    )
    found = podman(*run_args(OPERATOR, ["-c", probe], ["--entrypoint", "python3"]))
    assert found.stdout.strip() == "None None"
    sizes = {image: size_mb(image) for image in (OPERATOR, RUNTIME, TRITON)}
    print("\nimage sizes: " + ", ".join(f"{image} {mb:.0f} MB" for image, mb in sizes.items()))
    assert sizes[OPERATOR] < 300


@pytest.fixture
def triton_names() -> Iterator[tuple[str, str]]:
    names = ("chatmodel-e2e-tritonserver", "chatmodel-e2e-triton-front")
    for name in names:
        podman("rm", "-f", name, check=False)
    yield names
    for name in names:
        podman("rm", "-f", name, check=False)


def test_triton_image_serves_through_its_tritonserver(
    cache: Path, tmp_path: Path, triton_names: tuple[str, str]
) -> None:
    """The operator's triton pod, part by part: `triton-repo` writes the repository, `triton-server` runs the
    tritonserver bundled in the image on it, and `serve --backend triton://` answers the openai client."""
    repo = writable(tmp_path / "models")
    volumes = ["-v", f"{cache}:/var/cache/chatmodel", "-v", f"{repo}:/models"]
    write_repo = ["triton-repo", "--out", "/models", "--dtype", "float32", "--device", "cpu"]
    podman(*run_args(TRITON, write_repo, volumes))
    http, grpc, metrics, front = free_port(), free_port(), free_port(), free_port()
    server, front_name = triton_names
    ports = ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    podman(*run_args(TRITON, ["triton-server", "--repo", "/models", *ports], volumes, name=server))
    wait_for(f"http://127.0.0.1:{http}/v2/health/ready", server)
    serve = ["serve", "--host", "127.0.0.1", "--port", str(front), "--backend", f"triton://127.0.0.1:{grpc}"]
    podman(*run_args(TRITON, serve, volumes[:2], name=front_name))
    wait_for(f"http://127.0.0.1:{front}/ready", front_name)
    client = openai_client(front)
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "What is the capital of France?"}
    ]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=16, temperature=0)
    assert reply.choices[0].message.content
    assert "nv_inference_request_success" in httpx.get(f"http://127.0.0.1:{metrics}/metrics").text
