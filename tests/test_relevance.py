"""Instruction-relevance maps (`modeling_hicom/relevance_hicom.py`) and the example that draws them."""

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny_processor
from PIL import Image
from tiny_models import random_inputs, tiny_config, tiny_model

import hicom_transformers.examples.relevance_map as relevance_example
from modeling_hicom import frame_box, global_relevance, local_relevance, patch_map_to_pixels, relevance_maps
from modeling_hicom.compressor_hicom import window_index
from processing_hicom import HicomVideoProcessor

# tiny_config: 70 px frames, 14 px patches -> a 5x5 grid, which kernel 3 splits into overlapping windows (rows 0-2 and
# 2-4); 6 frames with kernel 4 give the overlapping temporal windows 0-3 and 2-5.
SIZE, PATCH, FRAMES, KT, KS = 70, 14, 6, 4, 3
GRID = (FRAMES, SIZE // PATCH, SIZE // PATCH)


@pytest.fixture(scope="module")
def random_model():
    return tiny_model()


@pytest.fixture(scope="module")
def processor():
    processor = build_tiny_processor(HicomVideoProcessor(size=SIZE, patch_size=PATCH, num_frames=FRAMES))
    processor.instruct_max_length = tiny_config().instruct_max_length  # the tiny text tower has 16 positions
    return processor


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory):
    """The demo model and generated clips are built in a temporary cache, not in the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HICOM_DEMO_CACHE", str(tmp_path_factory.mktemp("demo-cache")))
        yield


# --- mapping the weights onto the patch grid -----------------------------------------------------------------------


def test_weights_sum_to_one_per_window_and_maps_to_one(random_model):
    pixels, num_frames, ids, mask = random_inputs(random_model, [FRAMES, 1])
    with torch.no_grad():
        features = random_model.get_video_features(pixels, num_frames, ids, mask, output_attentions=True)
    config = random_model.config
    for local, global_, grid in zip(features.local_attentions, features.global_attentions, features.grid_shapes):
        torch.testing.assert_close(local.sum(-1), torch.ones(local.shape[:-1]))
        torch.testing.assert_close(global_.sum(-1), torch.ones(global_.shape[:-1]))
        local_map = local_relevance(local, grid, config.local_temporal_kernel, config.local_spatial_kernel)
        global_map = global_relevance(global_, grid)
        for relevance in (local_map, global_map):
            assert relevance.shape == grid
            assert relevance.min() >= 0
            assert relevance.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert features.grid_shapes[1][0] == 1  # the single frame went through the temporal-kernel-1 layout


def test_overlapping_windows_put_weights_back_on_the_patch_they_read():
    index = window_index(*GRID, KT, KS)
    # Patch (2, 2, 2) lies in every window (frame 2, row 2 and column 2 are each shared by both windows of their axis):
    # if every cell puts all its weight there, that patch holds the whole map.
    shared = (2 * GRID[1] + 2) * GRID[2] + 2
    one_hot = (index == shared).float()
    assert bool((one_hot.sum(-1) == 1).all())
    expected = torch.zeros(GRID)
    expected[2, 2, 2] = 1.0
    torch.testing.assert_close(local_relevance(one_hot, GRID, KT, KS), expected)
    # Uniform weights select nothing: the map is flat, overlaps included (averaged, not summed).
    uniform = torch.full(index.shape, 1.0 / index.shape[-1])
    torch.testing.assert_close(local_relevance(uniform, GRID, KT, KS), torch.full(GRID, 1.0 / (FRAMES * 25)))
    # Cell (0, 0, 0) alone selects the shared patch, the others attend uniformly: the shared patch gets the mean of
    # its 8 readers' weights; patch (0, 0, 0), read by cell (0, 0, 0) alone, gets nothing; patch (5, 4, 4), read by
    # the last cell alone, its uniform weight.
    window, readers = index.shape[-1], index[..., 0].numel()
    mixed = uniform.clone()
    mixed[0, 0, 0] = one_hot[0, 0, 0]
    relevance = local_relevance(mixed, GRID, KT, KS)
    assert relevance[0, 0, 0].item() == 0
    shared_value = (1 + (readers - 1) / window) / readers
    assert (relevance[2, 2, 2] / relevance[5, 4, 4]).item() == pytest.approx(shared_value * window)


def test_global_map_is_the_mean_over_heads_and_queries():
    weights = torch.zeros(2, 3, FRAMES * 25)
    weights[0, :, 7] = 1.0  # head 0: every query on frame 0, row 1, column 2
    weights[1, :, 30] = 1.0  # head 1: every query on frame 1, row 1, column 0
    relevance = global_relevance(weights, GRID)
    assert relevance[0, 1, 2].item() == relevance[1, 1, 0].item() == 0.5
    assert relevance.sum().item() == 1.0


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: local_relevance([[0.5, 0.5]], GRID, KT, KS), TypeError),
        (lambda: local_relevance(torch.ones(2, 2, 2, 35), GRID, KT, KS), ValueError),  # not this grid's windows
        (lambda: local_relevance(torch.ones(2, 2, 2, 36), GRID, 0, KS), ValueError),
        (lambda: local_relevance(torch.ones(2, 2, 2, 36), (6, 5), KT, KS), ValueError),
        (lambda: local_relevance(torch.ones(2, 2, 2, 36, dtype=torch.long), GRID, KT, KS), ValueError),
        (lambda: global_relevance(torch.ones(1, 1, 10), GRID), ValueError),
        (lambda: global_relevance(torch.ones(1, 150), GRID), ValueError),
        (lambda: patch_map_to_pixels(torch.ones(6, 5), 60, PATCH), ValueError),  # 5 patches of 14 px need 70
        (lambda: patch_map_to_pixels(np.ones((5, 5)), SIZE, PATCH), TypeError),
        (lambda: frame_box(0, 10, SIZE), ValueError),
    ],
)
def test_bad_arguments_raise_clear_errors(call, error):
    with pytest.raises(error):
        call()


def test_relevance_maps_needs_the_attention_weights(random_model):
    pixels, num_frames, ids, mask = random_inputs(random_model, [FRAMES])
    with torch.no_grad():
        features = random_model.get_video_features(pixels, num_frames, ids, mask)
    with pytest.raises(ValueError, match="output_attentions=True"):
        relevance_maps(features, random_model.config)


# --- alignment with the processor's frames -------------------------------------------------------------------------


def test_maps_follow_the_processors_sampled_and_padded_frames(random_model, processor, demo_cache):
    real = 3
    clip = np.random.default_rng(0).integers(0, 256, (real, 50, 70, 3), dtype=np.uint8)
    video = relevance_example.synthetic_clip()
    inputs = processor(
        text=[f"{processor.video_token}\nWhat happens?"] * 2, videos=[clip, str(video)], num_frames=FRAMES,
        return_metadata=True,
    )
    in_memory, decoded = inputs["video_metadata"]
    assert in_memory.padded_frames == FRAMES - real and decoded.padded_frames == 0
    with torch.no_grad():
        features = random_model.get_video_features(
            inputs["pixel_values_videos"], inputs["video_num_frames"], inputs["instruct_input_ids"],
            inputs["instruct_attention_mask"], output_attentions=True,
        )
    padded, sampled = relevance_maps(features, random_model.config, inputs["video_metadata"])

    # Padding frames are dropped: the maps cover the real frames, in the processor's order.
    assert padded.local_map.shape == padded.global_map.shape == (real, *GRID[1:])
    assert padded.frame_indices == in_memory.indices == list(range(real)) and padded.timestamps is None
    full = relevance_maps(features, random_model.config)[0]
    torch.testing.assert_close(padded.global_map, full.global_map[:real])
    # A decoded file keeps its sampled indices and timestamps, and top frames point back into them.
    assert sampled.local_map.shape == GRID
    assert sampled.frame_indices == decoded.indices and sampled.timestamps == decoded.timestamps
    for level in ("local", "global"):
        shares = sampled.frame_shares(level)
        top = sampled.top_frames(3, level)
        assert [frame.share for frame in top] == sorted(shares.tolist(), reverse=True)[:3]
        for frame in top:
            assert frame.frame_index == decoded.indices[frame.position]
            assert frame.timestamp == decoded.timestamps[frame.position]
            assert frame.share == shares[frame.position].item()

    unpadded = dataclasses.replace(in_memory, padded_frames=0)  # not the metadata of what was encoded
    with pytest.raises(ValueError, match="padding frames"):
        relevance_maps(features, random_model.config, [unpadded, decoded])
    with pytest.raises(TypeError, match="HicomVideoMetadata"):
        relevance_maps(features, random_model.config, [{"indices": [0, 1, 2]}, decoded])
    with pytest.raises(ValueError, match="2 videos"):
        relevance_maps(features, random_model.config, inputs["video_metadata"][:1])


@pytest.mark.parametrize("height, width", [(50, 70), (70, 42), (70, 70)])
def test_frame_box_is_where_the_processor_puts_the_frame(height, width):
    video_processor = HicomVideoProcessor(size=SIZE, patch_size=PATCH)
    white = np.full((1, height, width, 3), 255, np.uint8)
    pixels = video_processor.preprocess_frames(white)[0, 0]  # white -> 1.0, the grey padding -> about 0
    rows, columns = torch.nonzero(pixels > 0.5, as_tuple=True)
    top, left, box_height, box_width = frame_box(height, width, SIZE)
    # The bicubic resize blurs the frame's border by at most one pixel.
    assert abs(rows.min().item() - top) <= 1 and abs(rows.max().item() + 1 - (top + box_height)) <= 1
    assert abs(columns.min().item() - left) <= 1 and abs(columns.max().item() + 1 - (left + box_width)) <= 1


def test_patch_map_to_pixels_covers_each_patch_and_marks_unseen_pixels():
    patch_map = torch.arange(2 * 25, dtype=torch.float32).view(2, 5, 5)
    pixels = patch_map_to_pixels(patch_map, SIZE + 2, PATCH)  # 2 pixel rows/columns no patch reads
    assert pixels.shape == (2, SIZE + 2, SIZE + 2)
    assert pixels[1, 3 * PATCH + 5, 4 * PATCH].item() == patch_map[1, 3, 4].item()
    assert bool(pixels[:, SIZE:, :].isnan().all()) and bool(pixels[:, :, SIZE:].isnan().all())
    assert not bool(pixels[:, :SIZE, :SIZE].isnan().any())


# --- a hand-built model: the question selects the patches it names ----------------------------------------------------


def synthetic_tiny_clip():
    """6 frames on blue: a red 2x2-patch block in frames 2-4 over the shared window row/column 2, a green block in
    frames 0-1 at the bottom left. Returns the frames and the two regions as (T, H, W) patch masks."""
    frames = np.empty((FRAMES, SIZE, SIZE, 3), np.uint8)
    frames[:] = relevance_example.SYNTHETIC_COLORS["blue"]
    red, green = torch.zeros(GRID, dtype=torch.bool), torch.zeros(GRID, dtype=torch.bool)
    red[2:5, 1:3, 2:4] = True
    green[0:2, 3:5, 0:2] = True
    for region, colour in ((red, "red"), (green, "green")):
        for t, h, w in region.nonzero().tolist():
            patch = (t, slice(h * PATCH, (h + 1) * PATCH), slice(w * PATCH, (w + 1) * PATCH))
            frames[patch] = relevance_example.SYNTHETIC_COLORS[colour]
    return frames, {"red": red, "green": green}


def test_relevance_peaks_on_the_region_the_question_names(processor):
    model = relevance_example.build_synthetic_model(tiny_config(), processor)
    frames, regions = synthetic_tiny_clip()
    questions = {colour: f"Where is the {colour} square?" for colour in regions}
    inputs = processor(
        text=[f"{processor.video_token}\n{q}" for q in questions.values()], videos=[frames] * len(questions),
        return_metadata=True,
    )
    with torch.no_grad():
        guides = model.model.encode_instructions(inputs["instruct_input_ids"], inputs["instruct_attention_mask"])
        _, keys = model.model.encode_frames(inputs["pixel_values_videos"][:FRAMES])
        features = model.get_video_features(
            inputs["pixel_values_videos"], inputs["video_num_frames"], inputs["instruct_input_ids"],
            inputs["instruct_attention_mask"], output_attentions=True,
        )
    maps = relevance_maps(features, model.config, inputs["video_metadata"])
    index = window_index(*GRID, KT, KS).flatten(0, 2)
    for guide, relevance, (colour, region) in zip(guides, maps, regions.items()):
        # The construction: the instruction embedding equals the keys of the named colour's patches.
        torch.testing.assert_close(guide.expand(int(region.sum()), -1), keys[region], rtol=1e-3, atol=1e-3)
        # Local level. A window holding r region patches and o others gives each region patch at least
        # 1 / (r + o * exp(-margin)) of its weight (margin: the worst score gap between region and rest), each other
        # patch at most exp(-margin) / r of it, and a window without the region at most 1 / window to any patch
        # (its patches all have the same key: uniform). Every region patch must beat every other patch.
        scores = keys.flatten(0, 2) @ guide / guide.numel() ** 0.5
        margin = scores[region.flatten()].min() - scores[~region.flatten()].max()
        assert margin > 0
        inside = region.flatten()[index].sum(-1)
        assert int(inside.max()) < index.shape[-1]  # so 1 / r > 1 / window in every window holding the region
        assert relevance.local_map[region].min() > relevance.local_map[~region].max()
        # Global level: the named region takes most of the attention (it covers 8% of the clip or less) and every
        # region patch beats every other patch.
        assert relevance.global_map[region].sum() > 0.5
        assert relevance.global_map[region].min() > relevance.global_map[~region].max()


# --- the example ---------------------------------------------------------------------------------------------------


REPO = Path(__file__).resolve().parents[1]


def white_share(path) -> float:
    """Share of the PNG's pixels that are blank (white) page."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    return float((pixels.min(-1) >= 250).mean())


def test_example_synthetic_mode_draws_the_known_answer(tmp_path, capsys, demo_cache):
    output = tmp_path / "synthetic.png"
    relevance_example.main(["--synthetic", "--output", str(output), "--max-columns", "4"])
    # 160x120 frames: 160x120 panels, no letterbox bars; blank page only in the headings' strips and the gaps (it was
    # ~60% of the picture with square panels and frames hung at their top).
    assert white_share(output) < 0.35
    printed = capsys.readouterr().out
    assert "HAND-BUILT" in printed
    # The red square is on screen for the first half of the clip, the green one for the second half.
    half = len(relevance_example.synthetic_frames()) // 2 / relevance_example.SYNTHETIC_FPS
    rows = re.findall(r"top frames, global level: (.*)", printed)
    assert len(rows) == 2
    red, green = ([float(t) for t in re.findall(r"([\d.]+) s", row)] for row in rows)
    assert red and all(t < half for t in red)
    assert green and all(t >= half for t in green)


def test_example_demo_model_writes_the_png(tmp_path, capsys, demo_cache):
    output = tmp_path / "demo.png"
    relevance_example.main(["--output", str(output), "--num-frames", "4"])
    assert white_share(output) < 0.35
    assert "RANDOM weights" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--synthetic", "--model", "some/folder"], "drop --model"),
        (["--model", "some/folder"], "--video is required"),
        (["--num-frames", "0"], "--num-frames must be a positive integer"),
        # A user's video needs the user's question: the demo's question would be answered silently.
        (["--model", "some/folder", "--video", "clip.mp4"], "--question is required"),
        (["--video", "clip.mp4"], "--question is required"),
        (["--output", "relevance.jpg"], "must name a .png"),
        (["--output", "no/such/folder/relevance.png"], "does not exist"),
    ],
)
def test_example_rejects_bad_arguments_before_any_work(monkeypatch, capsys, argv, message):
    """One line on stderr, exit code 2, and nothing loaded or computed first."""
    monkeypatch.setattr(relevance_example, "load", lambda args: pytest.fail("loaded a model for bad arguments"))
    with pytest.raises(SystemExit) as exit_info:
        relevance_example.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_readme_commands_write_different_files():
    readme = (REPO / "README.md").read_text().replace("\\\n", " ")  # continuation lines joined
    commands = re.findall(r"python -m examples\.relevance_map[^\n]*", readme)
    outputs = [re.search(r"--output (\S+)", command).group(1) for command in commands]
    assert len(outputs) == 2 and len(set(outputs)) == 2 and all(o.endswith(".png") for o in outputs)


@pytest.fixture(scope="module")
def drawn(random_model, processor):
    """The example's figure for two questions on a 16x1000 video (an extreme aspect ratio)."""
    frames = np.random.default_rng(0).integers(0, 256, (FRAMES, 16, 1000, 3), dtype=np.uint8)
    questions = ["What moves?", "What colour is it?"]
    inputs, features, maps = relevance_example.compute(random_model, processor, frames, questions)
    panel = 60
    return relevance_example.draw(questions, inputs, features, maps, processor, 4, panel, "note"), panel


def test_figure_has_level_headings_and_a_colour_bar_per_row(drawn):
    figure, _ = drawn
    texts = [text.get_text() for text in figure.texts]
    for heading in relevance_example.LEVEL_HEADINGS.values():
        assert texts.count(heading) == 2  # one per question
    assert sum("What moves?" in text for text in texts) == 1
    colour_bars = [axes for axes in figure.axes if axes.get_ylabel() == "x uniform"]
    assert len(colour_bars) == 2 * 2  # questions x levels


def test_extreme_aspect_ratio_panels_stay_readable(drawn):
    """A 16x1000 frame is a 6-pixel sliver of the 70-pixel input: its panels show at least one patch row of it, at
    most `MAX_ASPECT` times wider than tall."""
    figure, panel = drawn
    width, height = figure.get_size_inches() * figure.dpi
    panels = [axes for axes in figure.axes if axes.images]
    assert len(panels) == 2 * 2 * 4
    for axes in panels:
        box = axes.get_position()
        assert box.width * width == pytest.approx(panel, abs=1)
        assert box.height * height >= panel / relevance_example.MAX_ASPECT - 1
    top, left, box_height, box_width = relevance_example.display_box(frame_box(16, 1000, SIZE), SIZE, PATCH)
    assert box_width == SIZE and box_height >= PATCH
