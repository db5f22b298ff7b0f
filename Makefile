# Two entry points for a fresh machine: `make demo` (main job on the embedded Digits data) and
# `make test`. Both create .venv when missing and install the package with the CPU constraints.
# `python -m accelerate.commands.launch` is `accelerate launch`; the module form imports no timm before
# the package's torchvision fix, which CPU-only torch beside PyPI's CUDA torchvision needs.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= cpu,test
BIN := $(VENV)/bin
# accelerate launch would otherwise pin CPU runs to one thread.
THREADS ?= $(shell nproc)
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints-cpu.txt
	$(BIN)/python -m pip install -c constraints-cpu.txt -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/python -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision no \
		--dynamo_backend no --num_cpu_threads_per_process $(THREADS) examples/train_ucdir.py $(ARGS)

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)
