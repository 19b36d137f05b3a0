"""`chatmodel triton-server`: run the tritonserver bundled in the nvidia-pytriton wheel on a repository.

Two details make the bundled server work outside PyTriton (docs/triton.md, "Running the bundled
tritonserver"):
- the python backend looks for `triton_python_backend_stub` in its own folder, but the wheel keeps one
  stub per Python version apart: the one matching this interpreter is copied in (once);
- the stub links libpython dynamically: LD_LIBRARY_PATH must name this interpreter's library folder, or
  it picks up the system's libpython and fails (`_PyModule_Add` ImportError).
The stub's interpreter also ignores PYTHONPATH and starts from the base installation's site-packages, not
a virtual environment's: the launcher names this environment's site folders in CHATMODEL_SITE_DIRS and the
generated model.py puts them first, so chatmodel_serving and torch come from the same environment.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.util
import os
import shutil
import site
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from ..launch import ReadyProcess, ServerProcess, free_port
from .repo import SITE_DIRS_ENV

STUB = "triton_python_backend_stub"


class TritonNotInstalled(RuntimeError):
    pass


def pytriton_root() -> Path:
    """The installed pytriton package folder, found without importing it (its __init__ needs more deps)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotInstalled(
            "tritonserver comes from the nvidia-pytriton wheel: pip install --no-deps nvidia-pytriton==0.7.0"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def backends_dir() -> Path:
    """The backend folder, with the python backend stub for this interpreter in place: in the wheel's own
    folder, or, where that is read-only (a container image), in a copy under the chatmodel cache."""
    root = pytriton_root() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    source = root / "python_backend_stubs" / version / STUB
    if not source.is_file():
        raise TritonNotInstalled(f"nvidia-pytriton ships no python backend stub for Python {version}")
    backends = root / "backends"
    if not os.access(backends / "python", os.W_OK) and not (backends / "python" / STUB).exists():
        from ..fetch.settings import cache_dir

        private = cache_dir() / "triton-backends"
        shutil.copytree(backends, private, dirs_exist_ok=True)
        backends = private
    _place(source, backends / "python" / STUB)
    return backends


def _place(source: Path, target: Path) -> None:
    if target.exists():
        return
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    shutil.copy2(source, tmp)
    tmp.replace(target)  # atomic: a concurrent launcher never sees half a binary


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    # The wheel's bundled libraries too: a stub copied out of the wheel loses its relative RPATH.
    bundled = pytriton_root().parent / "nvidia_pytriton.libs"
    libs = [str(sysconfig.get_config_var("LIBDIR")), str(bundled), env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    # The stub's interpreter is isolated (it ignores PYTHONPATH): the generated model.py adds these
    # site folders itself, .pth files included, so an editable install of chatmodel_serving is found.
    env[SITE_DIRS_ENV] = os.pathsep.join(site.getsitepackages())
    return env


def server_command(
    repo: Path, http_port: int, grpc_port: int, metrics_port: int, exit_timeout: int = 30
) -> list[str]:
    binary = pytriton_root() / "tritonserver" / "bin" / "tritonserver"
    return [
        str(binary),
        f"--model-repository={repo}",
        f"--backend-directory={backends_dir()}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        "--allow-metrics=true",
        # On SIGTERM Triton refuses new requests and waits this long for those in flight (default 30 s).
        f"--exit-timeout-secs={exit_timeout}",
        "--log-verbose=0",
    ]


class TritonProcess(ReadyProcess):
    """`with TritonProcess(repo) as t:` starts tritonserver and waits for /v2/health/ready."""

    what = "tritonserver"

    def __init__(self, repo: Path, log_path: Path | None = None, ready_timeout: float = 300.0):
        super().__init__(log_path, ready_timeout)
        self.repo = repo
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()

    def command(self) -> list[str]:
        return server_command(self.repo, self.http_port, self.grpc_port, self.metrics_port)

    def environment(self) -> dict[str, str]:
        return server_env()

    @property
    def ready_url(self) -> str:
        return f"http://{self.http}/v2/health/ready"

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", required=True, type=Path, help="model repository (chatmodel triton-repo)")
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument(
        "--exit-timeout",
        type=int,
        default=30,
        help="seconds to finish in-flight requests after SIGTERM (match the front's --drain-timeout)",
    )


def run(args: argparse.Namespace) -> int:
    if not args.repo.is_dir():  # told now, not as tritonserver's own error after it starts
        missing = FileNotFoundError(
            errno.ENOENT, "no such folder (chatmodel triton-repo writes one)", str(args.repo)
        )
        missing.add_note("--repo")  # chatmodel_serving.cli.main: `--repo: PATH: no such folder ...`
        raise missing
    try:
        cmd = server_command(
            args.repo.resolve(), args.http_port, args.grpc_port, args.metrics_port, args.exit_timeout
        )
    except TritonNotInstalled as exc:
        print(f"chatmodel triton-server: {exc}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    os.execve(cmd[0], cmd, server_env())  # tritonserver becomes the process: signals reach it directly
    return 0  # not reached


@contextlib.contextmanager
def triton_front(
    work: Path, front_args: list[str], model: str = "builtin://smollm2-135m", dtype: str = "auto"
) -> Iterator[tuple[TritonProcess, ServerProcess]]:
    """A generated repository, tritonserver on it and `chatmodel serve --backend` in front: the whole
    Triton runtime on one machine (tests and benchmarks)."""
    from .repo import write_repo

    write_repo(model, work / "repo", dtype=dtype)
    with TritonProcess(work / "repo", log_path=work / "triton.log") as triton:
        args = ["--model", model, *front_args, "--backend", f"triton://{triton.grpc}"]
        with ServerProcess(args, log_path=work / "front.log") as front:
            yield triton, front
