# Two commands from a fresh clone: `make demo` and `make test`. Each does its own set-up in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench-quick

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU wheel: an unpinned torch would pull several GB of CUDA packages.
	$(BIN)/pip install -q torch==2.13.0

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
