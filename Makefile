# Two entry points for a fresh machine: `make demo` (main job on the embedded Digits data) and
# `make test` (ruff and the whole suite, as CI runs it). Both create .venv when missing and install the package
# with the CPU constraints. `make test-fast` is the inner loop: the suite without the tests marked slow
# (end-to-end runs and subprocesses), under 90 s on 2 CPU cores.
# `make demo` is the README's `accelerate launch` command. On a CPU-only install (CPU torch beside PyPI's CUDA
# torchvision) it works because the install adds a start-up hook (.pth) that fixes torchvision on its first import.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= cpu,test
BIN := $(VENV)/bin
# accelerate launch would otherwise pin CPU runs to one thread.
THREADS ?= $(shell nproc)
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test test-fast

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml setup.py constraints-cpu.txt tpsnet_plugin/_startup_hook.py
	$(BIN)/python -m pip install -c constraints-cpu.txt -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no \
		--dynamo_backend no --num_cpu_threads_per_process $(THREADS) examples/train_ucdir.py $(ARGS)

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)
