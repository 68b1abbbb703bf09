"""Instruction-relevance maps: which patches of a video HICom's compressor kept for a question.

`HicomModel.get_video_features(..., output_attentions=True)` returns, per video, the softmax weights of both
compression levels, each on its own layout:

- local: `(T', H', W', window)`, one distribution per output cell over the patches of its space-time window (their
  flat positions are `window_index`; along an axis the kernel does not divide, neighbouring windows share a position);
- global: `(heads, Q, T*H*W)`, one distribution per head and query over every patch of the clip.

The functions below put both on the video's `(T, H, W)` patch grid, each as a map that sums to 1 over the grid (before
padding frames are dropped): the share of that level's attention each patch received (for the local level, with
overlapping windows averaged rather than summed, see `local_relevance`). The two levels, and the maps of different
questions, can then share one colour scale; uniform attention gives `1 / (T*H*W)` everywhere.

Every variant is supported: the maps show each level's attention whatever its injection mode or CLIP scale (with
injection `off` at a level its map does not depend on the instruction), and a level the model does not have has no
map (`None`). Fine injection's attention over the instruction's tokens is not a patch map and is not returned.

This file is shipped as Hub remote code next to the model files: it imports only torch and its sibling module.
"""

from dataclasses import dataclass
from typing import NamedTuple

import torch

from .compressor_hicom import window_index


def _check_weights(weights, name: str, ndim: int) -> None:
    if not isinstance(weights, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(weights).__name__}.")
    if weights.ndim != ndim or not weights.is_floating_point():
        raise ValueError(
            f"`{name}` must be a {ndim}-D floating point tensor, got {weights.dtype} {tuple(weights.shape)}."
        )


def _check_grid(grid_shape) -> tuple[int, int, int]:
    grid = tuple(grid_shape) if isinstance(grid_shape, (tuple, list, torch.Size)) else ()
    if len(grid) != 3 or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in grid):
        raise ValueError(f"`grid_shape` must be three positive ints (T, H, W), got {grid_shape!r}.")
    return grid


def _check_positive_int(value, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def local_relevance(weights: torch.Tensor, grid_shape, temporal_kernel: int, spatial_kernel: int) -> torch.Tensor:
    """How strongly the local level selected each patch: float32 `(T, H, W)`, summing to 1.

    Every cell's weights (a distribution over its own window) are put back on the patches they were read from. A
    patch that overlapping windows both read gets the mean of their weights, not the sum: summed, the overlaps would
    light up under uniform attention although nothing was selected there. The map is then scaled to sum to 1. Where
    no windows overlap (e.g. 27x27 patches and 32 frames with the release's 3x3x4 windows) this is exactly each
    patch's share of the local attention mass, every cell (one local token each) counting once.

    A window holding nothing the instruction asks for still hands out its weight (every cell makes a token), so read
    the map within windows: the peaks are what each window kept.

    Args:
        weights: one video's `local_attentions`, `(T', H', W', window)`.
        grid_shape: that video's `(T, H, W)` patch grid (`grid_shapes`).
        temporal_kernel / spatial_kernel: the model's `config.local_temporal_kernel` / `config.local_spatial_kernel`.
    """
    _check_weights(weights, "weights", 4)
    num_frames, height, width = _check_grid(grid_shape)
    _check_positive_int(temporal_kernel, "temporal_kernel")
    _check_positive_int(spatial_kernel, "spatial_kernel")
    # As `HicomLocalCompressor.plan`: a single frame (an image) is compressed with a temporal kernel of 1.
    kernel = 1 if num_frames == 1 else temporal_kernel
    index = window_index(num_frames, height, width, kernel, spatial_kernel)
    if weights.shape != index.shape:
        raise ValueError(
            f"Local weights of shape {tuple(weights.shape)} do not match the windows of a {num_frames}x{height}x"
            f"{width} grid with kernels {kernel}x{spatial_kernel}x{spatial_kernel}: expected {tuple(index.shape)}."
        )
    index = index.flatten().to(weights.device)
    total = torch.zeros(num_frames * height * width, dtype=torch.float32, device=weights.device)
    total.index_add_(0, index, weights.detach().flatten().float())
    readers = torch.zeros_like(total).index_add_(0, index, torch.ones_like(index, dtype=torch.float32))
    relevance = total / readers  # every patch is read by at least one window (`window_starts` covers each axis)
    return (relevance / relevance.sum()).view(num_frames, height, width)


def global_relevance(weights: torch.Tensor, grid_shape) -> torch.Tensor:
    """Share of the global level's attention that each patch received: float32 `(T, H, W)`, summing to 1.

    The mean over heads and queries: every (head, query) pair is a distribution over the clip and feeds the global
    tokens equally. (With the release's direct injection all queries are the same vector, so only heads differ.)

    Args:
        weights: one video's `global_attentions`, `(heads, Q, T*H*W)`.
        grid_shape: that video's `(T, H, W)` patch grid.
    """
    _check_weights(weights, "weights", 3)
    grid = _check_grid(grid_shape)
    if weights.shape[-1] != grid[0] * grid[1] * grid[2]:
        raise ValueError(
            f"Global weights cover {weights.shape[-1]} positions but a {'x'.join(map(str, grid))} grid has "
            f"{grid[0] * grid[1] * grid[2]}."
        )
    return weights.detach().float().mean(dim=(0, 1)).view(grid)


class FrameShare(NamedTuple):
    """One sampled frame's share of a level's attention: `position` along the map's first axis, `frame_index` in the
    whole video, `timestamp` in seconds (None for in-memory frames)."""

    position: int
    frame_index: int
    timestamp: float | None
    share: float


@dataclass
class VideoRelevance:
    """Relevance maps of one video for one instruction, on its real sampled frames (padding frames dropped).

    Attributes:
        local_map / global_map: `(T, H, W)` float32 shares (see `local_relevance` / `global_relevance`); None for a
            level the model does not have. The share the padding frames took is dropped, not
            redistributed: a map summing to 0.8 says that a fifth of the attention went to padding.
        frame_indices: index, in the whole video, of each frame of the maps (the processor's `video_metadata.indices`).
        timestamps: seconds since the video's first frame of each frame, or None (in-memory frames have no clock).
    """

    local_map: torch.Tensor | None
    global_map: torch.Tensor | None
    frame_indices: list[int]
    timestamps: list[float] | None

    def level_map(self, level: str) -> torch.Tensor:
        """The `"local"` or `"global"` map."""
        if level not in ("local", "global"):
            raise ValueError(f"`level` must be 'local' or 'global', got {level!r}.")
        relevance = self.local_map if level == "local" else self.global_map
        if relevance is None:
            setting = "use_local_level=False" if level == "local" else "num_global_queries=0"
            raise ValueError(f"This model has no {level} level (`{setting}`): it has no {level} map.")
        return relevance

    def frame_shares(self, level: str = "global") -> torch.Tensor:
        """`(T,)` share of the level's attention on each frame.

        Read time on the global level: every local window spans a fixed group of frames and hands out the same weight
        whatever the instruction, so the local level cannot move attention from one group of frames to another.
        """
        return self.level_map(level).sum(dim=(1, 2))

    def top_frames(self, k: int = 3, level: str = "global") -> list[FrameShare]:
        """The `k` frames with the largest share of the level's attention, largest first."""
        _check_positive_int(k, "k")
        shares = self.frame_shares(level)
        order = shares.argsort(descending=True)[:k].tolist()
        timestamps = self.timestamps or [None] * len(self.frame_indices)
        return [FrameShare(p, self.frame_indices[p], timestamps[p], shares[p].item()) for p in order]


def relevance_maps(video_features, config, video_metadata=None) -> list[VideoRelevance]:
    """Both levels' relevance maps of every video of a `get_video_features(..., output_attentions=True)` call.

    Args:
        video_features: the `HicomVideoFeaturesOutput`.
        config: the model's `HicomConfig` (its local kernels give the windows' layout).
        video_metadata: optional, the processor's `video_metadata` (called with `return_metadata=True`), one per
            video, in order. It drops the padding frames from the maps and attaches each frame's index and timestamp
            in the video; without it, every frame of the grid is kept and numbered from 0.
    """
    attentions = (getattr(video_features, "local_attentions", None), getattr(video_features, "global_attentions", None))
    if attentions == (None, None) or getattr(video_features, "grid_shapes", None) is None:
        raise ValueError(
            "`video_features` holds no attention weights: call `get_video_features(..., output_attentions=True)`."
        )
    grids = video_features.grid_shapes
    if video_metadata is not None and len(video_metadata) != len(grids):
        raise ValueError(f"Got {len(video_metadata)} `video_metadata` entries for {len(grids)} videos.")
    maps = []
    for i, grid in enumerate(grids):
        local = global_ = None
        if video_features.local_attentions is not None:
            local = local_relevance(
                video_features.local_attentions[i], grid, config.local_temporal_kernel, config.local_spatial_kernel
            )
        if video_features.global_attentions is not None:
            global_ = global_relevance(video_features.global_attentions[i], grid)
        real, indices, timestamps = grid[0], list(range(grid[0])), None
        if video_metadata is not None:
            meta = video_metadata[i]
            if not all(hasattr(meta, name) for name in ("indices", "timestamps", "padded_frames")):
                raise TypeError(
                    f"`video_metadata[{i}]` must be the processor's HicomVideoMetadata, got {type(meta).__name__}."
                )
            real, indices, timestamps = len(meta.indices), list(meta.indices), meta.timestamps
            if real + meta.padded_frames != grid[0]:
                raise ValueError(
                    f"`video_metadata[{i}]` describes {real} frames + {meta.padded_frames} padding frames, but video "
                    f"{i} was encoded with {grid[0]}: pass the metadata of the inputs that were encoded."
                )
        maps.append(
            VideoRelevance(*(None if part is None else part[:real] for part in (local, global_)), indices, timestamps)
        )
    return maps


def frame_box(height: int, width: int, image_size: int) -> tuple[int, int, int, int]:
    """Where a `height x width` frame lies in the model's `image_size`-pixel square input: `(top, left, h, w)`.

    The video processor centres each frame on a square of side `max(height, width)` (grey bars on the short side)
    and resizes that square to `image_size`; cropping this box from the input (or from `patch_map_to_pixels`) keeps
    the frame alone, at the frame's aspect ratio.
    """
    for name, value in (("height", height), ("width", width), ("image_size", image_size)):
        _check_positive_int(value, name)
    side = max(height, width)
    scale = image_size / side
    top, left = round((side - height) // 2 * scale), round((side - width) // 2 * scale)
    return top, left, min(round(height * scale), image_size - top), min(round(width * scale), image_size - left)


def patch_map_to_pixels(patch_map: torch.Tensor, image_size: int, patch_size: int) -> torch.Tensor:
    """A `(..., H, W)` patch map spread over the model's `(image_size, image_size)` input pixels: `(..., S, S)`.

    Each patch's value covers the `patch_size x patch_size` pixels it was cut from. Pixels no patch covers (SigLIP's
    convolution drops the last `image_size % patch_size` rows and columns, 6 of 384 for the release) are NaN, which
    plotting libraries leave transparent: the model never saw them.
    """
    if not isinstance(patch_map, torch.Tensor):
        raise TypeError(f"`patch_map` must be a torch.Tensor, got {type(patch_map).__name__}.")
    _check_positive_int(image_size, "image_size")
    _check_positive_int(patch_size, "patch_size")
    if patch_map.ndim < 2:
        raise ValueError(f"`patch_map` must end with the (H, W) patch grid, got shape {tuple(patch_map.shape)}.")
    height, width = patch_map.shape[-2:]
    if max(height, width) * patch_size > image_size:
        raise ValueError(
            f"A {height}x{width} grid of {patch_size}-pixel patches does not fit in a {image_size}-pixel input."
        )
    pixels = patch_map.float().repeat_interleave(patch_size, dim=-2).repeat_interleave(patch_size, dim=-1)
    canvas = pixels.new_full((*patch_map.shape[:-2], image_size, image_size), float("nan"))
    canvas[..., : height * patch_size, : width * patch_size] = pixels
    return canvas


__all__ = [
    "FrameShare",
    "VideoRelevance",
    "frame_box",
    "global_relevance",
    "local_relevance",
    "patch_map_to_pixels",
    "relevance_maps",
]
