"""Make a saved folder self-contained Hub remote code: copy the `.py` files and name the classes in `auto_map`.

`save_pretrained` alone copies only the model's module and its relative imports; a HICom folder also needs the
processor, video processor and pipeline modules, wherever the saving code was loaded from (this repository, a
converted folder, or transformers' module cache).
"""

import json
import shutil
from pathlib import Path

CONFIG_AUTO_MAP = {
    "AutoConfig": "configuration_hicom.HicomConfig",
    "AutoModel": "modeling_hicom.HicomModel",
    "AutoModelForImageTextToText": "modeling_hicom.HicomForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_hicom.HicomForConditionalGeneration",
}
# `pipeline("video-text-to-text", model=folder, trust_remote_code=True)` finds the pipeline class through this.
CUSTOM_PIPELINES = {
    "video-text-to-text": {
        "impl": "pipeline_hicom.VideoTextToTextPipeline",
        "pt": ["AutoModelForImageTextToText"],
        "tf": [],
        "type": "multimodal",
    }
}
REMOTE_CODE_FILES = (
    "configuration_hicom.py",
    "compressor_hicom.py",
    "modeling_hicom.py",
    "remote_code.py",
    "relevance_hicom.py",
    "processing_hicom.py",
    "video_processing_hicom.py",
    "pipeline_hicom.py",
)


def _source_dirs(extra_dirs=()) -> list[Path]:
    here = Path(__file__).resolve().parent
    return [here, here.parent / "processing_hicom", *(Path(d) for d in extra_dirs if d and Path(d).is_dir())]


def save_remote_code(folder, extra_dirs=()) -> list[str]:
    """Copy every HICom remote-code file found next to this module, in the repository or in `extra_dirs`.

    Returns the names copied. Also writes `auto_map` and `custom_pipelines` into `config.json` when there is one.
    """
    folder = Path(folder)
    copied = []
    for name in REMOTE_CODE_FILES:
        for directory in _source_dirs(extra_dirs):
            source = directory / name
            if source.is_file():
                if source.resolve() != (folder / name).resolve():
                    shutil.copy(source, folder / name)
                copied.append(name)
                break
    config_file = folder / "config.json"
    if config_file.exists():
        config = json.loads(config_file.read_text())
        config["auto_map"] = {**config.get("auto_map", {}), **CONFIG_AUTO_MAP}
        config["custom_pipelines"] = {**config.get("custom_pipelines", {}), **CUSTOM_PIPELINES}
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return copied
