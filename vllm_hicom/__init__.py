"""vLLM plugin for HICom: `vllm serve <converted HICom folder>` with videos.

vLLM finds this package through the `vllm.general_plugins` entry point and calls `register()` in every process it
starts (API server, engine, workers). Nothing here is imported by the Hub remote code (`modeling_hicom/`,
`processing_hicom/`), which stays free of vLLM.
"""

ARCHITECTURE = "HicomForConditionalGeneration"


def register() -> None:
    """Make HICom known to transformers' Auto classes and to vLLM (model class, multimodal processor, video loader).

    Importing `modeling_hicom` / `processing_hicom` registers `HicomConfig` and `HicomProcessor` with `AutoConfig` /
    `AutoProcessor`, so a converted folder loads without `--trust-remote-code`. The model class is registered lazily
    (by import path) so that processes that never build the model do not import it.
    """
    from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING_NAMES
    from vllm import ModelRegistry

    from modeling_hicom import HicomConfig  # registers HicomConfig with AutoConfig
    from processing_hicom import HicomVideoProcessor  # registers HicomProcessor with AutoProcessor

    from . import video  # noqa: F401  (registers the "hicom" video loader)

    # vLLM picks a model's video loader from its video processor's class name, which it looks up in the folder's
    # `(video_)preprocessor_config.json` or, failing that, in transformers' model-type table. transformers 5 saves the
    # video processor inside `processor_config.json`, so the model type is named here (for "hicom" only).
    VIDEO_PROCESSOR_MAPPING_NAMES.setdefault(HicomConfig.model_type, HicomVideoProcessor.__name__)
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "vllm_hicom.model:HicomForConditionalGeneration")
