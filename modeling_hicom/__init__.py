"""HICom model: configuration, compressor and transformers model classes (flat, Hub remote-code ready).

Importing the package registers the classes with transformers' Auto classes, so a converted folder loads without
`trust_remote_code` in a process that has this package (with `trust_remote_code=True`, the folder's own copy runs).
This file is not part of the remote code: saving a model copies `modeling_hicom.py` and the modules it imports
(`register_for_auto_class`). `relevance_hicom.py` is installed with the package but not shipped to the Hub: it reads
the compressor's attention outputs for a visualisation, which loading and running the model never needs.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText

from .compressor_hicom import HicomCompressor, window_index
from .configuration_hicom import HicomConfig
from .modeling_hicom import HicomForConditionalGeneration, HicomModel, HicomPreTrainedModel, HicomVideoFeaturesOutput
from .relevance_hicom import (
    FrameShare,
    VideoRelevance,
    frame_box,
    global_relevance,
    local_relevance,
    patch_map_to_pixels,
    relevance_maps,
)

AutoConfig.register(HicomConfig.model_type, HicomConfig, exist_ok=True)
AutoModel.register(HicomConfig, HicomModel, exist_ok=True)
AutoModelForImageTextToText.register(HicomConfig, HicomForConditionalGeneration, exist_ok=True)

__all__ = [
    "FrameShare",
    "HicomCompressor",
    "HicomConfig",
    "HicomForConditionalGeneration",
    "HicomModel",
    "HicomPreTrainedModel",
    "HicomVideoFeaturesOutput",
    "VideoRelevance",
    "frame_box",
    "global_relevance",
    "local_relevance",
    "patch_map_to_pixels",
    "relevance_maps",
    "window_index",
]
