"""Converter: parity with both fixtures through the whole convert -> remote-code load path, the projector-type parser
(every setting the reference reads), the release layout, refusals."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hicom_transformers.conversion.convert_hicom_original_to_hf import (
    ConversionError,
    build_config,
    convert,
    convert_state_dict,
    load_tokenizer,
    parse_projector_type,
    rename_key,
)
from modeling_hicom import HicomConfig, HicomForConditionalGeneration

FIXTURES = Path(__file__).parent / "fixtures"
# The release's variant, and local + global coarse injection with every adapter the reference has.
FIXTURE_NAMES = ("hicom-tiny-reference", "hicom-tiny-adapt-coarse")
FIXTURE = FIXTURES / FIXTURE_NAMES[0]
ORIGINAL = FIXTURE / "original_checkpoint"
SIGLIP = FIXTURE / "siglip-so400m-patch14-384"
REFERENCE = load_file(FIXTURE / "reference_io.safetensors")


@pytest.fixture(scope="module", params=FIXTURE_NAMES)
def fixture_name(request):
    return request.param


@pytest.fixture(scope="module")
def reference(fixture_name):
    return load_file(FIXTURES / fixture_name / "reference_io.safetensors")


@pytest.fixture(scope="module")
def converted_fixture(fixture_name, tmp_path_factory):
    folder = FIXTURES / fixture_name
    return convert(
        folder / "original_checkpoint", folder / "siglip-so400m-patch14-384",
        tmp_path_factory.mktemp("converted") / fixture_name,
    )


@pytest.fixture(scope="module")
def loaded(converted_fixture):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(
        converted_fixture, trust_remote_code=True, dtype=torch.float32
    ).eval()


def max_error(actual, expected):
    return (actual - expected).abs().max().item()


# --- parity with the authors' model (fixture contract) -------------------------------------------------------------


def test_loaded_class(loaded):
    """In this process our package is imported, so its registered classes load the folder (transformers prefers an
    explicitly registered class to the folder's copy); the folder's own remote code is checked in a fresh process."""
    assert type(loaded).__name__ == "HicomForConditionalGeneration"
    assert loaded.dtype == torch.float32


def test_vision_features_and_patch_embeddings(loaded, reference):
    with torch.no_grad():
        features, embeds = loaded.model.encode_frames(reference["pixel_values"].float())
    assert max_error(features, reference["expected_vision_features"]) <= 1e-4
    assert max_error(embeds, reference["expected_patch_embeds"]) <= 1e-4


def test_instruct_embedding(loaded, reference):
    with torch.no_grad():
        guide = loaded.model.encode_instructions(reference["guide_input_ids"], reference["guide_attention_mask"])
    assert max_error(guide, reference["expected_guide_embeds"]) <= 1e-4


def reference_inputs(model, reference):
    n_tokens = reference["expected_visual_tokens"].shape[0]
    input_ids = torch.cat(
        [reference["text_before_ids"], torch.full((n_tokens,), model.config.video_token_id), reference["text_after_ids"]]
    )[None]
    return dict(
        input_ids=input_ids,
        pixel_values_videos=reference["pixel_values"].float(),
        video_num_frames=torch.tensor([reference["pixel_values"].shape[0]]),
        instruct_input_ids=reference["guide_input_ids"],
        instruct_attention_mask=reference["guide_attention_mask"],
    )


def test_visual_tokens_and_logits(loaded, reference):
    inputs = reference_inputs(loaded, reference)
    with torch.no_grad():
        out = loaded(**inputs)
    assert max_error(out.video_hidden_states, reference["expected_visual_tokens"]) <= 1e-4
    assert max_error(out.logits[0], reference["expected_logits"]) <= 1e-4


def test_settings_read_from_each_fixture(loaded, fixture_name):
    """The release quirk gives direct injection at both levels (32 identical global tokens); the adapt-coarse
    fixture's `guidecoarse` words give coarse injection at both, with every adapter (its global tokens differ)."""
    config = loaded.config
    settings = (config.local_injection, config.global_injection, config.local_adapt_query, config.local_adapt_key,
                config.local_adapt_value, config.local_adapt_instruct, config.global_adapt_instruct)
    if fixture_name == "hicom-tiny-reference":
        assert settings == ("direct", "direct") + (False,) * 5
        tokens = REFERENCE["expected_visual_tokens"][18:]
        assert torch.allclose(tokens, tokens[:1].expand_as(tokens), atol=1e-6)
    else:
        assert settings == ("coarse", "coarse") + (True,) * 5


def test_model_card_states_the_variant(converted_fixture, fixture_name):
    card = (converted_fixture / "README.md").read_text()
    if fixture_name == "hicom-tiny-reference":
        assert "local: 4x3x3 windows, direct injection, adapters none; global: 32 queries, direct injection" in card
        assert "identical copies" in card
    else:
        assert "local: 4x3x3 windows, coarse injection, adapters q,k,v,g; global: 32 queries, coarse injection, " \
            "adapter g; CLIP-scale attention: none" in card
        assert "identical copies" not in card


REMOTE_CODE = {
    "configuration_hicom.py", "compressor_hicom.py", "modeling_hicom.py",  # the model's (`register_for_auto_class`)
    "processing_hicom.py", "video_processing_hicom.py",  # the processor's
    "pipeline_hicom.py",  # the pipeline's (`Pipeline.save_pretrained`)
}


def test_converted_folder_is_self_contained(converted_fixture):
    """Every class the folder names (model, processor, video processor, pipeline) has its module beside it; nothing
    else is shipped (the relevance-map helper is not remote code)."""
    config = json.loads((converted_fixture / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_hicom.HicomConfig",
        "AutoModelForImageTextToText": "modeling_hicom.HicomForConditionalGeneration",
        "AutoModelForMultimodalLM": "modeling_hicom.HicomForConditionalGeneration",  # the `any-to-any` pipeline's
    }
    processor_config = json.loads((converted_fixture / "processor_config.json").read_text())
    named = [
        *config["auto_map"].values(),
        config["custom_pipelines"]["video-text-to-text"]["impl"],
        processor_config["auto_map"]["AutoProcessor"],
        processor_config["video_processor"]["auto_map"]["AutoVideoProcessor"],
    ]
    assert config["custom_pipelines"]["video-text-to-text"]["pt"] == ["AutoModelForImageTextToText"]
    assert {f"{name.split('.')[0]}.py" for name in named} <= REMOTE_CODE
    assert {path.name for path in converted_fixture.glob("*.py")} == REMOTE_CODE
    assert config["torch_dtype" if "torch_dtype" in config else "dtype"] == "bfloat16"


FRESH_PROCESS_CHECK = """
import sys, torch
from transformers import AutoModelForImageTextToText
model = AutoModelForImageTextToText.from_pretrained(sys.argv[1], trust_remote_code=True, dtype=torch.float32).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
assert not any(m.split(".")[0] in ("modeling_hicom", "processing_hicom") for m in sys.modules)
inputs = torch.load(sys.argv[2])
with torch.no_grad():
    out = model(**inputs)
torch.save({"logits": out.logits, "video_hidden_states": out.video_hidden_states}, sys.argv[3])
"""


def test_remote_code_reproduces_the_reference_in_a_fresh_process(converted_fixture, loaded, reference, tmp_path):
    """The converted folder alone (its remote code, our package not importable) reproduces the authors' outputs."""
    torch.save(reference_inputs(loaded, reference), tmp_path / "inputs.pt")
    run_isolated(FRESH_PROCESS_CHECK, converted_fixture, tmp_path / "inputs.pt", tmp_path / "out.pt")
    out = torch.load(tmp_path / "out.pt")
    assert max_error(out["video_hidden_states"], reference["expected_visual_tokens"]) <= 1e-4
    assert max_error(out["logits"][0], reference["expected_logits"]) <= 1e-4


def test_save_pretrained_round_trips_exactly_in_a_fresh_process(loaded, reference, tmp_path):
    saved = tmp_path / "resaved"
    loaded.save_pretrained(saved)
    inputs = reference_inputs(loaded, reference)
    torch.save(inputs, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = loaded(**inputs).logits
    run_isolated(FRESH_PROCESS_CHECK, saved, tmp_path / "inputs.pt", tmp_path / "out.pt")
    assert torch.equal(torch.load(tmp_path / "out.pt")["logits"], expected)


def run_isolated(code, *args):
    """Run `code` in a new interpreter that cannot import this repository (only the saved remote code)."""
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], cwd="/", env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# --- the projector-type parser and its quirk -----------------------------------------------------------------------


def per_level(settings):
    """Compact per-level view: local `(kt, ks, injection, adapters, clip)` and global `(queries, injection, adapter g,
    clip)`, None for an absent level."""
    local = global_ = None
    if settings["use_local_level"]:
        adapters = "".join(
            letter for letter, name in zip("qkvg", ("query", "key", "value", "instruct"))
            if settings[f"local_adapt_{name}"]
        )
        local = (settings["local_temporal_kernel"], settings["local_spatial_kernel"], settings["local_injection"],
                 adapters, settings["local_clip_scale"])
    if settings["num_global_queries"]:
        global_ = (settings["num_global_queries"], settings["global_injection"], settings["global_adapt_instruct"],
                   settings["global_clip_scale"])
    return local, global_


# (mm_projector_type, use_guide, use_clip_scale) -> (local, global) as `per_level` writes them.
PARSER_TABLE = [
    # The release: "coarse" is no `guide<mode>` word, so `use_guide` decides both levels.
    (("local43_global32_coarse", "direct", ""), ((4, 3, "direct", "", False), (32, "direct", False, False))),
    (("local43_global32", "direct", ""), ((4, 3, "direct", "", False), (32, "direct", False, False))),
    # The adapt-coarse fixture: `guide<mode>` words override `use_guide` per level.
    (("local43_adaptqkvg_guidecoarse_global32_adaptg_guidecoarse", "direct", ""),
     ((4, 3, "coarse", "qkvg", False), (32, "coarse", True, False))),
    # The paper's setting: direct local, coarse global.
    (("local43_adaptkv_global32_adaptg_guidecoarse", "direct", ""),
     ((4, 3, "direct", "kv", False), (32, "coarse", True, False))),
    # Adapter q is forced off with direct injection; g is not built without injection.
    (("local43_adaptqk_global32", "direct", ""), ((4, 3, "direct", "k", False), (32, "direct", False, False))),
    (("local43_adaptqg_guideoff_global32", "direct", ""), ((4, 3, "off", "q", False), (32, "direct", False, False))),
    (("local43_global32_adaptg_guideoff", "direct", ""), ((4, 3, "direct", "", False), (32, "off", False, False))),
    # use_guide coarse / fine for every level without its own word.
    (("local43_adaptq_global32_adaptg", "coarse", ""), ((4, 3, "coarse", "q", False), (32, "coarse", True, False))),
    (("local43_adaptqkvg_global32_adaptg", "fine", ""), ((4, 3, "fine", "qkvg", False), (32, "fine", True, False))),
    (("local43_guidefine_global16_guidefine", "fine", ""), ((4, 3, "fine", "", False), (16, "fine", False, False))),
    (("local43_global32_guideoff", "fine", ""), ((4, 3, "fine", "", False), (32, "off", False, False))),
    # No instruction at all.
    (("local22_global16", None, ""), ((2, 2, "off", "", False), (16, "off", False, False))),
    (("local22_adaptqkv_global16", "off", ""), ((2, 2, "off", "qkv", False), (16, "off", False, False))),
    # One- or two-digit spatial kernels, any temporal digit.
    (("local412_global32", "direct", ""), ((4, 12, "direct", "", False), (32, "direct", False, False))),
    (("local19_global64", "direct", ""), ((1, 9, "direct", "", False), (64, "direct", False, False))),
    (("local403_global8", "direct", ""), ((4, 3, "direct", "", False), (8, "direct", False, False))),
    # One level only; level order in the string does not matter.
    (("local43", "direct", ""), ((4, 3, "direct", "", False), None)),
    (("local43_adaptk_guidecoarse", "direct", ""), ((4, 3, "coarse", "k", False), None)),
    (("global32_adaptg_guidecoarse", "direct", ""), (None, (32, "coarse", True, False))),
    (("global32_local43_guidecoarse", "direct", ""), ((4, 3, "coarse", "", False), (32, "direct", False, False))),
    # Adapter letters are read from the last `adapt` until a letter outside q,k,v,g (`guide...` starts with g).
    (("local43_adaptkguidecoarse_global32", "direct", ""), ((4, 3, "coarse", "kg", False), (32, "direct", False, False))),
    (("local43_adaptq_adaptv_guidecoarse_global32", "direct", ""),
     ((4, 3, "coarse", "v", False), (32, "direct", False, False))),
    # CLIP-scale attention per level; other items are ignored by the reference.
    (("local43_global32", "direct", "local"), ((4, 3, "direct", "", True), (32, "direct", False, False))),
    (("local43_global32", "direct", "global"), ((4, 3, "direct", "", False), (32, "direct", False, True))),
    (("local43_global32", "direct", "local,global"), ((4, 3, "direct", "", True), (32, "direct", False, True))),
    (("local43_global32", "direct", "local, global"), ((4, 3, "direct", "", True), (32, "direct", False, False))),
]


@pytest.mark.parametrize("original, expected", PARSER_TABLE, ids=["/".join(map(str, o)) for o, _ in PARSER_TABLE])
def test_parse_projector_type(original, expected):
    settings = parse_projector_type(*original)
    assert per_level(settings) == expected
    HicomConfig(**settings)  # every parsed combination is a valid config


@pytest.mark.parametrize(
    "original, match",
    [
        (("mlp2x_gelu", "direct", ""), "Unsupported `mm_projector_type` 'mlp2x_gelu'"),
        (("local4_global32", "direct", ""), "Unsupported word 'local4'"),
        (("local4312_global32", "direct", ""), "Unsupported word 'local4312'"),
        (("local03_global32", "direct", ""), "Unsupported word 'local03'"),
        (("local43_global_guidecoarse", "direct", ""), "Unsupported word 'global'"),
        (("local43_global0", "direct", ""), "Unsupported word 'global0'"),
        (("local43_global32_guidebogus", "direct", ""), "Unsupported word 'guidebogus'"),
        (("local43_guide_global32", "direct", ""), "Unsupported word 'guide'"),
        (("local43_global32", "sideways", ""), "Unknown `use_guide` value 'sideways'"),
        (("local43_global32", "", ""), "Unknown `use_guide` value ''"),
        (("local43_guidecoarse_global32", None, ""), "with use_guide=None the reference encodes no instruction"),
        (("local43_guidefine_global32", "direct", ""), "mixes fine injection with the pooled"),
        (("local43_global32_guidecoarse", "fine", ""), "mixes fine injection with the per-token"),
        (("local43_guideoff_global32_guideoff", "direct", ""), "injects the instruction at no level"),
        (("global32", "direct", "local"), "names `local` but 'global32' has no local level"),
        (("local43", "direct", "global"), "names `global` but 'local43' has no global level"),
        (("local43_global32", "direct", None), "`use_clip_scale` must be a comma-separated string"),
    ],
)
def test_unknown_variants_are_refused(original, match):
    with pytest.raises(ConversionError, match=re.escape(match)):
        parse_projector_type(*original)


def test_words_the_reference_ignores_are_reported(caplog):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()
    try:
        with caplog.at_level("WARNING"):
            parse_projector_type("local43_global32_coarse", "direct", "local,both")
    finally:
        hf_logging.disable_propagation()
    assert "ignores 'both', 'coarse'" in caplog.text


# --- refusals on bad checkpoints ------------------------------------------------------------------------------------


@pytest.fixture
def checkpoint_copy(tmp_path):
    folder = tmp_path / "original"
    shutil.copytree(ORIGINAL, folder)
    return folder


def edit_weights(folder, edit):
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors")


def test_missing_tensor_is_named(checkpoint_copy, tmp_path):
    edit_weights(checkpoint_copy, lambda t: t.pop("model.mm_projector.global_compressor.query"))
    with pytest.raises(ConversionError, match=r"does not fill \(1\): model\.compressor\.global_level\.query"):
        convert(checkpoint_copy, SIGLIP, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_extra_tensor_is_named(checkpoint_copy, tmp_path):
    edit_weights(checkpoint_copy, lambda t: t.update({"model.mm_projector.extra.weight": torch.zeros(2)}))
    with pytest.raises(ConversionError, match=r"no rule maps \(1\): model\.mm_projector\.extra\.weight"):
        convert(checkpoint_copy, SIGLIP, tmp_path / "out")


def test_wrong_shape_is_named(checkpoint_copy, tmp_path):
    edit_weights(checkpoint_copy, lambda t: t.update({"model.norm.weight": torch.zeros(3)}))
    with pytest.raises(ConversionError, match=r"model\.norm\.weight has shape \(3,\)"):
        convert(checkpoint_copy, SIGLIP, tmp_path / "out")


def test_missing_shard_is_named(checkpoint_copy, tmp_path):
    tensors = load_file(checkpoint_copy / "model.safetensors")
    keys = sorted(tensors)
    save_file({k: tensors[k] for k in keys[:50]}, checkpoint_copy / "model-00001-of-00002.safetensors")
    weight_map = {k: f"model-0000{1 + (i >= 50)}-of-00002.safetensors" for i, k in enumerate(keys)}
    (checkpoint_copy / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (checkpoint_copy / "model.safetensors").unlink()
    with pytest.raises(ConversionError, match="model-00002-of-00002.safetensors, which is missing"):
        convert(checkpoint_copy, SIGLIP, tmp_path / "out")


def test_pickle_checkpoints_load_weights_only(checkpoint_copy, tmp_path):
    tensors = load_file(checkpoint_copy / "model.safetensors")
    torch.save(tensors, checkpoint_copy / "pytorch_model.bin")
    (checkpoint_copy / "model.safetensors").unlink()
    convert(checkpoint_copy, SIGLIP, tmp_path / "out", dtype="float32")
    converted = load_file(tmp_path / "out" / "model.safetensors")
    assert torch.equal(converted["model.language_model.norm.weight"], tensors["model.norm.weight"].float())

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"model.norm.weight": Payload()}, checkpoint_copy / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights.only|unsupported global"):
        convert(checkpoint_copy, SIGLIP, tmp_path / "out2")


def test_reference_verification_catches_wrong_weights(checkpoint_copy, tmp_path):
    edit_weights(checkpoint_copy, lambda t: t["lm_head.weight"].mul_(1.01))
    with pytest.raises(ConversionError, match="differ from the reference"):
        convert(checkpoint_copy, SIGLIP, tmp_path / "out", reference=FIXTURE / "reference_io.safetensors")


# --- the real release layout, without its weights -------------------------------------------------------------------

RELEASE_CONFIG = {
    "model_type": "hicom_qwen2", "architectures": ["HIComQwen2ForCausalLM"], "vocab_size": 152064,
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
    "num_key_value_heads": 4, "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "sliding_window": 131072, "use_sliding_window": False, "max_window_layers": 28,
    "tie_word_embeddings": False, "bos_token_id": 151643, "eos_token_id": 151645,
    "mm_projector_type": "local43_global32_coarse", "use_guide": "direct", "mm_vision_select_layer": -2,
    "mm_vision_select_feature": "patch", "mm_newline_position": "no_token", "image_aspect_ratio": "pad",
    "mm_hidden_size": 1152, "num_frames": 32, "use_clip_scale": "",
}
SO400M = {
    "vision_config": {"hidden_size": 1152, "image_size": 384, "intermediate_size": 4304, "num_attention_heads": 16,
                      "num_hidden_layers": 27, "patch_size": 14},
    "text_config": {"hidden_size": 1152, "intermediate_size": 4304, "num_attention_heads": 16,
                    "num_hidden_layers": 27, "vocab_size": 32000, "max_position_embeddings": 64},
}
# Shapes of the public release (Qwen2.5-7B-Instruct + SigLIP so400m-patch14-384), independent of our code.
RELEASE_SHAPES = {
    "lm_head.weight": (152064, 3584),
    "model.embed_tokens.weight": (152064, 3584),
    "model.layers.27.self_attn.k_proj.weight": (512, 3584),
    "model.layers.27.mlp.down_proj.weight": (3584, 18944),
    "model.vision_tower.vision_tower.vision_model.embeddings.position_embedding.weight": (729, 1152),
    "model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight": (1152, 3, 14, 14),
    "model.vision_tower.vision_tower.vision_model.encoder.layers.26.mlp.fc1.weight": (4304, 1152),
    "model.vision_tower.vision_tower.vision_model.head.attention.in_proj_weight": (3456, 1152),
    "model.vision_tower.guide_encoder.text_model.embeddings.position_embedding.weight": (64, 1152),
    "model.vision_tower.guide_encoder.text_model.embeddings.token_embedding.weight": (32000, 1152),
    "model.vision_tower.guide_encoder.text_model.encoder.layers.26.self_attn.q_proj.weight": (1152, 1152),
    "model.mm_projector.local_compressor.readout.0.weight": (3584, 1152),
    "model.mm_projector.local_compressor.readout.2.weight": (3584, 3584),
    "model.mm_projector.global_compressor.attn_layer.k_proj.weight": (1152, 1152),
    "model.mm_projector.global_compressor.query": (32, 1152),
}


def release_key_names():
    """The release's tensor names: the fixture's (same code, same layout) with the real layer counts."""
    counts = {"model.layers.": 28, "vision_model.encoder.layers.": 27, "text_model.encoder.layers.": 27}
    names = set()
    with open(ORIGINAL / "model.safetensors", "rb") as handle:
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    for key in header:
        if key == "__metadata__":
            continue
        prefix = next((p for p in counts if re.search(re.escape(p) + r"\d+\.", key)), None)
        if prefix is None:
            names.add(key)
            continue
        for layer in range(counts[prefix]):
            names.add(re.sub(re.escape(prefix) + r"\d+\.", f"{prefix}{layer}.", key))
    return sorted(names)


def test_release_layout_converts_on_the_meta_device():
    config = build_config(RELEASE_CONFIG, SO400M, video_token_id=151665, image_token_id=151666)
    with torch.device("meta"):
        model = HicomForConditionalGeneration(config)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    names = release_key_names()
    assert len(names) == len(expected)
    for name, shape in RELEASE_SHAPES.items():
        assert expected[rename_key(name)] == shape, name
    fake = ((name, torch.empty(expected[rename_key(name)], device="meta")) for name in names)
    state_dict = convert_state_dict(fake, expected, torch.bfloat16, total=len(names))
    assert len(state_dict) == len(expected)
    assert config.num_global_heads == 9 and config.text_config.hidden_size == 3584
    parameters = sum(value.numel() for value in state_dict.values())
    # Qwen2.5-7B (7.62B with its untied head) + SigLIP so400m vision (0.43B) and text (0.45B) towers + compressor.
    assert 8.45e9 < parameters < 8.65e9


# --- what the converter writes besides weights ----------------------------------------------------------------------


def test_generation_config_suppresses_the_placeholders(converted_fixture, loaded):
    """A model that favours `<video>` (here by a logit bias) still never emits a placeholder with the written config."""
    generation = json.loads((converted_fixture / "generation_config.json").read_text())
    placeholders = {loaded.config.video_token_id, loaded.config.image_token_id}
    assert placeholders <= set(generation["suppress_tokens"])
    bias = torch.zeros(loaded.config.text_config.vocab_size)
    bias[loaded.config.video_token_id] = 100.0
    hook = loaded.lm_head.register_forward_hook(lambda module, args, logits: logits + bias)
    try:
        with torch.no_grad():
            out = loaded.generate(input_ids=REFERENCE["text_before_ids"][None], max_new_tokens=4, do_sample=False)
    finally:
        hook.remove()
    assert not placeholders & set(out[0].tolist())


CLEAN_LOAD = """
import json, logging, sys, warnings
from transformers import AutoModelForImageTextToText, AutoProcessor
logged = []
class Collect(logging.Handler):
    def emit(self, record):
        logged.append(f"{record.name}: {record.getMessage()}")
for name in ("", "transformers"):  # transformers' loggers do not propagate to the root logger
    logging.getLogger(name).addHandler(Collect(logging.WARNING))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    AutoModelForImageTextToText.from_pretrained(sys.argv[1], trust_remote_code=True)
    AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
print(json.dumps({"logged": logged, "warned": [f"{w.category.__name__}: {w.message}" for w in caught]}))
"""


def test_a_clean_load_logs_no_warnings(converted_fixture):
    """SigLIP's default config carries CLIP's bos/eos ids (outside its vocabulary), which transformers warns about
    whenever it builds the default instruction config; the converted folder loads without a single warning."""
    report = json.loads(run_isolated(CLEAN_LOAD, converted_fixture).strip().splitlines()[-1])
    assert report == {"logged": [], "warned": []}



def test_conversion_logs_no_config_warnings(tmp_path):
    """Loading the SigLIP tokenizer used to build SigLIP's default config, whose out-of-vocabulary bos/eos ids made
    every conversion print two warnings; run in a fresh process, as warnings are printed once per process."""
    fixture = FIXTURES / FIXTURE_NAMES[0]
    result = subprocess.run(
        [sys.executable, "-m", "hicom_transformers.conversion.convert_hicom_original_to_hf",
         "--input", fixture / "original_checkpoint",
         "--vision-tower", fixture / "siglip-so400m-patch14-384", "--output", tmp_path / "converted"],
        cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "token_id must be" not in result.stderr

# --- the command line: refusals in one line, a folder written whole or not at all ---------------------------------

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")


def run_cli(capsys, *args):
    """`hicom-convert ARGS` in-process: (exit code, stderr)."""
    from hicom_transformers.conversion.convert_hicom_original_to_hf import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    return exit_info.value.code, capsys.readouterr().err


def cli_args(original, output, siglip=SIGLIP):
    return ["--input", original, "--vision-tower", siglip, "--output", output]


def bad_folder(tmp_path, config_text=None):
    folder = tmp_path / "bad"
    folder.mkdir()
    if config_text is not None:
        (folder / "config.json").write_text(config_text)
    return folder


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda tmp: cli_args(tmp / "nope", tmp / "out"), "--input '{tmp}/nope': no such folder."),
        (lambda tmp: cli_args(ORIGINAL, tmp / "out", siglip=tmp / "nope"), "--vision-tower '{tmp}/nope': no such folder."),
        (lambda tmp: cli_args(bad_folder(tmp), tmp / "out"), "--input '{tmp}/bad' has no config.json."),
        (lambda tmp: cli_args(bad_folder(tmp, "{oops"), tmp / "out"), "{tmp}/bad/config.json is not valid JSON"),
        (lambda tmp: cli_args(bad_folder(tmp, "[1, 2]"), tmp / "out"), "{tmp}/bad/config.json must hold a JSON object"),
        (lambda tmp: cli_args(ORIGINAL, tmp / "out") + ["--tokenizer", tmp / "nope"], "--tokenizer '{tmp}/nope': no such"),
        (lambda tmp: cli_args(ORIGINAL, tmp / "out") + ["--reference", tmp / "nope"], "--reference '{tmp}/nope': no such"),
        (lambda tmp: cli_args(ORIGINAL, ORIGINAL) + ["--overwrite"], "would replace the input folder"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_code_2(capsys, tmp_path, make_args, message):
    code, err = run_cli(capsys, *make_args(tmp_path))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("hicom-convert: error: ")
    assert message.format(tmp=tmp_path) in err
    assert not (tmp_path / "out").exists()


def test_missing_tokenizer_files_are_named_or_taken_from_tokenizer(checkpoint_copy, tmp_path, capsys):
    """Without tokenizer files `AutoTokenizer` builds a few-token tokenizer that reads every prompt as nothing."""
    for name in TOKENIZER_FILES:
        (checkpoint_copy / name).unlink()
    code, err = run_cli(capsys, *cli_args(checkpoint_copy, tmp_path / "out"))
    assert code == 2 and "tokenizer_config.json, tokenizer.json (or vocab.json and merges.txt)" in err
    assert not (tmp_path / "out").exists()

    convert(checkpoint_copy, SIGLIP, tmp_path / "out", tokenizer=ORIGINAL)
    from transformers import AutoTokenizer

    written = AutoTokenizer.from_pretrained(tmp_path / "out", trust_remote_code=True)
    reference = load_tokenizer(ORIGINAL)
    text = "What is moving in the video?"
    assert written(text).input_ids == reference(text).input_ids and len(reference(text).input_ids) > 3


def test_output_is_replaced_whole_and_only_with_overwrite(converted_fixture, tmp_path, capsys):
    output = tmp_path / "out"
    shutil.copytree(converted_fixture, output)
    # An earlier, sharded conversion left an index that points at shards the new conversion does not write.
    (output / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model-00001-of-00002.safetensors"}}))
    (output / "model-00002-of-00002.safetensors").write_bytes(b"stale")
    code, err = run_cli(capsys, *cli_args(ORIGINAL, output))
    assert code == 2 and "is not empty: pass --overwrite" in err
    assert (output / "model.safetensors.index.json").exists()  # untouched

    convert(ORIGINAL, SIGLIP, output, overwrite=True)
    assert sorted(path.name for path in output.iterdir()) == sorted(path.name for path in converted_fixture.iterdir())
    assert [path.name for path in tmp_path.iterdir()] == ["out"]  # no staging folder left beside it


def test_a_failed_conversion_leaves_nothing_behind(checkpoint_copy, tmp_path):
    edit_weights(checkpoint_copy, lambda t: t["lm_head.weight"].mul_(1.01))
    output = tmp_path / "converted" / "out"
    with pytest.raises(ConversionError, match="differ from the reference"):
        convert(checkpoint_copy, SIGLIP, output, reference=FIXTURE / "reference_io.safetensors")
    assert list(output.parent.iterdir()) == []


def test_help_keeps_the_example_lines(capsys):
    from hicom_transformers.conversion.convert_hicom_original_to_hf import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    assert exit_info.value.code == 0
    start = lines.index("    hicom-convert --input HICom_7B_qwen25_directg_local43_global32 \\")
    assert lines[start + 1] == "        --vision-tower siglip-so400m-patch14-384 --output hicom-7b-hf"
