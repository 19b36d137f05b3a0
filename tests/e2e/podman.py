"""podman as it works on these machines (docs/images.md): our containers.conf (no default ulimits), the
cgroupfs manager, runc, host networking (servers listen on loopback ports of the host)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.tools import missing, need_binary

ROOT = Path(__file__).resolve().parents[2]
VERSION = "0.1.0"
OPERATOR = f"ghcr.io/chatmodel/operator:{VERSION}"
RUNTIME = f"ghcr.io/chatmodel/runtime:{VERSION}"
TRITON = f"ghcr.io/chatmodel/runtime-triton:{VERSION}"


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CONTAINERS_CONF=str(ROOT / "images" / "containers.conf"))
    cmd = [need_binary("podman", "make image-tools"), "--cgroup-manager=cgroupfs", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def run_args(
    image: str, command: Sequence[str], options: Sequence[str] = (), name: str | None = None
) -> list[str]:
    """`podman run` of an image the way a restricted pod runs it: read-only root, no capabilities."""
    if podman("image", "exists", image, check=False).returncode != 0:
        missing(f"image {image}", "make images")
    opts = ["run", "--runtime", "/usr/sbin/runc", "--network", "host", "--read-only"]
    opts += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    opts += ["--name", name, "-d"] if name else ["--rm"]
    return [*opts, *options, image, *command]


def size_mb(image: str) -> float:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip()) / 1e6
