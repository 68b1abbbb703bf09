"""HICom processors: `HicomVideoProcessor` (frames) and `HicomProcessor` (prompt, pixels and instruction)."""

from .processing_hicom import HicomProcessor
from .video_processing_hicom import HicomVideoProcessor

__all__ = ["HicomProcessor", "HicomVideoProcessor"]
