"""The `lmms_eval.models` entry point: lmms-eval reads `MANIFEST` and imports the chat class only when `--model hicom`
is asked for."""

from lmms_eval.models.registry_v2 import ModelManifest

MANIFEST = ModelManifest(model_id="hicom", chat_class_path="lmms_eval_hicom.model.Hicom")
