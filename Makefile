# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv, install, run the whole pipeline on the embedded corpus
#   make test   - create .venv, install, run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch; on a CPU box this keeps pip from pulling a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test test-gpu bench install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)" || echo "note: $(TORCH_PIN) not available here; torch comes from the project's dependencies"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/gpt1 demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-gpu: $(VENV)/.installed
	$(PY) -m pytest -q -m gpu

bench: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[plot]"
	$(VENV)/bin/gpt1 bench all --plot

clean:
	rm -rf $(VENV) demo-out .pytest_cache

# One prepared, offline, time-boxed check on a GPU machine (see benchmarks/gpu_check.py):
#   make gpu-check                      - kernels' correctness, the model step, pytest, benchmarks
#   make gpu-check GPU_CHECK_DRY=1      - the same control flow on the CPU in about a minute
# It installs nothing: the system python3 (with CUDA torch and triton) imports the working tree.
# The dry run uses .venv/bin/python when it exists (the .venv's torch is a CPU build).
GPU_CHECK_DRY ?=
GPU_CHECK_MINUTES ?= 9
ifeq ($(filter 1 yes true,$(GPU_CHECK_DRY)),)
GPU_PYTHON ?= $(PYTHON)
GPU_CHECK_OUT ?= benchmarks/results
else
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
GPU_CHECK_OUT ?= build/gpu-check-dry
endif

.PHONY: gpu-check
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py --out "$(GPU_CHECK_OUT)" --minutes "$(GPU_CHECK_MINUTES)" $(if $(filter 1 yes true,$(GPU_CHECK_DRY)),--dry-run)
