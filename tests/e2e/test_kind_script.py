"""tests/e2e/kind.sh needs Docker, kind, kubectl and helm: where one is missing it must skip (exit 0) and
say why, not fail half-way; and the whole script must at least parse."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "e2e" / "kind.sh"


def test_kind_script_parses() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True).returncode == 0


def test_kind_script_skips_cleanly_without_its_tools(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # a PATH with nothing but what the script needs before its checks
    bin_dir.mkdir()
    os.symlink(shutil.which("dirname") or "/usr/bin/dirname", bin_dir / "dirname")
    bash = shutil.which("bash") or "/bin/bash"
    done = subprocess.run(
        [bash, str(SCRIPT)], env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("SKIP tests/e2e/kind.sh: docker is not installed"), done.stdout
