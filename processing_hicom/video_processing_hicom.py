"""`HicomVideoProcessor`: HICom's frame sampling, exact seek-based decoding and SigLIP pixel preprocessing.

Why a custom video processor rather than a transformers one:
- The reference (docs/inputs.md) samples the *middle* of equal segments, pads each frame to a centred square of the
  mean colour and resizes with PIL's bicubic filter. transformers' video processors sample and resize differently
  (torchvision), so their pixels would not match what the model was trained on.
- `transformers.BaseVideoProcessor` requires torchvision, which has no CPU build here; `VideoProcessorMixin` is its
  torchvision-free half and still gives `save_pretrained` / `from_pretrained` / `register_for_auto_class`.
- Decoding a whole file to keep 32 frames is wasteful on long videos. We demux once (no decoding) to learn every
  frame's timestamp and the keyframes, then seek to the keyframe before each sampled frame and decode only from
  there, skipping the unwanted H.264 frames nothing else is predicted from (most B-frames). The frames are
  bit-identical to those a full sequential decode gives; whenever that cannot be guaranteed
  (no timestamps, a seek that lands elsewhere, a frame that never shows up) we fall back to sequential decoding.

Remote code: this file is copied flat next to the model files, so it imports only numpy, torch, PIL and transformers
(PyAV lazily, when a file is decoded).
"""

import bisect
import contextlib
import io
import math
import os
from dataclasses import asdict, dataclass, fields
from itertools import chain
from typing import TypedDict

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature
from transformers.utils import logging
from transformers.video_processing_utils import VideoProcessorMixin

logger = logging.get_logger(__name__)


@dataclass
class HicomVideoMetadata:
    """Where the frames of one video came from, so that callers (e.g. a relevance map) can place them in time.

    Attributes:
        indices: presentation-order index, in the whole video, of each real (decoded, not padding) frame.
        timestamps: seconds since the video's first frame, one per index; `None` for in-memory frames (no clock).
        fps: the video's average frame rate (frames / duration); `None` for in-memory frames.
        duration: seconds the video lasts, last frame included; `None` for in-memory frames.
        total_num_frames: decodable frames in the whole video (not only in `[start, end)`).
        padded_frames: black frames appended after the real ones to reach `num_frames` (the reference's padding).
        height, width: size of the original frames.
    """

    indices: list[int]
    timestamps: list[float] | None
    fps: float | None
    duration: float | None
    total_num_frames: int
    padded_frames: int
    height: int
    width: int


# --- Frame selection --------------------------------------------------------------------------------------------------
def uniform_indices(num_available: int, num_frames: int) -> list[int]:
    """The reference's "segment middle" sampling: the middle of each of `num_frames` equal segments of `[0, N-1]`.

    `seg = (N-1)/n; idx_i = round((i+0.5)*seg + 1e-6)` (the `1e-6` makes exact halves round up, as the reference does).
    With `N <= n` every frame is taken once (the caller pads): for `N < n` the formula would repeat frames.
    """
    if num_available <= num_frames:
        return list(range(num_available))
    segment = (num_available - 1) / num_frames
    return [round((i + 0.5) * segment + 1e-6) for i in range(num_frames)]


@dataclass(frozen=True)
class VideoSampling:
    """Which frames of a video to keep: the frame-sampling options, defined and validated once.

    `load_video`, `HicomVideoProcessor`, `HicomProcessor` and its `apply_chat_template` take these as keyword arguments
    of the same names and build one `VideoSampling` from them, so an impossible combination fails here, before any file
    is opened, with an error naming the argument.

    Attributes:
        num_frames: segment-middle sampling of this many frames over the clip (`uniform_indices`); a shorter clip gives
            all its frames, then black padding frames up to `num_frames` (see `pad_to_num_frames`).
        fps: instead, one frame every `1/fps` seconds (nearest frame, repeats dropped; never more frames than the video
            has). Exclusive with `num_frames`.
        start / end: seconds from the first frame; only frames shown in `[start, end)` are sampled (a frame is shown
            from its timestamp to the next one's, so a span shorter than a frame still holds one).
        max_frames: cap on the sampled frames (segment-middle subsampling).
        pad_to_num_frames: `False` never pads: a clip shorter than `num_frames` gives its own frames only.
        Neither `num_frames` nor `fps`: every frame of the span (up to `max_frames`).
    """

    num_frames: int | None = None
    fps: float | None = None
    start: float | None = None
    end: float | None = None
    max_frames: int | None = None
    pad_to_num_frames: bool = True

    def __post_init__(self):
        if self.num_frames is not None and self.fps is not None:
            raise ValueError("Give either `num_frames` or `fps`, not both.")
        for name in ("num_frames", "max_frames"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1):
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        for name in ("fps", "start", "end"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
                raise TypeError(f"`{name}` must be a number of {'frames per second' if name == 'fps' else 'seconds'}, "
                                f"got {type(value).__name__}.")
            if not math.isfinite(value) or value < 0 or (name == "fps" and value == 0):
                bound = "> 0" if name == "fps" else ">= 0"
                raise ValueError(f"`{name}` must be a finite number {bound}, got {value!r}.")
        if self.end is not None and self.end <= (self.start or 0):
            raise ValueError(f"`end` ({self.end}) must be greater than `start` ({self.start or 0}).")
        _check_flag("pad_to_num_frames", self.pad_to_num_frames)

    def select(self, timestamps, duration, num_available) -> tuple[list[int], int]:
        """`(indices, padded_frames)`: which of the video's `num_available` frames to keep, and how many black frames
        to append. `timestamps` (seconds, one per frame) and `duration` are `None` for in-memory frames, which have no
        clock: they can only be sampled by count."""
        first, stop = 0, num_available
        if timestamps is None and (self.fps is not None or self.start is not None or self.end is not None):
            raise ValueError("`fps`, `start` and `end` need frame timestamps; in-memory frames have none: sample them "
                             "with `num_frames`.")
        if self.start is not None or self.end is not None:
            start = self.start or 0.0
            if start >= duration:
                raise ValueError(f"`start` ({start} s) is beyond the end of the video ({duration:.3f} s).")
            first = max(bisect.bisect_right(timestamps, start) - 1, 0)
            if self.end is not None:
                stop = bisect.bisect_left(timestamps, self.end)
        span = list(range(first, stop))
        if self.fps is not None:
            span_start = timestamps[first] if self.start is None else self.start
            span_end = duration if self.end is None else min(self.end, duration)
            chosen = []
            for k in range(math.ceil((span_end - span_start) * self.fps - 1e-9)):
                time = span_start + k / self.fps
                i = bisect.bisect_left(timestamps, time, first, stop)
                if i == stop or (i > first and time - timestamps[i - 1] <= timestamps[i] - time):
                    i -= 1
                if not chosen or chosen[-1] != i:
                    chosen.append(i)
            span = chosen or [first]
        limit = self.num_frames
        if self.max_frames is not None:
            limit = self.max_frames if limit is None else min(limit, self.max_frames)
        if limit is not None and len(span) > limit:
            span = [span[i] for i in uniform_indices(len(span), limit)]
        padded = limit - len(span) if self.num_frames is not None and self.pad_to_num_frames else 0
        if padded:
            _warn_padding(len(span), limit, padded)
        return span, padded


SAMPLING_OPTIONS = tuple(option.name for option in fields(VideoSampling))
# Every frame-selection argument the video processor takes: the sampling options, and `do_sample_frames` (which
# `ProcessorMixin.apply_chat_template` sets).
VIDEO_KWARGS = (*SAMPLING_OPTIONS, "do_sample_frames")


def _check_flag(name: str, value) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False, got {value!r}.")


def _warn_padding(num_real: int, num_frames: int, padded: int) -> None:
    """Say, once per distinct case, that black frames were appended. The reference pads a clip shorter than
    `num_frames` with black frames (kept, the model was trained on it), but every padding frame costs LLM tokens and
    carries no content, so the user should know and be told how to get the clip's own frames only."""
    logger.warning_once(
        f"A video has {num_real} frame(s) to sample but {num_frames} were asked for: {padded} black frame(s) were "
        f"appended, as the reference implementation does. Pass `pad_to_num_frames=False` to keep only the video's "
        f"own {num_real} frame(s)."
    )


# --- In-memory frames -------------------------------------------------------------------------------------------------
def _is_pil(value) -> bool:
    return isinstance(value, Image.Image)


def _is_array(value) -> bool:
    return isinstance(value, (np.ndarray, torch.Tensor))


def _is_frame(value) -> bool:
    """One frame inside a list: a PIL image or an (H, W) / (H, W, C) array."""
    return _is_pil(value) or (_is_array(value) and value.ndim in (2, 3))


def _is_file(value) -> bool:
    return hasattr(value, "read")


def _as_numpy(array, name: str) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        if array.is_complex():
            raise TypeError(f"`{name}` must hold uint8, uint16 or float pixels, got a {array.dtype} tensor.")
        array = array.detach().cpu()
        array = (array.float() if array.dtype in (torch.bfloat16, torch.float16) else array).numpy()
    return np.asarray(array)


def _to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    """Pixel values as uint8. Rules, by dtype: uint8 as is; uint16 is a 16-bit range, scaled with rounding
    (`x * 255 / 65535`); other integers must already lie in [0, 255]; floats must lie in [0, 1] (the usual convention
    for float images; a [0, 255] float frame is rejected rather than guessed, cast it to uint8) and are rounded from
    `x * 255`; NaN/inf, booleans, complex, object and string arrays are errors."""
    kind = array.dtype.kind
    if array.dtype == np.uint8:
        return array
    if kind == "u" and array.dtype.itemsize == 2:  # either byte order: 16-bit PNG readers often give big-endian ">u2"
        return ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if kind in "iu":
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(f"`{name}`: {array.dtype} pixels must lie in [0, 255] (uint16 is read as 16-bit), got "
                             f"values in [{array.min()}, {array.max()}].")
        return array.astype(np.uint8)
    if kind == "f":
        if not np.isfinite(array).all():
            raise ValueError(f"`{name}` contains NaN or infinite pixel values.")
        if array.size and (array.min() < 0 or array.max() > 1):
            raise ValueError(f"`{name}`: float pixels must lie in [0, 1], got values in [{array.min():g}, "
                             f"{array.max():g}]; cast 0-255 frames to uint8.")
        return np.rint(array.astype(np.float64) * 255).astype(np.uint8)
    raise TypeError(f"`{name}` must hold uint8, uint16 or float pixels, got dtype {array.dtype}.")


def _to_rgb(frames: np.ndarray, name: str) -> np.ndarray:
    """(T, H, W, C) -> (T, H, W, 3): grayscale (C=1) is replicated, RGBA (C=4) loses its alpha as in PIL's
    `convert("RGB")`."""
    channels = frames.shape[-1]
    if channels == 3:
        return frames
    if channels == 1:
        return np.repeat(frames, 3, axis=-1)
    if channels == 4:
        return frames[..., :3]
    raise ValueError(f"`{name}`: frames must have 1, 3 or 4 channels last (T, H, W, C), got shape {frames.shape}.")


def _pil_frame(image: Image.Image, name: str) -> np.ndarray:
    """A PIL image as (H, W, 3) uint8; 16-bit and float modes keep their range through `_to_uint8`."""
    if image.mode.startswith("I;16") or image.mode == "I":
        array = np.asarray(image)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ValueError(f"`{name}`: 32-bit integer image values must lie in [0, 65535].")
        return np.repeat(_to_uint8(array.astype(np.uint16), name)[..., None], 3, axis=-1)
    if image.mode == "F":
        return np.repeat(_to_uint8(np.asarray(image), name)[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"))


def frames_to_uint8(video, name: str = "videos") -> np.ndarray:
    """In-memory frames as a `(T, H, W, 3)` uint8 array.

    Accepted: a `(T, H, W, C)` array/tensor; a 3-D array, read as one `(H, W, C)` frame when its last axis is 1, 3 or 4
    and as a grayscale `(T, H, W)` clip otherwise; an `(H, W)` grayscale frame; a list of PIL images or of `(H, W)` /
    `(H, W, C)` arrays, all the same size. Channels last only (a channels-first tensor would be ambiguous with a
    narrow frame). Pixel dtypes: see `_to_uint8`; channels: see `_to_rgb`.
    """
    if isinstance(video, (list, tuple)):
        if not video:
            raise ValueError(f"`{name}`: a video given as a list of frames needs at least one frame.")
        frames = []
        for frame in video:
            if _is_pil(frame):
                frames.append(_pil_frame(frame, name))
                continue
            if not _is_frame(frame):
                raise TypeError(f"`{name}`: a list of frames must hold PIL images or (H, W[, C]) arrays, got "
                                f"{type(frame).__name__}{f' of shape {tuple(frame.shape)}' if _is_array(frame) else ''}.")
            array = _as_numpy(frame, name)
            array = array[..., None] if array.ndim == 2 else array
            frames.append(_to_rgb(_to_uint8(array, name)[None], name)[0])
        if len({frame.shape for frame in frames}) > 1:
            raise ValueError(f"`{name}`: all frames of a video must have the same size, got "
                             f"{sorted({frame.shape[:2] for frame in frames})}.")
        array = np.stack(frames)
    elif _is_pil(video):
        array = _pil_frame(video, name)[None]
    elif _is_array(video):
        array = _as_numpy(video, name)
        if array.ndim == 2:
            array = array[None, ..., None]
        elif array.ndim == 3:
            array = array[None] if array.shape[-1] in (1, 3, 4) else array[..., None]
        elif array.ndim != 4:
            raise ValueError(f"`{name}`: a video array must be (T, H, W, C), (H, W, C), (T, H, W) or (H, W); got "
                             f"{array.ndim} dimensions {tuple(array.shape)}.")
        if array.dtype.kind not in "uif":
            raise TypeError(f"`{name}` must hold uint8, uint16 or float pixels, got dtype {array.dtype}.")
        array = _to_rgb(array, name)
        array = _to_uint8(array, name)
    else:
        raise TypeError(f"`{name}`: expected frames (array, tensor, PIL image or list of them), got "
                        f"{type(video).__name__}.")
    if 0 in array.shape:
        raise ValueError(f"`{name}`: a video needs at least one non-empty frame, got shape {array.shape}.")
    return np.ascontiguousarray(array)


def make_batched_videos(videos, name: str = "videos") -> list:
    """Split `videos` into a list of single videos.

    One video: a path (str / os.PathLike), a binary file object, an array/tensor, a PIL image, or a list whose items
    are all *frames* (PIL images or arrays with 2 or 3 dimensions). Anything else that is a list is a batch, each item
    one video as above (so a batch of single-frame videos is a list of `(1, H, W, 3)` arrays or of one-frame lists, and
    a batch of grayscale clips a list of `(T, H, W, 1)` arrays: 3-D arrays inside a list are frames).
    """
    def is_video(value):
        return (isinstance(value, (str, os.PathLike)) or _is_file(value) or _is_array(value) or _is_pil(value)
                or (isinstance(value, (list, tuple)) and bool(value) and all(_is_frame(f) for f in value)))

    if isinstance(videos, (list, tuple)):
        if not videos:
            raise ValueError(f"`{name}` is an empty list.")
        if all(_is_frame(item) for item in videos):
            return [list(videos)]
        bad = [type(item).__name__ for item in videos if not is_video(item)]
        if bad:
            raise TypeError(f"`{name}`: each video must be a path, a binary file object, a (T, H, W, C) array/tensor "
                            f"or a non-empty list of frames; got {', '.join(sorted(set(bad)))}.")
        return list(videos)
    if is_video(videos):
        return [videos]
    raise TypeError(f"`{name}` must be a path, a binary file object, a (T, H, W, C) array/tensor, a list of frames or "
                    f"a list of such videos; got {type(videos).__name__}.")


# --- Decoding ---------------------------------------------------------------------------------------------------------
class _SeekFailed(Exception):
    """The seek-based path could not guarantee the frames of a sequential decode: decode sequentially instead."""


# FFmpeg renders text files (.txt, .nfo, .ans...) as "ANSI art" video streams with these codecs.
_TEXT_ART_CODECS = {"ansi", "bintext", "xbin", "idf"}


# --- Sources: paths and URLs ------------------------------------------------------------------------------------------
DOWNLOAD_TIMEOUT_S = 60
# Downloads stay in memory up to this size, then spill to a temporary file (a video can be larger than memory).
_DOWNLOAD_IN_MEMORY_BYTES = 64 << 20
# A string this long, made of base64 characters only, that names no file is read as raw base64 data (as transformers'
# `load_image` does for images); shorter ones are reported as missing files, since a mistyped path can be valid base64.
_MIN_RAW_BASE64_CHARS = 256


def describe(value, limit: int = 100) -> str:
    """`repr(value)` cut to `limit` characters: arguments can be multi-megabyte base64 strings, and an error message
    that echoes one whole buries the message (and the terminal)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def open_source(source, argument: str, kind: str):
    """What a video or image string names, as a local path (`str`) or a seekable binary file object.

    Accepted: a local path; a `file://` URL; a `data:` URL (`data:video/mp4;base64,...`, what OpenAI-style clients send;
    percent-encoded data too); an `http://` / `https://` URL, downloaded with urllib (a clear error when offline); a
    long raw base64 string. `argument` and `kind` name the input in errors ("videos", "a video").
    """
    text = os.fspath(source)
    scheme = text[:8].lower()
    if scheme.startswith("data:"):
        return _decode_data_url(text, argument)
    if scheme.startswith(("http://", "https://")):
        return _download(text, argument)
    path = text
    if scheme.startswith("file://"):
        import urllib.parse
        import urllib.request

        parts = urllib.parse.urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"`{argument}`: {describe(text)} names a file on another host ({parts.netloc!r}); only "
                             "local `file://` URLs are read.")
        path = urllib.request.url2pathname(parts.path)
    if not os.path.exists(path):
        if path is text and len(text) >= _MIN_RAW_BASE64_CHARS:
            import base64
            import binascii

            try:
                return io.BytesIO(base64.b64decode(text, validate=True))
            except binascii.Error:
                pass
        raise FileNotFoundError(f"`{argument}`: no such file: {describe(path)}.")
    check_not_dir_or_empty(path, argument, kind)
    return path


def _decode_data_url(url: str, argument: str) -> io.BytesIO:
    import base64
    import binascii
    import urllib.parse

    header, comma, payload = url.partition(",")
    if not comma:
        raise ValueError(f"`{argument}`: {describe(url)} is not a data URL (expected `data:<type>;base64,<data>`).")
    if header.lower().endswith(";base64"):
        try:
            data = base64.b64decode(urllib.parse.unquote(payload), validate=True)
        except binascii.Error as error:
            raise ValueError(f"`{argument}`: the base64 data of {describe(url)} is invalid ({error}).") from error
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    if not data:
        raise ValueError(f"`{argument}`: {describe(url)} holds no data.")
    return io.BytesIO(data)


def _download(url: str, argument: str):
    """The body of an http(s) URL, in memory or (when large) in a temporary file. Network failures raise
    `ConnectionError` naming the URL and the reason, so that an offline machine says so instead of "no such file"."""
    import shutil
    import tempfile
    import urllib.error
    import urllib.request

    body = tempfile.SpooledTemporaryFile(max_size=_DOWNLOAD_IN_MEMORY_BYTES)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            shutil.copyfileobj(response, body)
    except urllib.error.HTTPError as error:
        body.close()
        raise ConnectionError(f"`{argument}`: downloading {describe(url)} failed: HTTP {error.code} "
                              f"{error.reason}.") from error
    except (urllib.error.URLError, OSError) as error:
        body.close()
        reason = getattr(error, "reason", error)
        raise ConnectionError(f"`{argument}`: could not download {describe(url)} ({reason}). Without network access, "
                              "download the file elsewhere and pass its local path.") from error
    if body.tell() == 0:
        body.close()
        raise ValueError(f"`{argument}`: {describe(url)} returned no data.")
    body.seek(0)
    return body


def check_not_dir_or_empty(path: str, argument: str, kind: str) -> None:
    """Clear errors for an existing local path that cannot hold a frame: a directory or a zero-byte file. `kind`
    names what the file should be ("a video")."""
    if os.path.isdir(path):
        raise ValueError(f"`{argument}`: {path!r} is a directory, not {kind} file.")
    if os.path.getsize(path) == 0:
        raise ValueError(f"`{argument}`: {path!r} is an empty file.")


class _Source:
    """A video file, URL (see `open_source`) or binary file object that can be opened again (the sequential fallback
    needs a fresh demuxer)."""

    def __init__(self, video):
        if isinstance(video, (str, os.PathLike)):
            self.name = describe(os.fspath(video))
            video = open_source(video, "videos", "a video")
            if isinstance(video, str):
                self.path, self.file = video, None
                return
        elif isinstance(video, io.TextIOBase):
            raise TypeError("`videos`: a file object must be opened in binary mode ('rb').")
        else:
            self.name = describe(getattr(video, "name", None) or f"<{type(video).__name__}>")
        seekable = getattr(video, "seekable", None)
        if not (callable(seekable) and seekable()):
            video = io.BytesIO(video.read())
        self.path, self.file, self.offset = None, video, video.tell()

    def open(self, thread_type: str = "AUTO"):
        """The container and its video stream, decoded with `thread_type` threads (FFmpeg's threading is bit-exact).

        Sequential decoding uses "AUTO" (frame threads: several frames in flight). The seek path uses "SLICE": every
        seek flushes the decoder, and a frame-thread pipeline refilled 32 times per clip costs more than it gains
        (`benchmarks/decode.py`, ablation `seek_frame_threads`: 1.35x slower on 2 cores)."""
        import av

        if self.file is not None:
            self.file.seek(self.offset)
        try:
            container = av.open(self.path if self.file is None else self.file, mode="r")
        except av.FFmpegError as error:
            raise ValueError(f"`videos`: {self.name} is not a readable video file ({error}).") from error
        streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        if not streams:
            container.close()
            raise ValueError(f"`videos`: {self.name} has no video stream.")
        stream = streams[0]
        if stream.codec_context is None:  # e.g. a file cut inside its header: the stream's codec is unknown
            container.close()
            raise ValueError(f"`videos`: {self.name} has a video stream without codec parameters (truncated or "
                             "corrupt file?).")
        if stream.codec_context.name in _TEXT_ART_CODECS:
            container.close()
            raise ValueError(f"`videos`: {self.name} is a text file, not a video.")
        stream.codec_context.thread_type = thread_type
        return container, stream


@dataclass
class _Timeline:
    """The video's frames in presentation order: their timestamps (seconds from the first frame) and the duration."""

    timestamps: list[float] | None
    duration: float | None

    @classmethod
    def from_pts(cls, pts: list, time_base, rate) -> "_Timeline":
        """Timestamps from pts; a missing pts falls back to `index / rate`, and without a rate there is no clock.
        The last frame lasts the median frame interval (1/rate for a single frame)."""
        if pts and None not in pts and time_base is not None:
            times = [float((p - pts[0]) * time_base) for p in pts]
        elif rate:
            times = [i / float(rate) for i in range(len(pts))]
        else:
            return cls(None, None)
        intervals = np.diff(times)
        last = float(np.median(intervals)) if len(intervals) else (1 / float(rate) if rate else 0.0)
        return cls(times, times[-1] + last)


@dataclass
class _PacketIndex:
    """Every frame's pts in presentation order and the keyframes' (pts, dts), from a demux pass without decoding."""

    pts: list[int]
    keyframes: list[tuple[int, int | None]]

    def keyframe_before(self, pts: int) -> tuple[int, int | None]:
        """The last keyframe (by pts) at or before `pts`: decoding from it yields the frame at `pts`."""
        return self.keyframes[bisect.bisect_right([key for key, _ in self.keyframes], pts) - 1]


def _index_packets(container, stream) -> _PacketIndex | None:
    """Demux the video stream once (cheap: no decoding). `None` when the packets cannot predict a sequential decode
    exactly: a missing or repeated pts, a corrupt packet, or a stream that does not start with a keyframe preceding
    every frame (frames before it may be dropped by the decoder)."""
    packets = []
    for packet in container.demux(stream):
        if packet.size == 0 or packet.is_discard:  # flush markers; frames the decoder drops (edit lists)
            continue
        if packet.pts is None or packet.is_corrupt:
            return None
        packets.append((packet.pts, packet.dts, packet.is_keyframe))
    if not packets or not packets[0][2]:
        return None
    pts = sorted(p for p, _, _ in packets)
    if len(set(pts)) != len(pts) or pts[0] < packets[0][0]:
        return None
    return _PacketIndex(pts, sorted(((p, d) for p, d, key in packets if key), key=lambda k: k[0]))


# Codecs whose `skip_frame="NONREF"` drops only frames that no other frame is predicted from. H.264: a picture whose
# slices have nal_ref_idc 0 is never a reference, and FFmpeg's NONREF drops exactly those. Not HEVC: its "sub-layer
# non-reference" pictures may still be referenced by higher temporal sub-layers. Other codecs decode every frame.
_SKIP_NONREF_CODECS = {"h264"}


def _skips_nonref(stream) -> bool:
    """Whether `_frames_after_seek` may skip unwanted non-reference frames of `stream` (see `_SKIP_NONREF_CODECS`)."""
    return stream.codec_context.name in _SKIP_NONREF_CODECS


def _frames_after_seek(container, stream, keyframe: tuple[int, int | None], wanted=frozenset()):
    """Decoded frames from the keyframe `(pts, dts)` on. Seeks by pts, or by dts when the demuxer lands after the
    keyframe (demuxers index by either); landing on an earlier keyframe is only slower.

    Frames whose pts is not in `wanted` are only passed through on the way to a wanted one, so where the codec allows
    it (`_skips_nonref`) their packets are sent with `skip_frame="NONREF"`: non-reference frames (most B-frames) are
    then not decoded nor returned, while every frame another one is predicted from still is, so the frames returned
    are bit-identical to a full decode's. The setting is per packet: FFmpeg's frame threading copies it from this
    context into the worker each time a packet is submitted (`update_context_from_user`; tested with frame threads).
    A sampled frame that still went missing would be caught by the caller (the sequential fallback), which also
    resets the setting (`_decode_by_seeking`)."""
    for target in dict.fromkeys(t for t in keyframe if t is not None):
        container.seek(target, stream=stream, backward=True, any_frame=False)
        packets = container.demux(stream)
        first = next((p for p in packets if p.size), None)
        if first is not None and first.is_keyframe and first.pts is not None and first.pts <= keyframe[0]:
            break
    else:
        raise _SeekFailed(f"seeking to pts {keyframe[0]} did not land on a keyframe at or before it")
    codec = stream.codec_context if wanted and _skips_nonref(stream) else None
    for packet in chain((first,), packets):
        if codec is not None:
            codec.skip_frame = "DEFAULT" if packet.pts is None or packet.pts in wanted else "NONREF"
        yield from packet.decode()


def _frame_pixels(frame, apply_rotation: bool) -> np.ndarray:
    """A decoded frame as `(H, W, 3)` uint8 RGB. With `apply_rotation`, turned the way players show it: phones store
    portrait clips as landscape frames plus a display matrix, whose rotation PyAV gives as `frame.rotation`
    (counter-clockwise degrees; `np.rot90` turns counter-clockwise too). Rounded to quarter turns, as FFmpeg's own
    autorotation does; flips in the matrix are ignored (phones do not write them)."""
    pixels = frame.to_ndarray(format="rgb24")
    turns = round(frame.rotation / 90) % 4 if apply_rotation else 0
    return np.rot90(pixels, turns) if turns else pixels


def progress_bar(total: int | None, desc: str, unit: str):
    """A tqdm bar like transformers' own (`transformers.utils.logging.tqdm`): off when transformers' progress bars
    are disabled (`transformers.utils.logging.disable_progress_bar()`, `HF_HUB_DISABLE_PROGRESS_BARS=1`), and also
    off when stderr is not a terminal (`disable=None`) so that logs stay clean. It appears only once the work has
    lasted a second: short decodes print nothing."""
    return logging.tqdm(total=total, desc=desc, unit=unit, disable=None, delay=1, leave=False)


def _decode_by_seeking(container, stream, index: _PacketIndex, wanted: list[int],
                       apply_rotation: bool = True, progress=None) -> dict[int, np.ndarray]:
    """RGB frames at the sorted pts `wanted`. Seeks to the keyframe before each frame, but keeps decoding forward
    when that keyframe is not past what the decoder has already reached (re-seeking would only redo work)."""
    import av

    frames, decoded, position, targets = {}, None, None, frozenset(wanted)
    try:
        for target in wanted:
            keyframe = index.keyframe_before(target)
            if decoded is None or keyframe[0] > position:
                decoded = _frames_after_seek(container, stream, keyframe, targets)
            for frame in decoded:
                if frame.pts is None:
                    raise _SeekFailed("a decoded frame has no pts")
                position = frame.pts
                if frame.pts == target:
                    frames[target] = _frame_pixels(frame, apply_rotation)
                    if progress is not None:
                        progress.update(1)
                    break
                if frame.pts > target:
                    raise _SeekFailed(f"the frame at pts {target} was not produced after seeking")
            else:
                raise _SeekFailed(f"the stream ended before the frame at pts {target}")
    except av.FFmpegError as error:
        raise _SeekFailed(str(error)) from error
    finally:
        stream.codec_context.skip_frame = "DEFAULT"  # `_frames_after_seek` may have left it at "NONREF"
    return frames


@dataclass
class _Damage:
    """Where decoding had to skip part of a file: the stream times (s) of the packets the decoder rejected, whether
    the demuxer gave up before the end, and the first error."""

    skipped_times: list[float | None]
    stopped_early: bool
    first_error: str


def _decode_sequentially(source: _Source, keep: set[int], apply_rotation: bool = True,
                         progress=None) -> tuple[list, dict[int, np.ndarray], _Damage | None]:
    """Decode every frame (this order of frames is the reference), keeping those whose presentation index is in
    `keep`. Returns the pts of all decoded frames, the kept RGB frames, and what was skipped.

    A damaged file is decoded around its damage, as players do: a packet the decoder rejects is skipped (its frame is
    missing; later frames predicted from it are concealed by FFmpeg), and a container that becomes unreadable ends the
    video there. Only a file where nothing decodes is an error."""
    import av

    container, stream = source.open()
    pts, kept, skipped, stopped_early, errors = [], {}, [], False, []

    def take(frames):
        for frame in frames:
            if len(pts) in keep:
                kept[len(pts)] = _frame_pixels(frame, apply_rotation)
            pts.append(frame.pts)
        if progress is not None:
            progress.update(len(frames))

    with container:
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.FFmpegError as error:
                stopped_early = True
                errors.append(error)
                with contextlib.suppress(av.FFmpegError):  # frames still inside the decoder
                    take(stream.codec_context.decode(None))
                break
            try:
                take(packet.decode())
            except av.FFmpegError as error:
                skipped.append(None if packet.pts is None else float(packet.pts * stream.time_base))
                errors.append(error)
    if errors and not pts:
        raise ValueError(f"`videos`: could not decode {source.name} ({errors[0]}).") from errors[0]
    return pts, kept, (_Damage(skipped, stopped_early, str(errors[0])) if errors else None)


def _warn_damage(name: str, damage: _Damage, num_decoded: int) -> None:
    where = ", ".join("?" if t is None else f"{t:.2f}" for t in damage.skipped_times[:5])
    where += ", ..." if len(damage.skipped_times) > 5 else ""
    parts = [f"skipped {len(damage.skipped_times)} damaged packet(s) at {where} s"] if damage.skipped_times else []
    if damage.stopped_early:
        parts.append("stopped reading where the container became unreadable")
    logger.warning(
        f"{name} is damaged: {' and '.join(parts)} (first error: {damage.first_error}). Frames there are missing or "
        f"concealed; frames were sampled from the {num_decoded} that decoded."
    )


def _stack(frames: list[np.ndarray], name: str) -> np.ndarray:
    if len({frame.shape for frame in frames}) > 1:
        raise ValueError(f"`videos`: the frame size of {name} changes mid-stream; HICom needs one size per video.")
    return np.stack(frames)


def load_video(video, *, apply_rotation=True, **sampling):
    """Sampled frames of one video and where they came from: `(frames (T, H, W, 3) uint8, HicomVideoMetadata)`.

    Args:
        video: a path or binary file object (decoded with PyAV), or in-memory frames (see `frames_to_uint8`).
        apply_rotation: turn frames upright by the file's display matrix (phone clips), as players do; `False` keeps
            the stored orientation, as the reference's decord loader does.
        sampling: the options of `VideoSampling` (`num_frames`, `fps`, `start`, `end`, `max_frames`,
            `pad_to_num_frames`); none of them: every frame. Black padding frames are not appended here:
            `metadata.padded_frames` says how many to append.

    Decoded frames equal, bit for bit, those of a full sequential decode at the same presentation indices.
    """
    sampling = VideoSampling(**sampling)
    _check_flag("apply_rotation", apply_rotation)
    if not (isinstance(video, (str, os.PathLike)) or _is_file(video)):
        frames = frames_to_uint8(video)
        indices, padded = sampling.select(None, None, len(frames))
        return frames[indices], HicomVideoMetadata(indices, None, None, None, len(frames), padded, *frames.shape[1:3])

    import av

    source = _Source(video)
    container, stream = source.open(thread_type="SLICE")
    time_base, rate, announced = stream.time_base, stream.guessed_rate or stream.average_rate, stream.frames
    indices, frames, damage, index = [], None, None, None
    try:
        with container:
            index = _index_packets(container, stream)
            if index is None:
                logger.info(f"{source.name}: packet timestamps cannot locate frames; decoding it sequentially.")
            else:
                pts = index.pts
                timeline = _Timeline.from_pts(pts, time_base, rate)
                indices, padded = sampling.select(timeline.timestamps, timeline.duration, len(pts))
                try:
                    with progress_bar(len(indices), f"Decoding {source.name}", "frame") as progress:
                        decoded = _decode_by_seeking(container, stream, index, [pts[i] for i in indices],
                                                     apply_rotation, progress)
                    frames = [decoded[pts[i]] for i in indices]
                except _SeekFailed as reason:
                    logger.warning(f"Seeking in {source.name} failed ({reason}); decoding it sequentially instead.")
    except av.FFmpegError as error:
        raise ValueError(f"`videos`: could not read {source.name} ({error}).") from error

    if frames is None:
        total = len(index.pts) if index is not None else announced or None
        with progress_bar(total, f"Decoding {source.name}", "frame") as progress:
            pts, kept, damage = _decode_sequentially(source, set(indices), apply_rotation, progress)
        if not pts:
            raise ValueError(f"`videos`: {source.name} has no decodable video frames.")
        timeline = _Timeline.from_pts(pts, time_base, rate)
        indices, padded = sampling.select(timeline.timestamps, timeline.duration, len(pts))
        if any(i not in kept for i in indices):
            _, kept, _ = _decode_sequentially(source, set(indices), apply_rotation)
        frames = [kept[i] for i in indices]
        if damage is not None:
            _warn_damage(source.name, damage, len(pts))
    if announced and len(pts) < announced and damage is None:
        logger.warning(f"{source.name} holds {len(pts)} frames but its header announces {announced}: truncated?")
    frames = _stack(frames, source.name)
    metadata = HicomVideoMetadata(
        indices=indices,
        timestamps=None if timeline.timestamps is None else [timeline.timestamps[i] for i in indices],
        fps=len(pts) / timeline.duration if timeline.duration else None,
        duration=timeline.duration,
        total_num_frames=len(pts),
        padded_frames=padded,
        height=frames.shape[1],
        width=frames.shape[2],
    )
    return frames, metadata


# --- Processor --------------------------------------------------------------------------------------------------------
class HicomVideoProcessorKwargs(TypedDict, total=False):
    """Settings `from_pretrained(..., **kwargs)` may override (transformers reads them from `valid_kwargs`)."""

    size: dict[str, int]
    patch_size: int
    image_mean: list[float]
    image_std: list[float]
    rescale_factor: float
    resample: int
    num_frames: int | None
    max_frames: int | None
    fps: float | None
    pad_to_num_frames: bool
    apply_rotation: bool


class HicomVideoProcessor(VideoProcessorMixin):
    r"""
    Samples, decodes and normalizes videos for HICom exactly as the reference does (docs/inputs.md); images are
    one-frame videos (`preprocess_frames`).

    Pixels: each frame is padded to a centred square of colour `int(255 * image_mean)` (127 for SigLIP), resized to
    `size` with PIL's bicubic filter, rescaled by `rescale_factor` and normalized with `image_mean` / `image_std`.

    Args:
        size (`dict`, defaults to `{"height": 384, "width": 384}`): output frame size (an int means a square).
        patch_size (`int`, defaults to 14): the vision tower's patch size (the processor counts tokens with it).
        image_mean / image_std (`list[float]`, default `[0.5] * 3`): normalization, also the padding colour.
        rescale_factor (`float`, defaults to 1/255).
        resample (`int`, defaults to 3 = `PIL.Image.BICUBIC`).
        num_frames (`int`, defaults to 32): frames per video by segment-middle sampling.
        max_frames (`int`, *optional*): cap on the frames per video.
        fps (`float`, *optional*): sample this many frames per second instead; a configured `fps` takes precedence
            over the configured `num_frames` (call arguments override both).
        pad_to_num_frames (`bool`, defaults to `True`): append black frames to a clip with fewer than `num_frames`
            frames, as the reference does (a warning says so); `False` keeps only the clip's own frames.
        apply_rotation (`bool`, defaults to `True`): turn video frames upright by the file's rotation metadata, as
            players do. The reference (decord) ignores it: `False` reproduces its pixels for rotated phone clips
            (files without rotation metadata are unaffected).
    """

    model_input_names = ["pixel_values_videos", "video_num_frames"]
    valid_kwargs = HicomVideoProcessorKwargs

    def __init__(
        self,
        size=None,
        patch_size=14,
        image_mean=None,
        image_std=None,
        rescale_factor=1 / 255,
        resample=3,
        num_frames=32,
        max_frames=None,
        fps=None,
        pad_to_num_frames=True,
        apply_rotation=True,
        **kwargs,
    ):
        size = {"height": 384, "width": 384} if size is None else size
        if isinstance(size, int):
            size = {"height": size, "width": size}
        if not (isinstance(size, dict) and set(size) == {"height", "width"} and all(
                isinstance(v, int) and v > 0 for v in size.values())):
            raise ValueError(f"`size` must be a positive int or {{'height': int, 'width': int}}, got {size!r}.")
        image_mean = [0.5] * 3 if image_mean is None else image_mean
        image_std = [0.5] * 3 if image_std is None else image_std
        image_mean = [float(image_mean)] * 3 if isinstance(image_mean, (int, float)) else [float(m) for m in image_mean]
        image_std = [float(image_std)] * 3 if isinstance(image_std, (int, float)) else [float(s) for s in image_std]
        if len(image_mean) != 3 or len(image_std) != 3 or not all(s > 0 for s in image_std):
            raise ValueError(f"`image_mean` / `image_std` need 3 values (std > 0), got {image_mean} / {image_std}.")
        VideoSampling(num_frames=num_frames, max_frames=max_frames, pad_to_num_frames=pad_to_num_frames)
        VideoSampling(fps=fps)  # both may be configured: `fps` takes precedence
        _check_flag("apply_rotation", apply_rotation)
        super().__init__(**kwargs)
        self.size = dict(size)
        self.patch_size = patch_size
        self.image_mean = image_mean
        self.image_std = image_std
        self.rescale_factor = rescale_factor
        self.resample = int(resample)
        self.num_frames = num_frames
        self.max_frames = max_frames
        self.fps = fps
        self.pad_to_num_frames = pad_to_num_frames
        self.apply_rotation = apply_rotation

    def __call__(self, videos, do_sample_frames=None, return_tensors="pt", return_metadata=False,
                 **sampling) -> BatchFeature:
        """Sample, decode and preprocess one video or a batch (see `make_batched_videos` for what counts as which).

        Args:
            videos: a path, a binary file object, a `(T, H, W, C)` array/tensor, a list of frames, or a list of those.
            do_sample_frames: transformers' switch between sampling frames (`True`, the default: the given or configured
                `num_frames` / `fps`) and processing every frame (`False`); see `resolve_sampling`.
            return_tensors: `"pt"` (default) or `"np"`.
            return_metadata: also return `video_metadata`, one `HicomVideoMetadata` per video.
            sampling: the options of `VideoSampling` (`num_frames`, `fps`, `start`, `end`, `max_frames`,
                `pad_to_num_frames`); `None` or absent uses the configured value.

        Returns:
            `BatchFeature` with `pixel_values_videos` float32 `(sum T_i, 3, H, W)` (all videos' frames, in order,
            padding frames last within each video) and `video_num_frames` long `(num_videos,)`.
        """
        sampling = self.resolve_sampling(do_sample_frames, **sampling)
        pixels, counts, metadata = [], [], []
        for video in make_batched_videos(videos):
            frames, meta = load_video(video, apply_rotation=self.apply_rotation, **asdict(sampling))
            values = self.preprocess_frames(frames)
            if meta.padded_frames:
                values = torch.cat([values, self._padding_frame(meta.height, meta.width).expand(
                    meta.padded_frames, -1, -1, -1)])
            pixels.append(values)
            counts.append(len(values))
            metadata.append(meta)
        data = {"pixel_values_videos": torch.cat(pixels), "video_num_frames": torch.tensor(counts, dtype=torch.long)}
        if return_metadata:
            data["video_metadata"] = metadata
        return BatchFeature(data, tensor_type=return_tensors, skip_tensor_conversion=["video_metadata"])

    def resolve_sampling(self, do_sample_frames=None, **sampling) -> VideoSampling:
        """The `VideoSampling` of one call: the call's options (`None` = not given) over the configured ones.

        Given neither `num_frames` nor `fps`, the configured `fps` (when set) or `num_frames` applies, unless
        `do_sample_frames=False`: transformers' video processors read that as "process every frame", and
        `ProcessorMixin.apply_chat_template` sets it to `True` whenever `num_frames` or `fps` is given. Every frame
        still stops at `max_frames` when one is configured or given.
        """
        do_sample_frames = True if do_sample_frames is None else do_sample_frames
        _check_flag("do_sample_frames", do_sample_frames)
        sampling = {name: value for name, value in sampling.items() if value is not None}
        given = sorted({"num_frames", "fps"} & sampling.keys())
        if given and not do_sample_frames:
            raise ValueError(f"`do_sample_frames=False` processes every frame: do not pass `{given[0]}` with it.")
        if do_sample_frames and not given:
            sampling.update({"fps": self.fps} if self.fps is not None else {"num_frames": self.num_frames})
        sampling.setdefault("max_frames", self.max_frames)
        sampling.setdefault("pad_to_num_frames", self.pad_to_num_frames)
        return VideoSampling(**sampling)

    def to_dict(self) -> dict:
        """transformers drops settings whose value is None; ours are kept, since `num_frames=None` ("every frame")
        must not come back as the default 32 after `from_pretrained`."""
        return {**{key: getattr(self, key) for key in self.valid_kwargs.__annotations__}, **super().to_dict()}

    def preprocess(self, videos, **kwargs) -> BatchFeature:
        """Same as calling the processor (transformers' processors call `preprocess`)."""
        return self(videos, **kwargs)

    def preprocess_frames(self, frames) -> torch.Tensor:
        """Frames `(T, H, W, 3)` uint8 (or anything `frames_to_uint8` accepts) -> float32 `(T, 3, height, width)`.

        PIL does the padding and the resize, one frame at a time, because the reference used PIL and a torch bicubic
        differs from PIL's; the rescale and normalization are then one vectorized torch operation over all frames.
        """
        frames = frames_to_uint8(frames, "frames")
        height, width = self.size["height"], self.size["width"]
        fill = tuple(int(255 * m) for m in self.image_mean)
        resized = np.empty((len(frames), height, width, 3), dtype=np.uint8)
        for i, frame in enumerate(frames):
            square = _expand_to_square(Image.fromarray(frame), fill)
            resized[i] = np.asarray(square.resize((width, height), resample=self.resample))
        values = torch.from_numpy(resized).permute(0, 3, 1, 2).to(torch.float32) * self.rescale_factor
        mean = torch.tensor(self.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        return ((values - mean) / std).contiguous()

    def _padding_frame(self, height: int, width: int) -> torch.Tensor:
        """One preprocessed black padding frame. The reference builds it as `np.zeros((*last_frame.size, 3))` where
        PIL's `size` is (width, height): the black frame is *transposed* (width rows, height columns), which changes
        where the grey square padding goes. Reproduced so that the pixels match the reference."""
        return self.preprocess_frames(np.zeros((1, width, height, 3), dtype=np.uint8))


def _expand_to_square(image: Image.Image, fill: tuple) -> Image.Image:
    """The reference's `expand2square`: centre the frame on a square canvas of colour `fill`."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, (0, (width - height) // 2) if width > height else ((height - width) // 2, 0))
    return canvas


HicomVideoProcessor.register_for_auto_class("AutoVideoProcessor")

__all__ = ["HicomVideoMetadata", "HicomVideoProcessor", "SAMPLING_OPTIONS", "VideoSampling", "frames_to_uint8",
           "load_video", "make_batched_videos", "open_source", "uniform_indices"]
