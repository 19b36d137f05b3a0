"""One real control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok) per test session,
with our CRD and the third-party CRDs installed (tests/cluster/devcluster.py; `make install-cluster`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.cluster import build, thirdparty
from tests.cluster.devcluster import LocalCluster
from tests.tools import missing

REPO = Path(__file__).parents[2]
CRD_DIR = REPO / "manifests" / "crds"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    if any(not (build.bin_dir() / b).is_file() for b in build.BINARIES):
        missing("the local control plane's binaries", "make install-cluster")
    c = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        c.start()
        files = [*thirdparty.crd_files(), *sorted(CRD_DIR.glob("*.yaml"))]
        c.kubectl("apply", "--server-side", *(a for f in files for a in ("-f", str(f))))
        names = [yaml.safe_load(f.read_text())["metadata"]["name"] for f in files]
        c.kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in names))
        yield c
    finally:
        c.stop()
