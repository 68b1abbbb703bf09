"""HICom model: configuration, compressor and transformers model classes (flat, Hub remote-code ready)."""

from .compressor_hicom import HicomCompressor, window_index
from .configuration_hicom import HicomConfig
from .modeling_hicom import HicomForConditionalGeneration, HicomModel, HicomPreTrainedModel, HicomVideoFeaturesOutput

__all__ = [
    "HicomCompressor",
    "HicomConfig",
    "HicomForConditionalGeneration",
    "HicomModel",
    "HicomPreTrainedModel",
    "HicomVideoFeaturesOutput",
    "window_index",
]
