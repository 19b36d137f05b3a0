"""The command line's default paths point into the checkout: `make demo` finds the quickstart sample and
`chatmodel run` of a vLLM manifest finds the .venv-vllm that `make install-vllm` wrote (both broke once when
the modules moved a folder down)."""

from __future__ import annotations

import re

from chatmodel_serving.cli import PROJECT_ROOT, demo, vllm
from tests.tools import ROOT


def test_project_root_is_the_checkout() -> None:
    assert PROJECT_ROOT == ROOT
    assert (PROJECT_ROOT / "pyproject.toml").is_file()


def test_demo_default_manifest_is_the_shipped_quickstart() -> None:
    assert demo.MANIFEST.is_file(), demo.MANIFEST
    assert demo.MANIFEST == ROOT / "manifests" / "samples" / "quickstart.yaml"


def test_vllm_venv_is_where_the_makefile_installs_it() -> None:
    venv = re.search(r"^VLLM_VENV := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert venv, "Makefile names no VLLM_VENV"
    expected = ROOT / venv.group(1) / "bin" / "python"
    assert expected == vllm.VENV_PYTHON
