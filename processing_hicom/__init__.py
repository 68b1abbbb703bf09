"""HICom processors (`HicomVideoProcessor` for frames, `HicomProcessor` for prompt, pixels and instruction) and the
`video-text-to-text` pipeline.

Importing the package registers `HicomProcessor` with `AutoProcessor` and (through `processing_hicom`) the pipeline
task in this process; a folder saved with them also carries them as remote code for processes that never import this
package, where loading the processor registers the task.
"""

from transformers import AutoProcessor

from modeling_hicom import HicomConfig

from .pipeline_hicom import TASK, VideoTextToTextPipeline, register_pipeline
from .processing_hicom import HicomProcessor
from .video_processing_hicom import HicomVideoProcessor

AutoProcessor.register(HicomConfig, HicomProcessor, exist_ok=True)

__all__ = ["TASK", "HicomProcessor", "HicomVideoProcessor", "VideoTextToTextPipeline", "register_pipeline"]
