"""HICom for lmms-eval: the `hicom` chat model, an offline test task, and a results-to-table script.

Installed with `pip install -e ".[eval]"` (lmms-eval finds the model through its `lmms_eval.models` entry point).
Only `model` imports lmms-eval; `table` runs anywhere.
"""

from pathlib import Path

# `--include_path` for the tasks shipped here (the offline plumbing check `hicom_offline`).
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
