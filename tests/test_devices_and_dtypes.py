"""Where users run it besides plain float32: `device_map` splits with CPU and disk offload, bfloat16 and float16."""

from collections import Counter

import pytest
import torch
from tiny_models import VIDEO_TOKEN_ID, random_inputs, tiny_model
from torch.utils._python_dispatch import TorchDispatchMode

from modeling_hicom import HicomForConditionalGeneration


@pytest.fixture(scope="module")
def dense():
    return tiny_model()


@pytest.fixture(scope="module")
def folder(dense, tmp_path_factory):
    path = tmp_path_factory.mktemp("devices") / "hicom"
    dense.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def prompt(dense):
    """Two videos (8 and 5 frames) in one prompt, with the placeholder counts the model produces."""
    pixels, num_frames, ids, mask = random_inputs(dense, [8, 5], seed=3)
    with torch.no_grad():
        counts = [t.shape[0] for t in dense.get_video_features(pixels, num_frames, ids, mask).pooler_output]
    input_ids = torch.tensor([[5, 6, 7] + [VIDEO_TOKEN_ID] * counts[0] + [8, 9] + [VIDEO_TOKEN_ID] * counts[1] + [10]])
    return dict(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values_videos=pixels,
        video_num_frames=num_frames, instruct_input_ids=ids, instruct_attention_mask=mask,
    )


def greedy(model, prompt, **overrides):
    with torch.no_grad():
        return model.generate(**{**prompt, **overrides}, max_new_tokens=6, do_sample=False, pad_token_id=0)


# --- device_map ----------------------------------------------------------------------------------------------------
NO_SPLIT_PREFIXES = (
    "model.language_model.layers.", "model.vision_tower.encoder.layers.", "model.instruct_encoder.encoder.layers."
)


def whole_modules(device_map: dict) -> bool:
    """Each entry names a module no deeper than a `_no_split_modules` layer (`...layers.<i>`) or the compressor."""
    for name in device_map:
        for prefix in NO_SPLIT_PREFIXES:
            if name.startswith(prefix) and "." in name[len(prefix):]:
                return False
        if name.startswith("model.compressor."):
            return False
    return True


@pytest.mark.parametrize("share", [0.3, 0.6])
def test_auto_device_map_with_cpu_and_disk_offload_generates_the_same_tokens(dense, folder, prompt, tmp_path, share):
    """A CPU budget below the model's size sends the rest to disk (accelerate loads each module's weights around its
    forward). Layers stay whole, and generation is token for token the unsplit model's."""
    budget = int(dense.get_memory_footprint() * share)
    model = HicomForConditionalGeneration.from_pretrained(
        folder, device_map="auto", max_memory={"cpu": budget}, offload_folder=tmp_path / "offload"
    ).eval()
    placement = model.hf_device_map
    assert set(placement.values()) == {"cpu", "disk"}
    assert whole_modules(placement), placement
    # Disk-offloaded weights are not resident (transformers reads them from the checkpoint's safetensors on demand).
    on_disk = [name for name, device in placement.items() if device == "disk"]
    assert all(p.device.type == "meta" for name in on_disk for p in model.get_submodule(name).parameters())
    assert torch.equal(greedy(model, prompt), greedy(dense, prompt))


def test_compressor_offloaded_to_disk_gives_the_same_visual_tokens(dense, folder, prompt, tmp_path):
    """The compressor reads some weights outside `forward` (the reassociated global attention); offloaded to disk,
    they must still be loaded while it runs (not meta tensors)."""
    placement = {
        "model.vision_tower": "cpu", "model.instruct_encoder": "cpu", "model.compressor": "disk",
        "model.language_model": "cpu", "lm_head": "cpu",
    }
    model = HicomForConditionalGeneration.from_pretrained(
        folder, device_map=placement, offload_folder=tmp_path / "offload"
    ).eval()
    assert model.model.compressor.global_level.attn.k_proj.weight.device.type == "meta"  # offloaded, not resident
    inputs = [prompt[key] for key in ("pixel_values_videos", "video_num_frames", "instruct_input_ids")]
    with torch.no_grad():
        expected = dense.get_video_features(*inputs, prompt["instruct_attention_mask"]).pooler_output
        actual = model.get_video_features(*inputs, prompt["instruct_attention_mask"]).pooler_output
    for got, want in zip(actual, expected, strict=True):
        # The dispatched path compresses whole clips instead of streaming chunks: same math, other summation order.
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert torch.equal(greedy(model, prompt), greedy(dense, prompt))


# --- attention implementations -------------------------------------------------------------------------------------
def test_eager_and_sdpa_attention_agree(dense, folder, prompt):
    """`attn_implementation` reaches every sub-model (both SigLIP towers and Qwen2) and both give the same outputs."""
    models, outputs = {}, {}
    for implementation in ("eager", "sdpa"):
        model = HicomForConditionalGeneration.from_pretrained(folder, attn_implementation=implementation).eval()
        towers = (model.model.vision_tower, model.model.instruct_encoder, model.model.language_model)
        assert {tower.config._attn_implementation for tower in towers} == {implementation}
        with torch.no_grad():
            models[implementation], outputs[implementation] = model, model(**prompt)
    for got, want in zip(outputs["eager"].video_hidden_states, outputs["sdpa"].video_hidden_states, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(outputs["eager"].logits, outputs["sdpa"].logits, atol=1e-5, rtol=0)
    assert torch.equal(greedy(models["eager"], prompt), greedy(dense, prompt))


# --- half precision ------------------------------------------------------------------------------------------------
# Relative L2 error of the visual tokens and logits against float32: a few roundings of the format's unit roundoff
# (bf16 2^-8, fp16 2^-11) per layer accumulate; measured on this model: bf16 ~1.2e-2, fp16 ~1.3e-3.
TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 4e-3}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected).norm() / expected.norm()).item()


def visual_dtype(dtype: torch.dtype) -> torch.dtype:
    """The towers and the compressor are `_keep_in_fp32_modules`: float32 in float16 loads, else the load's dtype."""
    return torch.float32 if dtype == torch.float16 else dtype


@pytest.mark.parametrize("dtype", sorted(TOLERANCE, key=str))
def test_half_precision_is_close_to_float32(dense, folder, prompt, dtype):
    model = HicomForConditionalGeneration.from_pretrained(folder, dtype=dtype).eval()
    language = ("model.language_model.", "lm_head")
    assert {p.dtype for name, p in model.named_parameters() if name.startswith(language)} == {dtype}
    assert {p.dtype for name, p in model.named_parameters() if not name.startswith(language)} == {visual_dtype(dtype)}
    low = {**prompt, "pixel_values_videos": prompt["pixel_values_videos"].to(dtype)}
    with torch.no_grad():
        reference = dense(**prompt)
        output = model(**low)
    assert output.logits.dtype == dtype
    for got, want in zip(output.video_hidden_states, reference.video_hidden_states, strict=True):
        assert got.dtype == visual_dtype(dtype) and relative_error(got, want) < TOLERANCE[dtype]
    assert relative_error(output.logits, reference.logits) < TOLERANCE[dtype]
    # Greedy decisions agree wherever float32's top two logits are further apart than the precision's error.
    top2 = reference.logits[0].topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 8 * TOLERANCE[dtype] * reference.logits.abs().max()
    assert clear.any()
    assert torch.equal(output.logits[0].argmax(-1)[clear], reference.logits[0].argmax(-1)[clear])


class _Recorder(TorchDispatchMode):
    """Records the input dtype of every softmax and layer norm that runs."""

    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if "softmax" in name or "layer_norm" in name:
            self.calls[name, args[0].dtype] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_softmaxes_run_in_float32(folder, prompt, dtype):
    """Every softmax (SigLIP's and Qwen2's eager attention, the compressor's local, global and pooling attentions)
    takes float32 scores. Layer norms (all in the SigLIP towers) take the towers' dtype: PyTorch's kernels accumulate
    their statistics in float32 for half-precision inputs, and Qwen2's RMSNorm upcasts explicitly."""
    model = HicomForConditionalGeneration.from_pretrained(folder, dtype=dtype, attn_implementation="eager").eval()
    with torch.no_grad(), _Recorder() as recorder:
        model(**{**prompt, "pixel_values_videos": prompt["pixel_values_videos"].to(dtype)})
    softmaxes = {key: count for key, count in recorder.calls.items() if "softmax" in key[0]}
    assert softmaxes and {dtype_ for _, dtype_ in softmaxes} == {torch.float32}, softmaxes
    assert {dtype_ for name, dtype_ in recorder.calls if "layer_norm" in name} == {visual_dtype(dtype)}


@pytest.mark.parametrize(
    "variant",
    [{}, dict(local_injection="coarse", global_injection="coarse", local_adapt_key=True),
     dict(local_injection="fine", global_injection="fine", local_clip_scale=True, global_clip_scale=True)],
)
def test_compressor_creates_its_tensors_on_the_features_device(variant):
    """No tensor of the compressor's own (plans, position tables, masks, indices) stays on the CPU when the features
    are elsewhere: on the meta device, which stands in for a GPU here, any CPU operand would raise."""
    compressor = tiny_model(**variant).model.compressor.to("meta")
    features = torch.empty(10, 5, 5, 64, device="meta")
    per_token = variant.get("local_injection") == "fine"
    instruct = torch.empty(*((8, 64) if per_token else (64,)), device="meta")
    with torch.no_grad():
        output = compressor(features, features, instruct, output_attentions=True)
    assert {tensor.device.type for tensor in output} == {"meta"}
