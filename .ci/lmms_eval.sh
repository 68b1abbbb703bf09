#!/usr/bin/env bash
# CI: the lmms-eval tests in their own venv. lmms-eval's dependencies (datasets, a CUDA torchvision, filelock...) would
# change the project's .venv, so they go in .venv-eval; the main test run skips tests/eval.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-eval
[ -x $VENV/bin/python ] || python3 -m venv $VENV
$VENV/bin/pip install -q --upgrade pip
# torch is pinned in the same resolve: lmms-eval's torchvision would otherwise upgrade it to a CUDA build (GBs).
$VENV/bin/pip install -q torch==2.13.0 -e ".[eval,test]"
# The CUDA torchvision/torchaudio/torchcodec wheels fail to load on a CPU torch and break transformers' imports;
# nothing here needs them (HICom decodes with PyAV).
$VENV/bin/pip uninstall -q -y torchvision torchaudio torchcodec
$VENV/bin/python -m pytest -q tests/eval
