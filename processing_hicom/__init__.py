"""HICom processors (`HicomVideoProcessor` for frames, `HicomProcessor` for prompt, pixels and instruction) and the
`video-text-to-text` pipeline.

Importing the package registers `HicomProcessor` with `AutoProcessor`, `HicomVideoProcessor` with `AutoVideoProcessor`
and (through `processing_hicom`) the pipeline task in this process, so that a converted folder loads with these classes
without `trust_remote_code`; a folder saved with them also carries them as remote code for processes that never import
this package, where loading the processor registers the task.
"""

from transformers import AutoProcessor

# Imported from its module: without torchvision (no CPU build of it here) transformers' top-level `AutoVideoProcessor`
# is a placeholder that raises, while the class itself loads and registers video processors without it.
from transformers.models.auto.video_processing_auto import AutoVideoProcessor

from modeling_hicom import HicomConfig

from .pipeline_hicom import TASK, VideoTextToTextPipeline, register_pipeline
from .processing_hicom import MODEL_CONFIG_FIELDS, TOKEN_COUNT_FIELDS, HicomProcessor, num_video_tokens
from .video_processing_hicom import HicomVideoProcessor, VideoSampling, load_video

AutoProcessor.register(HicomConfig, HicomProcessor, exist_ok=True)
AutoVideoProcessor.register(HicomConfig, HicomVideoProcessor, exist_ok=True)

__all__ = ["MODEL_CONFIG_FIELDS", "TASK", "TOKEN_COUNT_FIELDS", "HicomProcessor", "HicomVideoProcessor",
           "VideoSampling", "VideoTextToTextPipeline", "load_video", "num_video_tokens", "register_pipeline"]
