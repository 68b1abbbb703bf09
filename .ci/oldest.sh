#!/usr/bin/env bash
# The oldest supported transformers (setup.cfg: transformers>=5.19): a second venv with transformers==5.19.0 runs the
# model, processor, converter and pipeline tests. (The newest is what `make test` installs.)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-oldest
OLDEST=5.19.0
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q torch==2.13.0  # the Makefile's pin: a CPU wheel
fi
"$VENV/bin/pip" install -q -e ".[test]" "transformers==$OLDEST"
"$VENV/bin/python" -c "import transformers; assert transformers.__version__ == '$OLDEST', transformers.__version__"
timeout 900 "$VENV/bin/python" -m pytest -q tests/test_modeling.py tests/test_library_conventions.py tests/test_processing.py \
    tests/test_video_processing.py tests/test_conversion.py tests/test_pipeline.py
