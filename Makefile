# Two commands from a fresh clone: `make demo` and `make test`. Each does its own set-up in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0
# PyPI's Linux torch wheels are CUDA builds (several GB of nvidia-* packages). On a machine without an NVIDIA driver
# (no nvidia-smi) the CPU build (`+cpu`, which pip prefers to PyPI's) is taken from PyTorch's CPU index; where that
# index cannot be reached, pip says so and installs from its other indexes. Choose yourself with
# `make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128` (a CUDA build) or `TORCH_INDEX=` (pip's default).
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,https://download.pytorch.org/whl/cpu)

.PHONY: setup demo test bench-quick

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))

$(VENV)/.installed: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q -e ".[test,quant,bench]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/hicom-video-qa

test: setup
	$(BIN)/python -m pytest -q

bench-quick: setup
	for script in benchmarks/*.py; do $(BIN)/python $$script --quick || exit 1; done
