"""The embedded demo: a tiny random-weight HICom, built through the real converter, and a generated clip.

Nothing is downloaded. An original-format checkpoint (the authors' layout, `demo_assets/original/layout.json`) is
filled with random weights and converted by `hicom-convert`'s code, exactly as a real release would be. The
answers are therefore meaningless; what the demo shows is the whole path working, and the token budget.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from hicom_transformers.conversion.convert_hicom_original_to_hf import convert

ASSETS = Path(__file__).resolve().parent / "demo_assets"
# Bumped when the converted folder changes (v2: generation config that suppresses the placeholder ids).
CACHE_VERSION = "v2"


def cache_dir() -> Path:
    """`$HICOM_DEMO_CACHE`, else `~/.cache/hicom-transformers/demo-<CACHE_VERSION>`."""
    default = Path.home() / ".cache" / "hicom-transformers" / f"demo-{CACHE_VERSION}"
    return Path(os.environ.get("HICOM_DEMO_CACHE", default))


def write_original_checkpoint(folder: Path, seed: int = 0) -> Path:
    """An original-format HICom folder with random bf16 weights in the release's tensor layout."""
    folder.mkdir(parents=True, exist_ok=True)
    for item in (ASSETS / "original").iterdir():
        if item.name != "layout.json":
            shutil.copy(item, folder / item.name)
    generator = torch.Generator().manual_seed(seed)
    layout = json.loads((ASSETS / "original" / "layout.json").read_text())
    tensors = {}
    for key, shape in layout.items():
        if key.endswith(("norm.weight", "norm1.weight", "norm2.weight")):
            tensors[key] = torch.ones(shape)
        else:
            tensors[key] = torch.randn(shape, generator=generator) * 0.05
    save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, folder / "model.safetensors")
    return folder


def demo_model_dir() -> Path:
    """The converted demo model, built once and cached."""
    root = cache_dir()
    converted = root / "hicom-tiny-demo"
    if not (converted / "config.json").exists():
        # `convert` writes the folder whole or not at all; `overwrite` replaces what an older build may have left.
        convert(write_original_checkpoint(root / "original"), ASSETS / "siglip", converted, overwrite=True)
    return converted


def demo_clip(num_frames: int = 48, size=(160, 120), fps: int = 12) -> Path:
    """A generated H.264 clip of a red square crossing a blue background (cached)."""
    import av

    path = cache_dir() / "red-square.mp4"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    width, height = size
    partial = path.with_suffix(".partial.mp4")
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(num_frames):
            frame = np.zeros((height, width, 3), np.uint8)
            frame[..., 2] = 160
            x = int((width - 32) * index / max(1, num_frames - 1))
            frame[height // 2 - 16 : height // 2 + 16, x : x + 32] = (220, 30, 30)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    partial.rename(path)
    return path
