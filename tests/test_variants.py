"""Every projector variant the authors' code can build, beyond the two fixtures.

Tiny models of each variant are checked against the plain implementation of the formulas (`reference_compressor`) on
the model's streamed path, at every frame count from 1 to 40 for each injection mode, and against properties that
must hold whatever the weights: fine injection reads every instruction row (padding included), CLIP scale changes
only the attention temperature, adapters with closed gates are the identity. Original-format checkpoints of each
variant (built from the names and shapes the original code gives its parameters) convert, reload from the converted
folder alone in a fresh process, and generate.
"""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from reference_compressor import reference_compress
from safetensors.torch import load_file, save_file
from test_conversion import run_isolated
from tiny_models import random_inputs, tiny_model

from hicom_transformers.conversion.convert_hicom_original_to_hf import convert
from modeling_hicom import relevance_maps
from processing_hicom.processing_hicom import TOKEN_COUNT_FIELDS, num_video_tokens

ALL_LOCAL_ADAPTERS = dict(local_adapt_query=True, local_adapt_key=True, local_adapt_value=True, local_adapt_instruct=True)
VARIANTS = {
    "release": {},
    "coarse, every adapter": dict(
        local_injection="coarse", global_injection="coarse", global_adapt_instruct=True, **ALL_LOCAL_ADAPTERS
    ),
    "paper: direct local, coarse global": dict(
        global_injection="coarse", local_adapt_key=True, local_adapt_value=True, global_adapt_instruct=True
    ),
    "fine, every adapter": dict(
        local_injection="fine", global_injection="fine", global_adapt_instruct=True, **ALL_LOCAL_ADAPTERS
    ),
    "off (no instruction)": dict(local_injection="off", global_injection="off", local_adapt_query=True),
    "local only, coarse, 2x2 windows": dict(num_global_queries=0, local_injection="coarse", local_spatial_kernel=2),
    "global only, fine": dict(use_local_level=False, local_injection="off", global_injection="fine"),
    "CLIP scale, direct": dict(local_clip_scale=True, global_clip_scale=True, local_adapt_key=True),
    "CLIP scale, fine": dict(
        local_injection="fine", global_injection="fine", local_clip_scale=True, global_clip_scale=True
    ),
    "instruction width differs (text2qk)": dict(
        local_injection="coarse", global_adapt_instruct=True,
        instruct_config=dict(
            hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, vocab_size=64,
            max_position_embeddings=16, pad_token_id=1, bos_token_id=None, eos_token_id=1, projection_size=48,
        ),
    ),
    "kernels 1x12x12": dict(local_temporal_kernel=1, local_spatial_kernel=12, local_injection="coarse"),
}
INJECTION_MODES = ("off", "direct", "coarse", "fine")
ATOL = 2e-5


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant_model(request):
    return tiny_model(**VARIANTS[request.param])


def encode(model, frames, seed=0):
    """`(pixels, num_frames, ids, mask)`, the clip's features and patch embeddings, and its instruction embedding."""
    inputs = random_inputs(model, [frames], seed=seed)
    with torch.no_grad():
        features, embeds = model.model.encode_frames(inputs[0])
        guide = model.model.encode_instructions(*inputs[2:])[0] if model.model.compressor.needs_instruct else None
    return inputs, features, embeds, guide


def expected_token_count(config, frames):
    """The processor's count (the one function), for the tiny models' 5x5 patch grid."""
    return num_video_tokens(frames, (5, 5), **{name: getattr(config, name) for name in TOKEN_COUNT_FIELDS})


# --- every variant against the plain formulas ----------------------------------------------------------------------


@pytest.mark.parametrize("frames", [1, 6, 10])
def test_streamed_path_equals_the_formulas(variant_model, frames):
    inputs, features, embeds, guide = encode(variant_model, frames, seed=frames)
    with torch.no_grad():
        actual = variant_model.get_video_features(*inputs, vision_batch_size=3).pooler_output[0]
    expected = reference_compress(variant_model, features, embeds, guide)
    assert actual.shape == (expected_token_count(variant_model.config, frames), 32)
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=1e-4)


def test_relevance_maps_cover_every_level_the_variant_has(variant_model):
    inputs, *_ = encode(variant_model, 6)
    with torch.no_grad():
        features = variant_model.get_video_features(*inputs, output_attentions=True)
    (maps,) = relevance_maps(features, variant_model.config)
    config = variant_model.config
    for level, present in (("local", config.use_local_level), ("global", config.num_global_queries > 0)):
        if present:
            assert maps.level_map(level).shape == (6, 5, 5)
            assert maps.level_map(level).sum().item() == pytest.approx(1.0, abs=1e-5)
        else:
            with pytest.raises(ValueError, match=f"no {level} level"):
                maps.level_map(level)


@pytest.mark.parametrize("mode", INJECTION_MODES)
def test_every_frame_count_from_1_to_40(mode):
    """Both levels in one injection mode, every clip length (overlapping and evenly spread windows included). The
    streamed model path is held to this compressor for every mode in `test_performance_paths`."""
    model = tiny_model(local_injection=mode, global_injection=mode, local_adapt_key=True)
    compressor = model.model.compressor
    generator = torch.Generator().manual_seed(1)
    guide_shape = {"off": None, "fine": (16, 64)}.get(mode, (64,))
    for frames in range(1, 41):
        features, embeds = torch.randn(2, frames, 5, 5, 64, generator=generator)
        guide = torch.randn(guide_shape, generator=generator) if guide_shape else None
        with torch.no_grad():
            actual = compressor(features, embeds, guide)[0]
        expected = reference_compress(model, features, embeds, guide)
        assert actual.shape == (expected_token_count(model.config, frames), 32), frames
        torch.testing.assert_close(actual, expected, atol=ATOL, rtol=1e-4, msg=f"{frames} frames")


# --- properties ------------------------------------------------------------------------------------------------------


def test_fine_injection_reads_every_instruction_row_padding_included():
    model = tiny_model(**VARIANTS["fine, every adapter"])
    inputs, features, embeds, guide = encode(model, 6)
    changed = guide.clone()
    changed[-1] += 1.0  # the last row: padding in any instruction shorter than `instruct_max_length`
    with torch.no_grad():
        before = model.model.compressor(features, embeds, guide)[0]
        after = model.model.compressor(features, embeds, changed)[0]
    num_local = expected_token_count(model.config, 6) - 4
    for part in (slice(0, num_local), slice(num_local, None)):  # both levels
        assert not torch.allclose(before[part], after[part], atol=1e-4)
    torch.testing.assert_close(after, reference_compress(model, features, embeds, changed), atol=ATOL, rtol=1e-4)
    # Through the model: padding tokens (masked in the text tower) still reach the compressor as rows.
    pixels, num_frames, ids, mask = inputs
    mask[:, 10:] = 0
    padded = ids.clone()
    padded[:, 10:] = 1
    other = padded.clone()
    other[:, 10:] = 7
    with torch.no_grad():
        a = model.get_video_features(pixels, num_frames, padded, mask).pooler_output[0]
        b = model.get_video_features(pixels, num_frames, other, mask).pooler_output[0]
    assert not torch.allclose(a, b, atol=1e-4)


def transplant(source, **overrides):
    """A tiny model with `overrides`, holding `source`'s weights wherever their names match."""
    target = tiny_model(**overrides)
    target.load_state_dict(source.state_dict(), strict=False)
    return target


def test_local_clip_scale_is_normalization_plus_a_temperature():
    """With exp(logit_scale) = 1/sqrt(D), local CLIP scale equals the plain local level fed unit-length keys and
    instruction; the bias shifts every score of a window alike, so it changes nothing."""
    clip = tiny_model(local_clip_scale=True)
    level = clip.model.compressor.local_level
    with torch.no_grad():
        level.logit_scale.fill_(math.log(64**-0.5))
        level.logit_bias.fill_(3.0)
    plain = transplant(clip)
    _, features, embeds, guide = encode(clip, 6)
    num_local = expected_token_count(clip.config, 6) - 4
    with torch.no_grad():
        actual = clip.model.compressor(features, embeds, guide)[0][:num_local]
        unit = plain.model.compressor(features, embeds / embeds.norm(dim=-1, keepdim=True), guide / guide.norm())[0]
    torch.testing.assert_close(actual, unit[:num_local], atol=1e-5, rtol=1e-5)


def test_global_clip_scale_changes_only_the_temperature():
    """Scaling `exp(logit_scale)` by r multiplies every log-weight by r up to a per-(head, query) constant, and the
    bias does nothing: the scores themselves (cosine similarities) are fixed."""
    model = tiny_model(global_clip_scale=True, global_injection="coarse")
    attn = model.model.compressor.global_level.attn
    inputs, *_ = encode(model, 6)

    def global_weights(scale, bias):
        with torch.no_grad():
            attn.logit_scale.fill_(scale)
            attn.logit_bias.fill_(bias)
            return model.get_video_features(*inputs, output_attentions=True).global_attentions[0].double()

    base, hotter, shifted = global_weights(0.5, -10.0), global_weights(1.5, -10.0), global_weights(0.5, 4.0)
    torch.testing.assert_close(shifted, base, atol=1e-6, rtol=1e-5)
    residual = hotter.log() - math.exp(1.0) * base.log()
    torch.testing.assert_close(residual, residual[..., :1].expand_as(residual), atol=1e-4, rtol=0)
    assert not torch.allclose(hotter, base)


def test_adapters_with_closed_gates_are_the_plain_model():
    adapted = tiny_model(**VARIANTS["coarse, every adapter"])
    gates = [name for name, _ in adapted.named_parameters() if name.endswith(".gate")]
    assert len(gates) == 5  # local q, k, v, g and global g: the reference's adapters (none on the global query)
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if name.endswith(".gate"):
                parameter.zero_()
    plain = transplant(adapted, local_injection="coarse", global_injection="coarse")
    inputs, *_ = encode(adapted, 6)
    with torch.no_grad():
        torch.testing.assert_close(
            adapted.get_video_features(*inputs).pooler_output[0], plain.get_video_features(*inputs).pooler_output[0]
        )


def test_unconditional_model_has_no_instruction_encoder_and_keys_on_features():
    model = tiny_model(local_injection="off", global_injection="off")
    assert model.model.instruct_encoder is None
    pixels, num_frames, ids, mask = random_inputs(model, [6])
    with torch.no_grad():
        with_instruction = model.get_video_features(pixels, num_frames, ids, mask).pooler_output[0]
        without = model.get_video_features(pixels, num_frames).pooler_output[0]
        features, _ = model.model.encode_frames(pixels)
        keyed_on_features = model.model.compressor(features, features)[0]
    torch.testing.assert_close(with_instruction, without)
    torch.testing.assert_close(without, keyed_on_features)


# --- original checkpoints of every variant: convert, reload in a fresh process, generate ----------------------------

FIXTURE = Path(__file__).parent / "fixtures" / "hicom-tiny-adapt-coarse"
# (mm_projector_type, use_guide, use_clip_scale) of original checkpoints the reference code can build.
ORIGINAL_VARIANTS = {
    "paper-direct-local-coarse-global": ("local43_adaptkv_global32_adaptg_guidecoarse", "direct", ""),
    "fine": ("local43_adaptqkvg_global16_adaptg", "fine", ""),
    "unconditional": ("local22_adaptqkv_global8", None, ""),
    "local-only": ("local412_adaptk_guidecoarse", "direct", ""),
    "global-only-fine": ("global32_adaptg_guidefine", "fine", ""),
    "clip-scale": ("local43_adaptk_global32", "direct", "local,global"),
    "clip-scale-coarse": ("local13_adaptq_guidecoarse_global32_guidecoarse", "direct", "global"),
    "local-off-global-direct": ("local43_adaptq_guideoff_global32", "direct", ""),
}


def original_projector(projector_type, use_guide, use_clip_scale, width=256, text_width=64, seed=0):
    """Random `model.mm_projector.*` tensors with the names and shapes the original code gives a variant (written
    from the original's parameter list, not from this project's converter)."""
    from hicom_transformers.conversion.convert_hicom_original_to_hf import parse_projector_type

    settings = parse_projector_type(projector_type, use_guide, use_clip_scale)
    generator = torch.Generator().manual_seed(seed)
    shapes = {}

    def mlp(name, inner, outer):
        shapes.update({f"{name}.0.weight": (inner, width), f"{name}.0.bias": (inner,),
                       f"{name}.2.weight": (outer, inner), f"{name}.2.bias": (outer,)})

    def norm(name):
        shapes.update({f"{name}.weight": (width,), f"{name}.bias": (width,)})

    def attention(name):
        for projection in ("q", "k", "v", "out"):
            shapes.update({f"{name}.{projection}_proj.weight": (width, width), f"{name}.{projection}_proj.bias": (width,)})

    def injector(name, mode, adapt_guide):
        if mode == "off":
            return
        if adapt_guide:
            mlp(f"{name}.guide_proj", width, width)
            norm(f"{name}.guide_norm")
            shapes[f"{name}.guide_alpha"] = (1,)
        if mode == "coarse":
            mlp(f"{name}.coarse_proj", 2 * width, 2 * width)
            norm(f"{name}.coarse_norm")
        elif mode == "fine":
            attention(f"{name}.fine_proj")
            norm(f"{name}.fine_norm")

    prefix = "model.mm_projector."
    if settings["use_local_level"]:
        local = f"{prefix}local_compressor"
        mlp(f"{local}.readout", text_width, text_width)
        if settings["local_adapt_query"]:
            shapes[f"{local}.q_proj.weight"] = (width, width)
            norm(f"{local}.q_norm")
            shapes[f"{local}.q_alpha"] = (1,)
        for letter in "kv":
            if settings[f"local_adapt_{'key' if letter == 'k' else 'value'}"]:
                mlp(f"{local}.{letter}_proj", width, width)
                norm(f"{local}.{letter}_norm")
                shapes[f"{local}.{letter}_alpha"] = (1,)
        injector(f"{local}.guide_injector", settings["local_injection"], settings["local_adapt_instruct"])
    if settings["num_global_queries"]:
        global_ = f"{prefix}global_compressor"
        shapes[f"{global_}.query"] = (settings["num_global_queries"], width)
        attention(f"{global_}.attn_layer")
        mlp(f"{global_}.readout", text_width, text_width)
        injector(f"{global_}.guide_injector", settings["global_injection"], settings["global_adapt_instruct"])
    for level in ("local", "global"):
        if level in use_clip_scale.split(","):
            shapes.update({f"{prefix}{level}_logit_scale": (1,), f"{prefix}{level}_logit_bias": (1,)})
    tensors = {}
    for name, shape in shapes.items():
        values = torch.randn(shape, generator=generator)
        if name.endswith("_alpha"):
            values = torch.rand(shape, generator=generator) * 0.6 + 0.2
        elif name.endswith("logit_scale"):
            values = values * 0.1 + math.log(10.0)
        elif name.endswith("logit_bias"):
            values = values - 10.0
        elif "norm" in name and name.endswith(".weight"):
            values = 1 + 0.05 * values
        else:
            values = 0.05 * values
        tensors[name] = values.bfloat16()
    return tensors


def write_original(folder, projector_type, use_guide, use_clip_scale):
    """The adapt-coarse fixture's checkpoint with another projector (and no instruction encoder if it needs none)."""
    shutil.copytree(FIXTURE / "original_checkpoint", folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(mm_projector_type=projector_type, use_guide=use_guide, use_clip_scale=use_clip_scale)
    (folder / "config.json").write_text(json.dumps(config))
    tensors = {
        key: value for key, value in load_file(folder / "model.safetensors").items()
        if not key.startswith("model.mm_projector.")
        and not (use_guide in (None, "off") and key.startswith("model.vision_tower.guide_encoder."))
    }
    tensors.update(original_projector(projector_type, use_guide, use_clip_scale))
    save_file(tensors, folder / "model.safetensors")


FRESH_PROCESS_GENERATE = """
import json, sys, torch
from pathlib import Path
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor
reference = load_file(sys.argv[1])
results = {}
for folder in sys.argv[3:]:
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    frames = reference["pixel_values"].shape[0]
    count = AutoProcessor.from_pretrained(folder, trust_remote_code=True).num_video_tokens(frames)
    input_ids = torch.cat([reference["text_before_ids"], torch.full((count,), model.config.video_token_id),
                           reference["text_after_ids"]])[None]
    inputs = dict(input_ids=input_ids, pixel_values_videos=reference["pixel_values"].float(),
                  instruct_input_ids=reference["guide_input_ids"],
                  instruct_attention_mask=reference["guide_attention_mask"])
    with torch.no_grad():
        tokens = model(**inputs).video_hidden_states
        generated = model.generate(**inputs, attention_mask=torch.ones_like(input_ids), max_new_tokens=3,
                                   do_sample=False)
    results[Path(folder).name] = {"tokens": tokens, "generated": generated[0, input_ids.shape[1]:]}
torch.save(results, sys.argv[2])
"""


def test_every_original_variant_converts_reloads_and_generates(tmp_path):
    from transformers import AutoModelForImageTextToText

    reference = load_file(FIXTURE / "reference_io.safetensors")
    folders = []
    for name, original in ORIGINAL_VARIANTS.items():
        write_original(tmp_path / f"{name}-original", *original)
        folders.append(convert(tmp_path / f"{name}-original", FIXTURE / "siglip-so400m-patch14-384", tmp_path / name))
    run_isolated(FRESH_PROCESS_GENERATE, FIXTURE / "reference_io.safetensors", tmp_path / "out.pt", *folders)
    results = torch.load(tmp_path / "out.pt")
    for name, folder in zip(ORIGINAL_VARIANTS, folders):
        model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
        with torch.no_grad():
            features, embeds = model.model.encode_frames(reference["pixel_values"].float())
            guide = None
            if model.model.compressor.needs_instruct:
                guide = model.model.encode_instructions(reference["guide_input_ids"], reference["guide_attention_mask"])[0]
        expected = reference_compress(model, features, embeds, guide)
        torch.testing.assert_close(results[name]["tokens"], expected, atol=1e-4, rtol=1e-4, msg=name)
        assert results[name]["generated"].shape == (3,), name
