"""bitsandbytes 4/8-bit loading: only the language model's linear layers are quantized, for real (bitsandbytes runs
4/8-bit on CPU), with no extra argument from the user."""

import pytest
import torch
from tiny_models import VIDEO_TOKEN_ID, random_inputs, tiny_model

from modeling_hicom import HicomForConditionalGeneration, HicomModel

bnb = pytest.importorskip("bitsandbytes")
from transformers import BitsAndBytesConfig  # noqa: E402

# Every language-model linear layer has in/out features that are multiples of 64 (bitsandbytes' 4-bit block size),
# unlike the default tiny model (width 32): 64 wide, MLP 128, 2 heads of 32 with 2 key/value heads.
TEXT_CONFIG = dict(
    vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=2, max_position_embeddings=2048, bos_token_id=None, eos_token_id=2, pad_token_id=0,
)
QUANTIZED = {
    "4bit": (dict(load_in_4bit=True), "Linear4bit", 4),
    "8bit": (dict(load_in_8bit=True), "Linear8bitLt", 8),
}
UNQUANTIZED_PREFIXES = ("model.vision_tower.", "model.instruct_encoder.", "model.compressor.")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("bnb") / "hicom"
    tiny_model(text_config=TEXT_CONFIG).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dense(folder):
    return HicomForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()


def load_quantized(folder, kind, **kwargs):
    options, _, _ = QUANTIZED[kind]
    config = BitsAndBytesConfig(**options, **kwargs.pop("bnb", {}))
    return HicomForConditionalGeneration.from_pretrained(folder, quantization_config=config, **kwargs).eval()


@pytest.fixture(scope="module", params=sorted(QUANTIZED))
def quantized(request, folder):
    return request.param, load_quantized(folder, request.param, dtype=torch.float32)


def linear_layers(model):
    return {name: module for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def video_prompt(model, frames=8, seed=0):
    pixels, num_frames, ids, mask = random_inputs(model, [frames], seed=seed)
    with torch.no_grad():
        count = model.get_video_features(pixels, num_frames, ids, mask).pooler_output[0].shape[0]
    input_ids = torch.tensor([[5, 6, 7] + [VIDEO_TOKEN_ID] * count + [8, 9, 10]])
    return dict(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values_videos=pixels,
        video_num_frames=num_frames, instruct_input_ids=ids, instruct_attention_mask=mask,
    )


def test_only_language_model_linears_are_quantized(quantized, dense):
    kind, model = quantized
    class_name = QUANTIZED[kind][1]
    layers = linear_layers(model)
    assert set(layers) == set(linear_layers(dense))  # same modules, some replaced by bitsandbytes subclasses
    language = {name for name in layers if name.startswith("model.language_model.")}
    assert language and all(type(layers[name]).__name__ == class_name for name in language)
    rest = set(layers) - language
    assert {name.split(".")[1] if name.startswith("model.") else name for name in rest} == {
        "vision_tower", "instruct_encoder", "compressor", "lm_head"
    }
    dense_layers = linear_layers(dense)
    for name in rest:
        assert type(layers[name]) is type(dense_layers[name]), name  # untouched (not a bitsandbytes class)
        assert layers[name].weight.dtype == torch.float32, name
    assert not model.config.quantization_config.llm_int8_skip_modules  # the user passed no skip list


def test_memory_footprint_drops_by_the_language_model_linears_alone(quantized, dense):
    kind, model = quantized
    bits = QUANTIZED[kind][2]
    lm_linear_bytes = sum(
        layer.weight.numel() * layer.weight.element_size()
        for name, layer in linear_layers(dense).items()
        if name.startswith("model.language_model.")
    )
    saved = dense.get_memory_footprint() - model.get_memory_footprint()
    # Most of the `bits/32` compression of those weights shows (scales and biases stay), and nothing else shrinks:
    # the footprint never drops by more than the language model's linear weights.
    assert 0.9 * lm_linear_bytes * (1 - bits / 32) <= saved <= lm_linear_bytes


def test_compressed_visual_tokens_are_unchanged(quantized, dense):
    _, model = quantized
    pixels, num_frames, ids, mask = random_inputs(dense, [3, 9], seed=1)
    with torch.no_grad():
        expected = dense.get_video_features(pixels, num_frames, ids, mask).pooler_output
        actual = model.get_video_features(pixels, num_frames, ids, mask).pooler_output
    for got, want in zip(actual, expected, strict=True):
        assert got.dtype == want.dtype == torch.float32
        assert torch.equal(got, want)  # they never pass a quantized layer


def test_generate_with_a_quantized_language_model(quantized, dense):
    kind, model = quantized
    inputs = video_prompt(dense)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False, pad_token_id=0)
        forward = model(**{k: v for k, v in inputs.items() if k != "attention_mask"}, use_cache=False)
        reference = dense(**{k: v for k, v in inputs.items() if k != "attention_mask"}, use_cache=False)
    prompt_length = inputs["input_ids"].shape[1]
    assert out.shape == (1, prompt_length + 4)
    assert torch.equal(out[:, :prompt_length], inputs["input_ids"])
    assert out[:, prompt_length].item() == forward.logits[0, -1].argmax().item()  # greedy, from the quantized logits
    torch.testing.assert_close(forward.video_hidden_states, reference.video_hidden_states, rtol=0, atol=0)
    # Quantization noise, not a broken model: the logits stay aligned with the dense model's. A 4-bit (fp4) weight
    # has 16 levels per 64-block, int8 has 255 per row; measured cosines on this model are ~0.97 and ~0.9999.
    cosine = torch.nn.functional.cosine_similarity(forward.logits.flatten(), reference.logits.flatten(), dim=0)
    assert cosine > {"4bit": 0.9, "8bit": 0.99}[kind]


def test_8bit_cast_notice_is_logged_once_per_process(folder, dense, caplog):
    """bitsandbytes logs its float16 cast at every call of every 8-bit layer; HICom lets it through once."""
    model = load_quantized(folder, "8bit", dtype=torch.float32)
    with caplog.at_level("WARNING", logger="bitsandbytes"), torch.no_grad():
        model.generate(**video_prompt(dense), max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert sum("MatMul8bitLt" in record.getMessage() for record in caplog.records) <= 1


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dense_modules_dtype_follows_keep_in_fp32(folder, dtype):
    """The unquantized modules are listed in `_keep_in_fp32_modules` (the class attribute quantizers read): they run in
    bfloat16 for bfloat16 loads, and in float32 for float16 loads (transformers' documented meaning of the list),
    quantized or not; the language model takes the requested dtype."""
    model = load_quantized(folder, "4bit", dtype=dtype, bnb=dict(bnb_4bit_compute_dtype=dtype))
    plain = HicomForConditionalGeneration.from_pretrained(folder, dtype=dtype)
    expected = torch.float32 if dtype == torch.float16 else dtype
    for loaded in (model, plain):
        dense_dtypes = {name: p.dtype for name, p in loaded.named_parameters() if name.startswith(UNQUANTIZED_PREFIXES)}
        assert dense_dtypes and set(dense_dtypes.values()) == {expected}
    assert {p.dtype for n, p in plain.named_parameters() if not n.startswith(UNQUANTIZED_PREFIXES)} == {dtype}
    inputs = video_prompt(model)
    inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(dtype)
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.dtype == dtype and torch.isfinite(out.logits).all()


def test_a_user_skip_list_does_not_quantize_the_compressor(folder):
    """With `llm_int8_skip_modules` given, transformers drops its default skips (`lm_head` among them, so it is
    quantized unless listed); the model's own list still holds."""
    model = load_quantized(folder, "4bit", bnb=dict(llm_int8_skip_modules=["model.language_model.layers.1.mlp"]))
    layers = linear_layers(model)
    for name, layer in layers.items():
        quantized = name.startswith(("model.language_model.", "lm_head")) and ".layers.1.mlp." not in name
        assert isinstance(layer, bnb.nn.Linear4bit) == quantized, name


def test_base_model_patterns_match_without_the_head_prefix(folder, dense):
    model = HicomModel.from_pretrained(folder, quantization_config=BitsAndBytesConfig(load_in_4bit=True)).eval()
    layers = linear_layers(model)
    assert all(isinstance(layers[n], bnb.nn.Linear4bit) == n.startswith("language_model.") for n in layers)
    pixels, num_frames, ids, mask = random_inputs(dense, [5], seed=2)
    with torch.no_grad():
        expected = dense.get_video_features(pixels, num_frames, ids, mask).pooler_output[0]
        assert torch.equal(model.get_video_features(pixels, num_frames, ids, mask).pooler_output[0], expected)


def test_saved_4bit_checkpoint_reloads_identically(folder, tmp_path):
    model = load_quantized(folder, "4bit")
    # Saved before any forward: on CPU, bitsandbytes repacks 4-bit weights in place at the first matmul, and a
    # state dict taken afterwards holds the packed layout (an upstream bitsandbytes issue, not HICom's).
    model.save_pretrained(tmp_path / "q4")
    reloaded = HicomForConditionalGeneration.from_pretrained(tmp_path / "q4").eval()
    assert isinstance(reloaded.model.language_model.layers[0].mlp.up_proj, bnb.nn.Linear4bit)
    assert not isinstance(reloaded.model.compressor.global_level.attn.k_proj, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))
    inputs = video_prompt(model)
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, model(**inputs).logits)
