"""Hostile inputs end to end, fuzzing and security (issue 6).

Everything here goes through the public API on the converted tiny fixture: `AutoProcessor`,
`AutoModelForImageTextToText` and `pipeline` loaded from the converted folder with `trust_remote_code=True`, then
`generate`. The per-component error cases (bad files, dtypes, channels, sampling arguments, instruction truncation,
model input checks, converter refusals) are in test_video_processing.py, test_processing.py, test_modeling.py and
test_conversion.py; this file adds what only shows end to end, the fuzz tests and the security properties.

Documented results checked here:
- a 1-frame video is padded to `num_frames` with the reference's black frames (or taken alone with `num_frames=1`);
- an extreme aspect ratio (4000x50) is letterboxed onto the mean-colour square, never stretched;
- RGBA loses its alpha (no compositing, as PIL's `convert("RGB")`); grayscale is replicated to 3 channels;
- 16-bit in-memory pixels (and local 16-bit image files) are rounded exactly to 8 bits (`x * 255 / 65535`); 16-bit
  *video files* are converted by FFmpeg (`rgb24`, as FFmpeg-based readers such as the reference's decord do): within
  2 levels of exact rounding;
- a question longer than the instruction encoder's 64 tokens conditions the compression through its first 64 tokens
  (one warning) while the LLM prompt keeps it whole; an empty question gives the question-independent query;
- the LLM tokenizer NFC-normalizes text (a combining accent comes back precomposed), nothing else is changed.
"""

import ast
import contextlib
import json
import logging
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import unicodedata
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from huggingface_hub.errors import StrictDataclassFieldValidationError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file
from test_video_processing import (  # noqa: F401  (module fixture: zero-byte, truncated, directory, audio...)
    BAD_FILE_ERRORS,
    bad_files,
    write_clip,
)
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, pipeline

from hicom_transformers.conversion.convert_hicom_original_to_hf import convert
from modeling_hicom import HicomConfig
from processing_hicom.pipeline_hicom import TASK
from processing_hicom.video_processing_hicom import load_video, uniform_indices

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "hicom-tiny-reference"
NETWORK_LOG: dict[str, list] = {}  # step -> connection attempts seen while the module fixtures ran


# --- helpers -----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def no_network():
    """Any DNS lookup or socket connection raises and is recorded (by any library, in any thread)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(repr(args[1:3] if args and isinstance(args[0], socket.socket) else args[:2]))
        raise OSError("network access is disabled in this test")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket.socket, "connect_ex", refuse)
        patch.setattr(socket, "create_connection", refuse)
        patch.setattr(socket, "getaddrinfo", refuse)
        yield attempts


def write_video(path, frames, pix_fmt="yuv420p", codec="libx264", rate=10, input_format="rgb24"):
    """Encode `frames` (T, H, W[, C]) with PyAV; `input_format` is the frames' own pixel format."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format=input_format)))
        container.mux(stream.encode())
    return str(path)


def decode_all(path) -> np.ndarray:
    """Plain PyAV, every frame as rgb24: the independent reference for what a file holds."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def to_uint8(values16) -> np.ndarray:
    """Exact rounding of 16-bit values to 8 bits (`x * 255 / 65535` is never exactly half an integer)."""
    return np.floor(values16.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)


def to_rgb(frames) -> np.ndarray:
    """(..., C) -> (..., 3): grayscale replicated, alpha dropped."""
    if frames.shape[-1] == 1:
        return np.repeat(frames, 3, axis=-1)
    return frames[..., :3]


def chat_prompt(processor, question, kind="video"):
    messages = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def answer(model, inputs, steps=3):
    """Greedy `generate` for `steps` tokens: the prompt comes back unchanged, every step's logits are finite and each
    new token is the argmax of the step's scores."""
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                             return_dict_in_generate=True, output_logits=True, output_scores=True)
    prompt_length = inputs["input_ids"].shape[1]
    sequences, logits = out.sequences, torch.stack(out.logits, 1)  # (batch, steps, vocab), raw
    assert sequences.shape == (inputs["input_ids"].shape[0], prompt_length + steps)
    assert torch.equal(sequences[:, :prompt_length], inputs["input_ids"])
    assert torch.isfinite(logits).all() and logits.shape[-1] == model.config.text_config.vocab_size
    # Scores: the logits after `min_new_tokens` masked the end-of-sequence token.
    assert torch.equal(sequences[:, prompt_length:], torch.stack(out.scores, 1).argmax(-1))
    return sequences[:, prompt_length:]


def video_placeholders(inputs, processor) -> int:
    return int((inputs["input_ids"] == processor.video_token_id).sum())


# --- module fixtures: one conversion, one load (all of it with the network cut) ------------------------------------
@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    """The tiny reference checkpoint converted, as it would be downloaded from the Hub."""
    with no_network() as attempts:
        folder = convert(
            FIXTURE / "original_checkpoint", FIXTURE / "siglip-so400m-patch14-384",
            tmp_path_factory.mktemp("hub") / "hicom-tiny",
        )
    NETWORK_LOG["convert"] = attempts
    return folder


@pytest.fixture(scope="module")
def model(hub_folder):
    with no_network() as attempts:
        loaded = AutoModelForImageTextToText.from_pretrained(hub_folder, trust_remote_code=True, dtype=torch.float32)
    NETWORK_LOG["model"] = attempts
    return loaded.eval()


@pytest.fixture(scope="module")
def processor(hub_folder):
    with no_network() as attempts:
        loaded = AutoProcessor.from_pretrained(hub_folder, trust_remote_code=True)
    NETWORK_LOG["processor"] = attempts
    return loaded


@pytest.fixture(scope="module")
def pipe(hub_folder, model, processor):
    with no_network() as attempts:
        built = pipeline(TASK, model=str(hub_folder), trust_remote_code=True, dtype=torch.float32)
    NETWORK_LOG["pipeline"] = attempts
    return built


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """A 6-frame 48x64 H.264 clip."""
    frames = np.random.default_rng(0).integers(0, 256, (6, 48, 64, 3), dtype=np.uint8)
    return write_video(tmp_path_factory.mktemp("clip") / "clip.mp4", frames)


# --- hostile video files, end to end ------------------------------------------------------------------------------
def test_one_frame_video_file(processor, model, tmp_path):
    path = write_video(tmp_path / "one.mp4", np.random.default_rng(1).integers(0, 256, (1, 48, 64, 3), np.uint8))
    decoded = decode_all(path)
    assert len(decoded) == 1
    prompt = chat_prompt(processor, "What is shown?")
    default_frames = processor.video_processor.num_frames

    # Default sampling: the single frame, then black padding frames as in the reference (transposed, see
    # `HicomVideoProcessor._padding_frame`), all counted in the token budget.
    padded = processor(text=prompt, videos=path, return_metadata=True)
    meta = padded.pop("video_metadata")[0]
    assert (meta.indices, meta.total_num_frames, meta.padded_frames) == ([0], 1, default_frames - 1)
    assert padded["video_num_frames"].tolist() == [default_frames]
    pixels = padded["pixel_values_videos"]
    assert pixels.shape[0] == default_frames
    torch.testing.assert_close(pixels[:1], processor.video_processor.preprocess_frames(decoded), rtol=0, atol=0)
    black = processor.video_processor.preprocess_frames(np.zeros((1, 64, 48, 3), np.uint8))  # (width, height)
    torch.testing.assert_close(pixels[1:], black.expand(default_frames - 1, -1, -1, -1), rtol=0, atol=0)
    assert video_placeholders(padded, processor) == processor.num_video_tokens(default_frames)
    answer(model, padded)

    # `num_frames=1`: the frame alone, one temporal window of 1 (an image's budget).
    single = processor(text=prompt, videos=path, num_frames=1)
    torch.testing.assert_close(single["pixel_values_videos"], pixels[:1], rtol=0, atol=0)
    grid = math.ceil(processor.video_processor.size["height"] // processor.video_processor.patch_size
                     / processor.local_spatial_kernel) ** 2
    assert video_placeholders(single, processor) == grid + processor.num_global_queries
    # `fps` sampling of a 1-frame clip also gives its one frame.
    assert processor(text=prompt, videos=path, fps=30.0)["video_num_frames"].tolist() == [1]
    answer(model, single)


@pytest.mark.parametrize("height, width", [(50, 4000), (4000, 50)])
def test_extreme_aspect_ratio_video_file(processor, model, tmp_path, height, width):
    """A 4000x50 (and 50x4000) clip is letterboxed onto the mean-colour square: the band stays in the middle."""
    colours = np.array([[200, 30, 90], [180, 60, 20], [40, 220, 200]], np.uint8)  # one solid colour per frame
    path = write_video(tmp_path / "extreme.mp4", np.broadcast_to(colours[:, None, None], (3, height, width, 3)).copy())
    inputs = processor(text=chat_prompt(processor, "What is in the band?"), videos=path, num_frames=2)
    decoded = decode_all(path)
    assert decoded.shape[1:3] == (height, width)
    pixels = inputs["pixel_values_videos"]
    size = processor.video_processor.size["height"]
    assert pixels.shape == (2, 3, size, size)
    expected = processor.video_processor.preprocess_frames(decoded[uniform_indices(3, 2)])
    torch.testing.assert_close(pixels, expected, rtol=0, atol=0)
    # Outside the band (plus bicubic support) every pixel is the padding colour int(255 * mean), normalized.
    mean = torch.tensor(processor.video_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.video_processor.image_std).view(3, 1, 1)
    fill = ((255 * mean).int() / 255 - mean) / std
    band = math.ceil(min(height, width) / max(height, width) * size)
    margin = (size - band) // 2 - 3
    border = pixels[..., :margin, :] if height < width else pixels[..., :, :margin]
    torch.testing.assert_close(border, fill.expand_as(border), rtol=0, atol=1e-6)
    centre = pixels[..., size // 2, size // 2]
    assert ((centre - fill.view(1, 3)).abs().amax(-1) > 0.2).all()  # the picture is there, in the middle
    answer(model, inputs)


def test_sixteen_bit_and_rgba_video_files(processor, model, tmp_path):
    """PNG-coded clips (lossless): 8-bit RGBA equals its RGB part exactly; 16-bit RGBA / RGB / gray are within 2
    levels of exact rounding (FFmpeg's conversion to rgb24)."""
    rng = np.random.default_rng(3)
    sixteen = rng.integers(0, 65536, (4, 24, 40, 4), dtype=np.uint16)
    eight = rng.integers(0, 256, (4, 24, 40, 4), dtype=np.uint8)
    cases = {
        "rgba.mov": (eight, "rgba", eight[..., :3], 0),
        "rgba64.mov": (sixteen, "rgba64be", to_uint8(sixteen[..., :3]), 2),
        "rgb48.mov": (sixteen[..., :3], "rgb48be", to_uint8(sixteen[..., :3]), 2),
        "gray16.mov": (sixteen[..., 0], "gray16be", to_rgb(to_uint8(sixteen[..., :1])), 2),
    }
    video_processor = processor.video_processor
    for name, (frames, pix_fmt, expected, tolerance) in cases.items():
        path = write_video(tmp_path / name, frames, pix_fmt=pix_fmt, codec="png", input_format=pix_fmt)
        got, meta = load_video(path, num_frames=4)
        assert meta.indices == [0, 1, 2, 3] and got.dtype == np.uint8 and got.shape == expected.shape, name
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= tolerance, name
        inputs = processor(text=chat_prompt(processor, "Colours?"), videos=path, num_frames=4)
        expected_pixels = video_processor.preprocess_frames(got)
        torch.testing.assert_close(inputs["pixel_values_videos"], expected_pixels, rtol=0, atol=0)
    # The same 16-bit pixels in memory are rounded exactly (either byte order).
    for array in (sixteen, sixteen.astype(">u2"), torch.from_numpy(sixteen.astype(np.int32)).to(torch.uint16)):
        in_memory = processor(text=chat_prompt(processor, "Colours?"), videos=array, num_frames=4)
        expected = video_processor.preprocess_frames(to_uint8(sixteen[..., :3]))
        torch.testing.assert_close(in_memory["pixel_values_videos"], expected, rtol=0, atol=0)
    answer(model, in_memory)


def test_sixteen_bit_and_rgba_image_files(processor, model, tmp_path):
    """`images=` paths keep 16-bit precision (transformers' `load_image` would clip them to 255) and drop alpha."""
    rng = np.random.default_rng(4)
    gray16 = rng.integers(0, 65536, (30, 20), dtype=np.uint16)
    rgba = rng.integers(0, 256, (30, 20, 4), dtype=np.uint8)
    Image.fromarray(gray16).save(tmp_path / "gray16.png")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")  # really a 16-bit file
    video_processor = processor.video_processor
    for name, expected in (("gray16.png", to_rgb(to_uint8(gray16)[..., None])), ("rgba.png", rgba[..., :3])):
        inputs = processor(text=chat_prompt(processor, "What is it?", kind="image"), images=str(tmp_path / name))
        torch.testing.assert_close(inputs["pixel_values"], video_processor.preprocess_frames(expected), rtol=0, atol=0)
        answer(model, inputs)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "folder.png").mkdir()
    for name, match in (("empty.png", "empty file"), ("notes.png", "could not read"), ("folder.png", "directory")):
        with pytest.raises(ValueError, match=f"`images`: .*{name}.*{match}|`images`: .*{match}.*{name}"):
            processor(text="<image>\nWhat?", images=str(tmp_path / name))


@pytest.mark.parametrize("name, error, match", BAD_FILE_ERRORS)
def test_bad_files_through_the_pipeline(pipe, bad_files, name, error, match):  # noqa: F811
    """The video processor's clear errors reach the pipeline user unchanged (not wrapped, not an FFmpeg error)."""
    with pytest.raises(error, match=match) as caught:
        pipe(videos=str(bad_files / name), text="What happens?", max_new_tokens=2)
    assert name in str(caught.value) and not isinstance(caught.value, av.FFmpegError)


# --- questions ----------------------------------------------------------------------------------------------------
def test_ten_thousand_character_question(processor, model, caplog):
    words = [f"detail{i} of the red car near the house" for i in range(400)]
    question = " ".join(words)[:10_000]
    assert len(question) == 10_000
    logging.Logger.warning_once.cache_clear()
    with caplog.at_level(logging.WARNING):
        inputs = processor(text=chat_prompt(processor, question), videos=np.zeros((2, 16, 16, 3), np.uint8),
                           num_frames=2)
    assert sum("truncated" in record.getMessage() for record in caplog.records) == 1
    # The instruction is the question's first `instruct_max_length` tokens ...
    assert bool(inputs["instruct_attention_mask"].all())
    full = processor.instruct_tokenizer(question)["input_ids"]
    assert len(full) > processor.instruct_max_length
    assert inputs["instruct_input_ids"][0, :-1].tolist() == full[: processor.instruct_max_length - 1]
    # ... while the LLM prompt keeps all of it.
    ids = inputs["input_ids"][0]
    text = processor.tokenizer.decode(ids[ids != processor.video_token_id])
    assert text == chat_prompt(processor, question).replace(processor.video_token, "")
    answer(model, inputs, steps=2)


QUESTIONS = {
    "emoji": "😀🎬 What happens? 👨‍👩‍👧‍👦🏳️‍🌈",
    "arabic": "ما الذي يحدث في الفيديو؟",
    "hebrew_with_bidi_override": "מה קורה \u202ethis is reversed\u202c בסרטון?",
    "cjk": "視頻裡發生了什麼事？",
    "zero_width": "what\u200b is\u200c the\u200d dog\ufeff doing\u2060?",
    "combining_marks": "Cafe\u0301 or n\u0303o?",
    "control_characters": "tab\there\r\nnew line\x00\x07 end",
    "only_zero_width": "\u200b\u200c\u200d",
}


@pytest.mark.parametrize("question", QUESTIONS.values(), ids=QUESTIONS.keys())
def test_unicode_questions(processor, model, question):
    prompt = chat_prompt(processor, question)
    inputs = processor(text=prompt, videos=np.zeros((2, 16, 16, 3), np.uint8), num_frames=2)
    ids = inputs["input_ids"][0]
    # The prompt survives, NFC-normalized by the LLM tokenizer.
    assert processor.tokenizer.decode(ids[ids != processor.video_token_id]) == unicodedata.normalize(
        "NFC", prompt.replace(processor.video_token, "")
    )
    # The instruction is the question with its whitespace collapsed.
    expected = processor.tokenize_instructions([" ".join(question.split())])
    assert torch.equal(inputs["instruct_input_ids"], expected["input_ids"])
    answer(model, inputs, steps=2)


def test_empty_question_gives_the_question_independent_query(processor, model):
    video = np.random.default_rng(5).integers(0, 256, (4, 20, 20, 3), np.uint8)
    features = []
    for question in ("", "   \n\t "):
        inputs = processor(text=chat_prompt(processor, question), videos=video, num_frames=4)
        assert inputs["instruct_attention_mask"].sum() == 1  # the end-of-sequence token alone
        assert torch.equal(inputs["instruct_input_ids"], processor.tokenize_instructions([""])["input_ids"])
        with torch.no_grad():
            features.append(model(**inputs).video_hidden_states)
    torch.testing.assert_close(features[0], features[1], rtol=0, atol=0)
    answer(model, inputs, steps=2)
    asked = processor(text=chat_prompt(processor, "Where is the dog?"), videos=video, num_frames=4)
    with torch.no_grad():
        assert not torch.allclose(model(**asked).video_hidden_states, features[0])  # a question does change it


# --- placeholders and tampered inputs -----------------------------------------------------------------------------
def test_placeholder_count_mismatches_are_clear_errors(processor, pipe, clip_file):
    video = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match=r"2 video placeholders but 1 videos were given"):
        processor(text="<video>\n<video>\nSame?", videos=video)
    with pytest.raises(ValueError, match=r"1 video placeholders but 2 videos were given"):
        processor(text="<video>\nSame?", videos=[video, video])
    with pytest.raises(ValueError, match=r"1 `<video>` placeholders but no `videos` were given"):
        processor(text="<video>\nWhat?")
    # A user who types the tag inside a chat message adds a placeholder: refused, not silently misaligned.
    messages = [{"role": "user", "content": [
        {"type": "video", "path": clip_file}, {"type": "text", "text": "What does <video> mean?"}]}]
    typed = r"per prompt \(\[1\]\) but the prompts have \[2\] `<video>` placeholders.*typed in the text counts"
    with pytest.raises(ValueError, match=typed):
        processor.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=True)
    with pytest.raises(ValueError, match=r"2 video placeholders but 1 videos.*typed in the text counts"):
        pipe(text=messages, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"2 `<video>` tags for 1 videos"):
        pipe(videos=clip_file, text="<video> and <video>?", max_new_tokens=2)


def _tamper(name, inputs, processor):
    inputs = dict(inputs)
    if name == "more_frames_announced":
        inputs["video_num_frames"] = inputs["video_num_frames"] + 1
    elif name == "zero_frames_announced":
        inputs["video_num_frames"] = torch.zeros_like(inputs["video_num_frames"])
    elif name in ("nan", "inf", "-inf"):
        pixels = inputs["pixel_values_videos"].clone()
        pixels[-1, 1, 5, 7] = float(name)
        inputs["pixel_values_videos"] = pixels
    elif name == "pixels_dropped":
        del inputs["pixel_values_videos"]
    elif name == "instruction_dropped":
        del inputs["instruct_input_ids"], inputs["instruct_attention_mask"]
    elif name == "wrong_frame_size":
        inputs["pixel_values_videos"] = inputs["pixel_values_videos"][..., :-14, :-14]
    return inputs


@pytest.mark.parametrize(
    "name, match",
    [
        ("more_frames_announced", "video_num_frames"),
        ("zero_frames_announced", "video_num_frames"),
        ("nan", "NaN or infinite"),
        ("inf", "NaN or infinite"),
        ("-inf", "NaN or infinite"),
        ("pixels_dropped", "pixel_values_videos"),
        ("instruction_dropped", "instruct_input_ids"),
        ("wrong_frame_size", "shape"),
    ],
)
def test_tampered_processor_outputs_fail_clearly_in_generate(processor, model, name, match):
    inputs = processor(text=chat_prompt(processor, "What?"), videos=np.zeros((3, 16, 16, 3), np.uint8), num_frames=3)
    with pytest.raises(ValueError, match=match), torch.no_grad():
        model.generate(**_tamper(name, inputs, processor), max_new_tokens=2, do_sample=False)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_image_pixels_are_clear_errors(processor, model, value):
    inputs = processor(text=chat_prompt(processor, "What?", kind="image"), images=np.zeros((16, 16, 3), np.uint8))
    inputs["pixel_values"] = inputs["pixel_values"].clone()
    inputs["pixel_values"][0, 0, 0, 0] = value
    with pytest.raises(ValueError, match=r"`pixel_values` contains NaN or infinite"), torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, do_sample=False)


# --- checkpoints and configs --------------------------------------------------------------------------------------
def copy_without_weights(hub_folder, destination) -> Path:
    shutil.copytree(hub_folder, destination, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
    return destination


@pytest.mark.parametrize("field", ["local_injection", "global_injection"])
def test_unknown_injection_mode_is_refused(hub_folder, tmp_path, field):
    allowed = rf"Field '{field}' expected one of \('off', 'direct', 'coarse', 'fine'\), got bogus"
    with pytest.raises(StrictDataclassFieldValidationError, match=allowed):
        HicomConfig(**{field: "bogus"})
    with pytest.raises(StrictDataclassFieldValidationError, match=rf"Field '{field}' expected one of .* got 3"):
        HicomConfig(**{field: 3})
    folder = tmp_path / "bogus"
    shutil.copytree(hub_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    assert config[field] in ("direct", "coarse", "off")
    config[field] = "bogus"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(StrictDataclassFieldValidationError, match=allowed):
        AutoConfig.from_pretrained(folder, trust_remote_code=True)
    with pytest.raises(StrictDataclassFieldValidationError, match=allowed):
        AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)


def test_missing_shard_is_named_and_a_truncated_one_refused(model, tmp_path):
    folder = tmp_path / "sharded"
    model.save_pretrained(folder, max_shard_size="1MB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2
    reloaded = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)

    victim = folder / shards[1]
    data = victim.read_bytes()
    victim.unlink()
    with pytest.raises(OSError, match=re.escape(shards[1])):
        AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
    # An interrupted download (header cut, data cut, nothing): safetensors refuses the file (without naming it).
    for cut in (data[:100], data[:-64], b""):
        victim.write_bytes(cut)
        with pytest.raises(SafetensorError, match="(?i)header"):
            AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)


# --- security -----------------------------------------------------------------------------------------------------
class CodeOnUnpickle:
    """A pickle payload that writes `marker` when unpickled without `weights_only`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def test_pickle_weights_never_run_code(hub_folder, model, tmp_path):
    tensors = load_file(hub_folder / "model.safetensors")
    marker = tmp_path / "marker"
    evil = dict(tensors, **{"lm_head.weight": CodeOnUnpickle(marker)})

    # The payload is real: an unrestricted unpickling runs it.
    torch.save(evil, tmp_path / "evil.bin")
    torch.load(tmp_path / "evil.bin", weights_only=False)
    assert marker.read_text() == "code ran"
    marker.unlink()

    benign = copy_without_weights(hub_folder, tmp_path / "benign")
    torch.save(tensors, benign / "pytorch_model.bin")
    malicious = copy_without_weights(hub_folder, tmp_path / "malicious")
    shutil.copy(tmp_path / "evil.bin", malicious / "pytorch_model.bin")

    # transformers reads pickle weights with `weights_only=True` (its default): plain tensors load, code does not run.
    loaded = AutoModelForImageTextToText.from_pretrained(benign, trust_remote_code=True, dtype=torch.float32)
    assert torch.equal(loaded.lm_head.weight, tensors["lm_head.weight"].float())
    for choice in (None, False):
        with pytest.raises(Exception, match=r"(?i)weights.only|unsupported global"):
            AutoModelForImageTextToText.from_pretrained(malicious, trust_remote_code=True, use_safetensors=choice)
    # A pickle next to the safetensors is ignored.
    shutil.copy(hub_folder / "model.safetensors", malicious / "model.safetensors")
    both = AutoModelForImageTextToText.from_pretrained(malicious, trust_remote_code=True, dtype=torch.float32)
    assert torch.equal(both.lm_head.weight, model.lm_head.weight)
    assert not marker.exists()


SHIPPED_CODE = ["modeling_hicom", "processing_hicom", "conversion", "examples", "benchmarks"]
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def unsafe_loads(source: str, filename: str = "<string>") -> list[str]:
    """Pickle loading in `source`: any `torch.load` (or `torch.serialization.load`, or `load` imported from torch)
    without a literal `weights_only=True`, pickle-family imports, and `np.load(..., allow_pickle=True)`."""
    tree = ast.parse(source, filename)
    torch_loads = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization")
        for alias in node.names
        if alias.name == "load"
    }
    found = []
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            found.append(f"{where} from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if name in ("torch.load", "torch.serialization.load") or name in torch_loads:
                value = keywords.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    found.append(f"{where} {ast.unparse(node)}")
            elif name.endswith(".load") and name.split(".")[0] in ("np", "numpy"):
                value = keywords.get("allow_pickle")
                if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                    found.append(f"{where} {ast.unparse(node)}")
    return found


def test_the_pickle_checker_finds_unsafe_loads():
    unsafe = {
        "import torch\ntorch.load(path)": 1,
        "import torch\ntorch.load(path, weights_only=False)": 1,
        "import torch\ntorch.load(path, weights_only=flag)": 1,
        "from torch import load\nload(path)": 1,
        "from torch import load as tl\ntl(path)": 1,
        "import pickle\npickle.load(f)": 1,
        "from dill import loads": 1,
        "import numpy as np\nnp.load(path, allow_pickle=True)": 1,
    }
    for source, count in unsafe.items():
        assert len(unsafe_loads(source)) == count, source
    safe = "import torch, numpy as np\ntorch.load(p, map_location='cpu', weights_only=True, mmap=True)\nnp.load(p)"
    assert unsafe_loads(safe) == []


def test_shipped_code_loads_pickles_only_with_weights_only():
    files = [path for package in SHIPPED_CODE for path in sorted((REPO / package).rglob("*.py"))]
    assert len(files) > 10
    found = [hit for path in files for hit in unsafe_loads(path.read_text(), str(path.relative_to(REPO)))]
    assert found == []
    # ... and the converter's pickle path does exist (so the check above looked at something).
    converter = (REPO / "conversion" / "convert_hicom_original_to_hf.py").read_text()
    assert "torch.load(" in converter


NO_NETWORK_SCRIPT = textwrap.dedent(
    """
    import json, socket, sys
    attempts = []
    def refuse(*args, **kwargs):
        attempts.append(repr(args[:3]))
        raise OSError("network access is disabled in this test")
    socket.socket.connect = socket.socket.connect_ex = socket.create_connection = socket.getaddrinfo = refuse

    import numpy as np, torch, huggingface_hub
    from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline
    folder, video = sys.argv[1], sys.argv[2]
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    inputs = processor(text="<video>\\nWhat moves?", videos=video, num_frames=4)
    generated = model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    pipe = pipeline("video-text-to-text", model=folder, trust_remote_code=True, dtype=torch.float32)
    answer = pipe(videos=video, text="What moves?", num_frames=4, max_new_tokens=2, min_new_tokens=2,
                  return_tensors=True)
    seen = list(attempts)
    try:  # control: the guard does see a client library that reaches for the Hub
        huggingface_hub.model_info("lntzm/HICom_7B_qwen25_directg_local43_global32")
        control = "connected?!"
    except Exception as error:
        control = type(error).__name__
    print(json.dumps({
        "offline_mode": bool(huggingface_hub.constants.HF_HUB_OFFLINE),
        "model_module": type(model).__module__,
        "new_tokens": generated.shape[1] - inputs["input_ids"].shape[1],
        "pipeline_tokens": len(answer[0]["generated_token_ids"]),
        "attempts": seen,
        "control_attempts": len(attempts) - len(seen),
        "control": control,
    }))
    """
)


def test_no_network_access_without_a_hub_id(hub_folder, model, processor, pipe, clip_file, tmp_path):
    """Converting, loading the folder (remote code), processing, generating and the pipeline never open a
    connection, with `HF_HUB_OFFLINE` unset: in this process (module fixtures) and in a fresh one (remote code)."""
    assert set(NETWORK_LOG) == {"convert", "model", "processor", "pipeline"}
    assert NETWORK_LOG == {step: [] for step in NETWORK_LOG}
    with no_network() as attempts:  # the in-process guard catches a real attempt
        with pytest.raises(OSError):
            socket.create_connection(("huggingface.co", 443), timeout=1)
    assert len(attempts) == 1

    folder = tmp_path / "hub-copy"
    shutil.copytree(hub_folder, folder)
    env = {key: value for key, value in os.environ.items()
           if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "PYTHONPATH")}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_MODULES_CACHE=str(tmp_path / "modules"),
               TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_TELEMETRY="0")
    result = subprocess.run([sys.executable, "-c", NO_NETWORK_SCRIPT, str(folder), clip_file], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["offline_mode"] is False
    assert report["model_module"].startswith("transformers_modules")  # the folder's own remote code
    assert report["new_tokens"] == 2 and report["pipeline_tokens"] == 2
    assert report["attempts"] == []
    assert report["control_attempts"] >= 1 and report["control"] != "connected?!"


# --- fuzzing ------------------------------------------------------------------------------------------------------
FUZZ = settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
SIZES = st.one_of(
    st.tuples(st.integers(1, 40), st.integers(1, 40)),
    st.sampled_from([(1, 1), (1, 300), (300, 1), (2, 257), (97, 3)]),
)


@st.composite
def in_memory_videos(draw):
    """A (T, H, W, C) uint8 picture, then how it is handed over: dtype, layout, container, and maybe a defect."""
    frames = draw(st.integers(1, 40))
    height, width = draw(SIZES)
    channels = draw(st.sampled_from([None, 1, 2, 3, 4, 5]))  # None: grayscale without a channel axis
    seed = draw(st.integers(0, 2**16))
    dtype = draw(st.sampled_from(["uint8", "uint16", ">u2", "int32", "float16", "float32", "float64", "bool"]))
    container = draw(st.sampled_from(["numpy", "torch", "frames"]))
    defect = draw(st.sampled_from([None] * 4 + ["nan", "inf", "above", "negative"]))
    num_frames = draw(st.one_of(st.none(), st.integers(1, 12)))
    return frames, height, width, channels, seed, dtype, container, defect, num_frames


def build_video(frames, height, width, channels, seed, dtype, container, defect):
    """The hostile input, and either the equivalent uint8 RGB frames or the expected `(error type, message regex)`."""
    rng = np.random.default_rng(seed)
    shape = (frames, height, width) + (() if channels is None else (channels,))
    if dtype in ("uint16", ">u2"):
        array = rng.integers(0, 65536, shape, dtype=np.uint16)
        base = to_uint8(array)
        array = array.astype(dtype)
    else:
        base = rng.integers(0, 256, shape, dtype=np.uint8)
        array = base.astype(np.int32 if dtype == "int32" else bool if dtype == "bool" else dtype)
        if dtype.startswith("float"):
            array = (base / 255).astype(dtype)
    if dtype == "bool":
        return array, None, (TypeError, "bool")

    errors = []
    if defect is not None and (dtype.startswith("float") or (dtype == "int32" and defect in ("above", "negative"))):
        value = {"nan": np.nan, "inf": np.inf, "above": 256 if dtype == "int32" else 1.5,
                 "negative": -1 if dtype == "int32" else -0.25}[defect]
        array.reshape(-1)[rng.integers(array.size)] = value
        errors.append("NaN or infinite" if defect in ("nan", "inf") else r"must lie in \[0, 1\]|must lie in \[0, 255\]")
    if channels in (2, 5):
        errors.append("1, 3 or 4 channels")

    expected = base if channels is not None else base[..., None]  # (T, H, W, C)
    if container != "frames" and channels is None and width in (1, 3, 4):
        expected = base[None]  # documented: a 3-D array whose last axis is 1, 3 or 4 is one (H, W, C) frame
    if container == "torch":
        video = torch.from_numpy(array.astype(np.uint16) if dtype == ">u2" else array)
    elif container == "frames":
        video = list(array)
    else:
        video = array
    if errors:
        return video, None, (ValueError, "|".join(errors))
    return video, to_rgb(expected), None


@FUZZ
@given(in_memory_videos())
def test_fuzz_processor_in_memory_videos(processor, case):
    frames, height, width, channels, seed, dtype, container, defect, num_frames = case
    video, expected, error = build_video(frames, height, width, channels, seed, dtype, container, defect)
    prompt = "<video>\nWhat happens?"
    if error is not None:
        with pytest.raises(error[0], match=error[1]):
            processor(text=prompt, videos=video, num_frames=num_frames)
        return
    out = processor(text=prompt, videos=video, num_frames=num_frames)
    count = num_frames or processor.video_processor.num_frames
    size = processor.video_processor.size
    pixels = out["pixel_values_videos"]
    assert pixels.shape == (count, 3, size["height"], size["width"]) and pixels.dtype == torch.float32
    assert torch.isfinite(pixels).all()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (processor.video_processor.image_mean,
                                                               processor.video_processor.image_std))
    assert (pixels >= (0 - mean) / std - 1e-6).all() and (pixels <= (1 - mean) / std + 1e-6).all()
    assert out["video_num_frames"].tolist() == [count]
    assert video_placeholders(out, processor) == processor.num_video_tokens(count)
    assert out["instruct_input_ids"].shape == (1, processor.instruct_max_length)
    # The same pixels as the equivalent uint8 RGB frames.
    reference = processor.video_processor(expected, num_frames=count)["pixel_values_videos"]
    torch.testing.assert_close(pixels, reference, rtol=0, atol=0)


PNG_FORMATS = {  # pix_fmt: (channels of the written array, 16-bit)
    "rgb24": (3, False), "rgba": (4, False), "gray": (None, False),
    "rgb48be": (3, True), "rgba64be": (4, True), "gray16be": (None, True),
}


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=st.integers(1, 12),
    size=SIZES,
    pix_fmt=st.sampled_from(sorted(PNG_FORMATS)),
    num_frames=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_fuzz_processor_video_files(processor, tmp_path_factory, frames, size, pix_fmt, num_frames, seed):
    """Lossless (PNG-coded) clips of any size and frame count: the sampled frames are the written ones."""
    channels, sixteen = PNG_FORMATS[pix_fmt]
    shape = (frames, *size) + (() if channels is None else (channels,))
    rng = np.random.default_rng(seed)
    written = rng.integers(0, 65536 if sixteen else 256, shape, dtype=np.uint16 if sixteen else np.uint8)
    path = write_video(tmp_path_factory.mktemp("fuzz") / "clip.mov", written, pix_fmt=pix_fmt, codec="png",
                       input_format=pix_fmt)
    eight = to_uint8(written) if sixteen else written
    expected = to_rgb(eight[..., None] if channels is None else eight)
    got, meta = load_video(path, num_frames=num_frames)
    assert meta.indices == uniform_indices(frames, num_frames)
    assert meta.padded_frames == max(num_frames - frames, 0) and meta.total_num_frames == frames
    assert np.abs(got.astype(int) - expected[meta.indices].astype(int)).max() <= (2 if sixteen else 0)
    out = processor(text="<video>\nWhat?", videos=path, num_frames=num_frames)
    assert out["pixel_values_videos"].shape[0] == num_frames and torch.isfinite(out["pixel_values_videos"]).all()
    assert out["video_num_frames"].tolist() == [num_frames]
    assert video_placeholders(out, processor) == processor.num_video_tokens(num_frames)


# --- damaged files: decoded around the damage, as players do ------------------------------------------------------
def test_clip_with_a_corrupted_middle_is_decoded_around_it(processor, tmp_path, caplog):
    intact = write_clip(tmp_path / "intact.mp4", num_frames=120, gop=30)
    data = bytearray(intact.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    with pytest.raises(av.InvalidDataError):  # a plain decode stops at the damage
        decode_all(damaged)

    with caplog.at_level(logging.WARNING):
        frames, meta = load_video(damaged, num_frames=16)
    warnings = [record.getMessage() for record in caplog.records if "is damaged" in record.getMessage()]
    assert len(warnings) == 1 and re.search(r"skipped \d+ damaged packet\(s\) at [\d.]+", warnings[0])
    assert frames.shape[0] == 16 and 60 < meta.total_num_frames < 120
    reference = decode_all(intact)
    before_damage = [i for i in meta.indices if i < 40]
    assert before_damage and all(np.array_equal(frames[k], reference[i]) for k, i in enumerate(before_damage))
    out = processor(text="<video>\nWhat happens?", videos=str(damaged), num_frames=16)
    assert out["video_num_frames"].tolist() == [16] and torch.isfinite(out["pixel_values_videos"]).all()
