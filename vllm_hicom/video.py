"""The `hicom` video loader: vLLM fetches a video (file, http(s) or base64 `data:` URL) and hands its bytes here.

Decoding and frame selection are `processing_hicom`'s `load_video`, the same function `HicomVideoProcessor` uses, so
a video served by vLLM gives the frames that transformers' `HicomProcessor` gives. The loader is registered for the
`HicomVideoProcessor` class, which a converted folder names in its video processor config, so vLLM picks it without
any flag. Sampling options come from vLLM's `media_io_kwargs` (server: `--media-io-kwargs '{"video": {...}}'`; per
request: the `media_io_kwargs` field): `num_frames` (default 32, the released setting), or `fps`, `start`, `end`,
`max_frames`.
"""

import io
from typing import Any

import numpy as np
from vllm.multimodal.video import VIDEO_LOADER_REGISTRY, VideoLoader

from processing_hicom.video_processing_hicom import load_video

VIDEO_BACKEND = "hicom"


@VIDEO_LOADER_REGISTRY.register(VIDEO_BACKEND, video_processor="HicomVideoProcessor")
class HicomVideoLoader(VideoLoader):
    @classmethod
    def load_bytes(
        cls, data: bytes, num_frames: int = 32, fps: float | None = None, start: float | None = None,
        end: float | None = None, max_frames: int | None = None, **kwargs,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """`(frames (T, H, W, 3) uint8, metadata)`; `metadata["padded_frames"]` black frames are still to be appended
        (as `HicomVideoProcessor` does) when the clip is shorter than `num_frames`. vLLM always passes a `num_frames`
        (its own default is 32), so an `fps` given alongside takes precedence. A video that cannot be decoded raises
        `ValueError`, which the server answers with HTTP 400."""
        if fps is not None:
            num_frames = None
        frames, metadata = load_video(
            io.BytesIO(data), num_frames=num_frames, fps=fps, start=start, end=end, max_frames=max_frames
        )
        return frames, {
            "total_num_frames": metadata.total_num_frames,
            "fps": metadata.fps,
            "duration": metadata.duration,
            "frames_indices": metadata.indices,
            "padded_frames": metadata.padded_frames,
            "video_backend": VIDEO_BACKEND,
            "do_sample_frames": False,
        }
