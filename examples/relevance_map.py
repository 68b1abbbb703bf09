"""Where did each question look? Relevance maps of HICom's question-conditioned compression, as a PNG.

    python -m examples.relevance_map --model hicom-7b-hf --video clip.mp4 \\
        --question "What does the man hold?" --question "What colour is the car?" --output clip-relevance.png
    python -m examples.relevance_map              # embedded demo model: RANDOM weights, the maps mean nothing
    python -m examples.relevance_map --synthetic --output synthetic-relevance.png  # known right answer

HICom compresses a video *conditioned on the question*: its local level pools each small space-time window with the
instruction as query, its global level attends over the whole clip. This script asks the compressor for its
attention weights (`get_video_features(..., output_attentions=True)`), turns them into per-patch maps
(`modeling_hicom.relevance_maps`) and draws them over the sampled frames: per question, a row of frames for each level
under its heading, with a colour bar of that row's scale. It also prints the frames that took the largest share of
each level's attention, with their timestamps.

`--synthetic` builds a model whose weights are set by hand (`build_synthetic_model`) so that the instruction
embedding of a question naming a colour ("red", "green", "blue") equals the patch keys of that colour, and a clip in
which a red square crosses the top of the picture during the first half and a green square the bottom during the
second half. The maps must light up the named square, in its half of the clip: a check of the whole path (decoding,
sampling, compression, maps, frame alignment, drawing) that a random-weight model cannot give.
"""

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from modeling_hicom import HicomConfig, HicomForConditionalGeneration, frame_box, patch_map_to_pixels, relevance_maps
from modeling_hicom.configuration_hicom import LEVEL_OPTIONS

PANEL_PX = 160  # default length of a frame panel's longer side, in pixels
QUESTION_PX = 22  # strip above each question's rows, for the question
HEADING_PX = 16  # strip above each level's row, for its heading
NOTE_PX = 22  # strip at the top for what the weights are (demo and synthetic runs)
GAP_PX = 4  # between panels, and around the figure
COLORBAR_PX = 12  # width of a row's colour bar; its tick labels take `COLORBAR_LABELS_PX` more
COLORBAR_LABELS_PX = 56
MAX_ASPECT = 4  # panels are never longer than this many times their width (or height)
DPI = 100
LEVELS = ("local", "global")
DEFAULT_QUESTION = "Where is the red square?"  # the demo clip shows a red square crossing a blue background

SYNTHETIC_COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (0, 0, 160)}
SYNTHETIC_QUESTIONS = ("Where is the red square?", "Where is the green square?")
SYNTHETIC_FPS = 12


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="converted HICom folder or Hub id (default: the embedded demo model)")
    parser.add_argument("--video", help="video file (default: a generated clip)")
    parser.add_argument("--question", action="append", help="a question; repeat for several (one row each)")
    parser.add_argument("--num-frames", type=int, help="frames to sample (default: the processor's)")
    parser.add_argument("--output", default="relevance.png", help="PNG to write (default: relevance.png)")
    parser.add_argument("--synthetic", action="store_true", help="hand-built model and clip with a known answer")
    parser.add_argument("--max-columns", type=int, default=8, help="frames drawn per level (evenly spaced; default 8)")
    parser.add_argument("--panel-size", type=int, default=PANEL_PX, help=f"pixels per frame panel (default {PANEL_PX})")
    parser.add_argument("--top", type=int, default=3, help="frames to print per question and level (default 3)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="weights' dtype (--synthetic always builds float32)")
    parser.add_argument("--device", default=None, help='"cpu", "cuda", "cuda:1", ...')
    args = parser.parse_args(argv)
    if args.synthetic and args.model:
        parser.error("--synthetic builds its own model: drop --model")
    if args.model and not args.video:
        parser.error("--video is required with --model")
    if args.video and not args.question:
        parser.error("--question is required with --video (the default question only fits the generated clips)")
    output = Path(args.output)
    if output.suffix.lower() != ".png":
        parser.error(f"--output must name a .png file, got {args.output!r}")
    if not output.parent.is_dir():
        parser.error(f"--output: the folder {str(output.parent)!r} does not exist")
    if output.is_dir() or not os.access(output.parent, os.W_OK):
        parser.error(f"--output: cannot write {args.output!r}")
    for name in ("num_frames", "max_columns", "panel_size", "top"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    return args


# --- the synthetic sanity check ---------------------------------------------------------------------------------------
def write_clip(path: Path, frames: np.ndarray, fps: int) -> Path:
    """Encode `(T, H, W, 3)` uint8 frames as H.264 (written aside, then renamed: a cache never holds half a file)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.mp4")
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    partial.rename(path)
    return path


def synthetic_frames(num_frames: int = 48, size=(160, 120), square: int = 32) -> np.ndarray:
    """`(T, H, W, 3)` uint8: on blue, a red square crosses the top half left to right during the first half of the
    clip, then a green square crosses the bottom half right to left. Colours are `SYNTHETIC_COLORS`."""
    width, height = size
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    frames[:] = SYNTHETIC_COLORS["blue"]
    half = num_frames // 2
    for index in range(num_frames):
        first = index < half
        progress = (index if first else index - half) / max(1, (half if first else num_frames - half) - 1)
        x = round((width - square) * (progress if first else 1 - progress))
        y = height // 4 - square // 2 if first else 3 * height // 4 - square // 2
        frames[index, y : y + square, x : x + square] = SYNTHETIC_COLORS["red" if first else "green"]
    return frames


def synthetic_clip() -> Path:
    """`synthetic_frames()` at `SYNTHETIC_FPS` as an H.264 file next to the demo model (cached): decoded like any
    user video."""
    from hicom_transformers.examples.demo_model import cache_dir

    path = cache_dir() / "red-then-green-squares.mp4"
    return path if path.exists() else write_clip(path, synthetic_frames(), SYNTHETIC_FPS)


def build_synthetic_model(config, processor, colors=None, feature_scale: float = 16.0):
    """A float32 HICom whose compressor provably looks at the colour a question names; the LM keeps random weights.

    Weights set by hand (the towers' other residual branches are zeroed, so each encoder layer is the identity):
    - vision: the patch embedding is the affine map that sends each colour of `colors`, and the grey the processor
      pads frames with, to `feature_scale` times its own direction `d_c`; position embeddings are zero. A patch of
      colour c thus has features (the compression values) `s * d_c` and patch embeddings (the keys) `LN(d_c)`.
    - instruction: the token of each colour word embeds to `d_c`, every other token to 0; the first layer averages
      the tokens (uniform attention, identity value and output projections) and the final LayerNorm and identity head
      give `LN(d_c)`: the instruction embedding *equals* the keys of that colour's patches, so the local level's
      score is `sqrt(D)` higher on them than elsewhere.
    - global attention: identity query and key projections, so that colour's patches score about `s` higher.
      `d_c` is one channel per head, among each head's last ones: there the sin-cos position code hardly varies over
      a clip, so positions do not blur the selection.

    Args:
        config: a `HicomConfig` with direct injection at both levels, no adapters, and instruction and vision towers of
            the same width (the demo's and the test models' settings).
        processor: the `HicomProcessor` that will prepare the inputs (its instruction tokenizer and normalization).
        colors: `{word: (r, g, b)}`, at most 3 colours (default `SYNTHETIC_COLORS`); each word must be one token.
        feature_scale: `s`, the sharpness of the global level's selection.
    """
    colors = dict(SYNTHETIC_COLORS if colors is None else colors)
    vision, text = config.vision_config, config.instruct_config
    dim = vision.hidden_size
    options = [name for level in ("local", "global") for name in LEVEL_OPTIONS[level] if getattr(config, name)]
    levels = config.use_local_level and config.num_global_queries > 0
    if (config.local_injection, config.global_injection) != ("direct", "direct") or options or not levels:
        raise ValueError(
            "The synthetic model needs both levels, direct instruction injection at each, no adapters and no CLIP "
            f"scale; got {options or 'a missing level or another injection'}."
        )
    if text.hidden_size != dim or text.projection_size != dim:
        raise ValueError(
            f"The synthetic model needs instruction and vision towers of one width; got {text.hidden_size} "
            f"(projection {text.projection_size}) and {dim}."
        )
    head_dim = dim // config.num_global_heads
    if not 1 <= len(colors) <= min(3, head_dim - 1):
        raise ValueError(f"Give 1 to {min(3, head_dim - 1)} colours (an affine map of RGB separates 4 with the "
                         f"padding grey), got {len(colors)}.")
    tokenizer = processor.instruct_tokenizer
    token_ids = {}
    for word in colors:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"{word!r} is not a single token of the instruction tokenizer ({ids}).")
        token_ids[word] = ids[0]

    video_processor = processor.video_processor
    grey = tuple(int(255 * m) for m in video_processor.image_mean)  # the square padding's colour
    rgb = torch.tensor([*colors.values(), grey], dtype=torch.float32)
    normalized = (rgb * video_processor.rescale_factor - torch.tensor(video_processor.image_mean)) / torch.tensor(
        video_processor.image_std
    )
    directions = torch.zeros(len(rgb), dim)
    for i in range(len(rgb)):
        directions[i, head_dim - 1 - i :: head_dim] = 1.0  # channel head_dim - 1 - i of every head
    affine = torch.cat([normalized, torch.ones(len(rgb), 1)], dim=1)  # (colours, RGB + bias)
    target = feature_scale * directions
    solution = torch.linalg.pinv(affine) @ target  # (4, dim): per-channel weights, then the bias
    if not torch.allclose(affine @ solution, target, atol=1e-3):
        raise ValueError(f"The colours {list(colors.values())} and the grey {grey} must be affinely independent.")

    model = HicomForConditionalGeneration(config).float().eval()
    tower, encoder = model.model.vision_tower, model.model.instruct_encoder
    identity = torch.eye(dim)
    with torch.no_grad():
        for module in (tower, encoder):
            for layer in module.encoder.layers:
                for linear in (layer.self_attn.out_proj, layer.mlp.fc2):
                    linear.weight.zero_()
                    linear.bias.zero_()
            for norm in module.modules():
                if isinstance(norm, nn.LayerNorm):
                    norm.weight.fill_(1.0)
                    norm.bias.zero_()
        patch = tower.embeddings.patch_embedding
        area = patch.weight.shape[-1] * patch.weight.shape[-2]
        patch.weight.copy_((solution[:3].T / area)[:, :, None, None].expand_as(patch.weight))
        patch.bias.copy_(solution[3])
        tower.embeddings.position_embedding.weight.zero_()
        tower.head.mlp.fc2.weight.zero_()
        tower.head.mlp.fc2.bias.zero_()

        encoder.embeddings.token_embedding.weight.zero_()
        encoder.embeddings.position_embedding.weight.zero_()
        for word, direction in zip(colors, directions):
            encoder.embeddings.token_embedding.weight[token_ids[word]] = direction
        average = encoder.encoder.layers[0].self_attn
        for linear, weight in ((average.q_proj, 0 * identity), (average.k_proj, 0 * identity),
                               (average.v_proj, identity), (average.out_proj, identity), (encoder.head, identity)):
            linear.weight.copy_(weight)
            linear.bias.zero_()

        attention = model.model.compressor.global_level.attn
        for linear in (attention.q_proj, attention.k_proj):
            linear.weight.copy_(identity)
            linear.bias.zero_()
    return model


# --- model, inputs, maps ----------------------------------------------------------------------------------------------
def load(args):
    """`(model, processor, video, questions, note)`; `note` says what the weights are, on the picture too."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    questions = list(args.question or [])
    if args.model is None:
        from hicom_transformers.examples.demo_model import demo_clip, demo_model_dir

        folder = demo_model_dir()
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        if args.synthetic:
            print("Synthetic check: a HICom with HAND-BUILT weights (not a trained model) on a generated clip.")
            print("A question naming a colour (red, green, blue) must light up the patches of that colour.\n")
            model = build_synthetic_model(HicomConfig.from_pretrained(folder), processor)
            video = args.video or str(synthetic_clip())
            return model, processor, video, questions or list(SYNTHETIC_QUESTIONS), "synthetic hand-built model"
        print("Embedded demo: a tiny HICom with RANDOM weights. Its relevance maps are meaningless; the code path")
        print("is real. Use --synthetic for a check with a known answer, or --model for a trained model.\n")
        model_path, video, note = folder, args.video or str(demo_clip()), "RANDOM weights: maps are meaningless"
    else:
        model_path, video, note = args.model, args.video, ""
        processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=True)
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    model = AutoModelForImageTextToText.from_pretrained(model_path, trust_remote_code=True, dtype=dtype).eval()
    return model, processor, video, questions or [DEFAULT_QUESTION], note


def compute(model, processor, video, questions, num_frames=None):
    """Prepare one copy of the video per question, compress them with attention weights, and map the weights.

    One copy per question keeps this to a single processor call and a single batch (the frames are decoded and
    encoded once per question, which a handful of questions can afford).

    Returns `(inputs, video_features, maps)`: the processor's output (with `video_metadata`), the
    `HicomVideoFeaturesOutput` and one `VideoRelevance` per question.
    """
    prompts = [f"{processor.video_token}\n{question}" for question in questions]
    sampling = {"num_frames": num_frames} if num_frames else {}
    inputs = processor(text=prompts, videos=[video] * len(questions), return_metadata=True, **sampling)
    with torch.no_grad():
        features = model.get_video_features(
            inputs["pixel_values_videos"].to(model.device, model.dtype),
            inputs["video_num_frames"],
            inputs["instruct_input_ids"].to(model.device),
            inputs["instruct_attention_mask"].to(model.device),
            output_attentions=True,
        )
    return inputs, features, relevance_maps(features, model.config, inputs["video_metadata"])


def frame_label(relevance, position: int) -> str:
    if relevance.timestamps is None:
        return f"frame {relevance.frame_indices[position]}"
    return f"{relevance.timestamps[position]:.2f} s"


def report(questions, maps, top: int) -> None:
    """Print, per question and level, the frames holding the largest share of that level's attention."""
    for question, relevance in zip(questions, maps):
        print(f"Question: {question}")
        for level in LEVELS[::-1]:
            if level == "global" and relevance.global_map is None:
                continue
            frames = ", ".join(
                f"{frame_label(relevance, frame.position)} ({frame.share:.0%})"
                for frame in relevance.top_frames(top, level)
            )
            print(f"  top frames, {level} level: {frames}")
    print("(The local level's shares can only move within each window's frames; read time on the global level.)")


# --- drawing ----------------------------------------------------------------------------------------------------------
def display_box(box, image_size: int, patch_size: int) -> tuple[int, int, int, int]:
    """The part of the model's square input to draw for a frame at `box = frame_box(...)`: the frame, widened across
    its short side (into the padding bars) to at least one patch and at most `MAX_ASPECT` times shorter than its long
    side, so that a 16x1000 video still shows the patch rows its relevance lives on."""
    top, left, height, width = box
    short = max(patch_size, round(max(height, width) / MAX_ASPECT))
    if height < short:
        top, height = max(0, min(image_size - short, top - (short - height) // 2)), min(short, image_size)
    if width < short:
        left, width = max(0, min(image_size - short, left - (short - width) // 2)), min(short, image_size)
    return top, left, height, width


def panel_pixels(box, panel: int) -> tuple[int, int]:
    """`(width, height)` of a frame's panel: the drawn box's aspect ratio, `panel` pixels along its longer side."""
    _, _, height, width = box
    if width >= height:
        return panel, max(1, round(panel * height / width))
    return max(1, round(panel * width / height)), panel


def figure_pixels(num_questions: int, num_levels: int, num_columns: int, panel_size, note: bool):
    """`(width, height)` of the PNG: per question a question strip, then per level a heading strip over a row of
    `num_columns` panels of `panel_size = (width, height)` and that row's colour bar."""
    panel_width, panel_height = panel_size
    width = GAP_PX + num_columns * (panel_width + GAP_PX) + COLORBAR_PX + COLORBAR_LABELS_PX
    height = GAP_PX + NOTE_PX * note + num_questions * (QUESTION_PX + num_levels * (HEADING_PX + panel_height + GAP_PX))
    return width, height


def shown_positions(num_frames: int, max_columns: int) -> list[int]:
    """At most `max_columns` evenly spaced frame positions, first and last included."""
    return sorted({round(x) for x in np.linspace(0, num_frames - 1, min(num_frames, max_columns))})


LEVEL_HEADINGS = {
    "local": "Local level: each small space-time window's pick",
    "global": "Global level: attention over the whole clip",
}


def draw(questions, inputs, features, maps, processor, max_columns: int, panel: int, note: str = ""):
    """Every question's maps over its frames (what the model saw, padding bars cropped), as a matplotlib `Figure`.

    Colours are each patch's share of the level's attention relative to uniform attention, on one scale per question
    and level (its colour bar), so frames compare; each panel's caption is its frame's time and share of the level.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    video_processor = processor.video_processor
    image_size, patch_size = video_processor.size["height"], video_processor.patch_size
    mean = torch.tensor(video_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(video_processor.image_std).view(1, 3, 1, 1)

    levels = [level for level in LEVELS if level == "local" or maps[0].global_map is not None]
    columns = shown_positions(len(maps[0].frame_indices), max_columns)
    boxes = [
        display_box(frame_box(meta.height, meta.width, image_size), image_size, patch_size)
        for meta in inputs["video_metadata"]
    ]
    # One panel size for the whole figure (the questions share the video): the first video's.
    panel_width, panel_height = panel_pixels(boxes[0], panel)
    width, height = figure_pixels(len(questions), len(levels), len(columns), (panel_width, panel_height), bool(note))
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)

    def place(x, y, w, h):
        """Axes at pixel `(x, y)` from the top left, `w x h` pixels."""
        return figure.add_axes((x / width, 1 - (y + h) / height, w / width, h / height))

    y = GAP_PX
    if note:
        figure.text(GAP_PX / width, 1 - (y + NOTE_PX / 2) / height, note, va="center", fontsize=9, color="darkred")
        y += NOTE_PX
    starts = [0, *torch.as_tensor(inputs["video_num_frames"]).cumsum(0).tolist()]
    for row, (question, relevance, box, grid) in enumerate(zip(questions, maps, boxes, features.grid_shapes)):
        top, left, box_height, box_width = box
        crop = (slice(top, top + box_height), slice(left, left + box_width))
        uniform = 1.0 / (grid[0] * grid[1] * grid[2])
        frames = inputs["pixel_values_videos"][starts[row] : starts[row] + len(relevance.frame_indices)]
        frames = (frames.float() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        figure.text(GAP_PX / width, 1 - (y + QUESTION_PX / 2) / height, f'Question: "{question}"', va="center",
                    fontsize=10, fontweight="bold")
        y += QUESTION_PX
        for level in levels:
            ratio = relevance.level_map(level) / uniform
            heat = patch_map_to_pixels(ratio, image_size, patch_size)[:, crop[0], crop[1]].numpy()
            scale = Normalize(vmin=0, vmax=float(ratio.max()))
            figure.text(GAP_PX / width, 1 - (y + HEADING_PX / 2) / height, LEVEL_HEADINGS[level], va="center",
                        fontsize=8, style="italic")
            y += HEADING_PX
            shares = relevance.frame_shares(level)
            for column, position in enumerate(columns):
                axes = place(GAP_PX + column * (panel_width + GAP_PX), y, panel_width, panel_height)
                axes.set_axis_off()
                axes.imshow(frames[position][crop], aspect="auto")
                axes.imshow(heat[position], cmap="inferno", norm=scale, alpha=0.55, interpolation="nearest",
                            aspect="auto")
                caption = f"{frame_label(relevance, position)}  {shares[position]:.0%}"
                axes.text(0.02, 0.98, caption, transform=axes.transAxes, va="top", fontsize=7, color="white",
                          bbox=dict(facecolor="black", alpha=0.6, pad=1, lw=0))
            bar = place(GAP_PX + len(columns) * (panel_width + GAP_PX), y, COLORBAR_PX, panel_height)
            colorbar = figure.colorbar(ScalarMappable(norm=scale, cmap=colormaps["inferno"]), cax=bar)
            colorbar.set_label("x uniform", fontsize=7)
            colorbar.ax.tick_params(labelsize=7)
            y += panel_height + GAP_PX
    return figure


def render(path, questions, inputs, features, maps, processor, max_columns: int, panel: int, note: str = ""):
    """`draw` the maps and write them as a PNG; returns its `(width, height)`."""
    figure = draw(questions, inputs, features, maps, processor, max_columns, panel, note)
    figure.savefig(path, dpi=DPI)
    width, height = figure.get_size_inches() * DPI
    return round(width), round(height)


def main(argv=None):
    args = parse_args(argv)
    model, processor, video, questions, note = load(args)
    if args.device:
        model.to(args.device)
    inputs, features, maps = compute(model, processor, video, questions, args.num_frames)
    grid = "x".join(map(str, features.grid_shapes[0]))
    print(f"Video: {video} -> {len(inputs['video_metadata'][0].indices)} frames sampled, patch grid {grid}")
    report(questions, maps, args.top)
    size = render(args.output, questions, inputs, features, maps, processor, args.max_columns, args.panel_size, note)
    print(f"Wrote {args.output} ({size[0]}x{size[1]} px){' -- ' + note if note else ''}")


if __name__ == "__main__":
    main()
