"""The model uses transformers through its public extension points only: no private method overridden, SigLIP read
through its own modules plus a forward hook, the visual inputs encoded once per `generate`, the vision tower's
progress bar, and remote-code saving by `register_for_auto_class`."""

import io
import json

import pytest
import torch
from tiny_models import VIDEO_TOKEN_ID, random_inputs, tiny_model
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.utils import logging

from modeling_hicom import HicomConfig, HicomForConditionalGeneration, HicomModel, HicomPreTrainedModel

# Class attributes and the one method that transformers documents for model authors to set or override.
DOCUMENTED_EXTENSION_POINTS = {
    "_auto_class",  # set by the public `register_for_auto_class`
    "_init_weights",
    "_keep_in_fp32_modules",
    "_no_split_modules",
    "_skip_keys_device_placement",
    "_supports_attention_backend",
    "_supports_flash_attn",
    "_supports_sdpa",
    "_tied_weights_keys",
}


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_no_private_transformers_method_is_overridden():
    library = {name for base in (PreTrainedModel, GenerationMixin) for name in dir(base) if name.startswith("_")}
    for cls in (HicomPreTrainedModel, HicomModel, HicomForConditionalGeneration):
        overridden = {name for name in vars(cls) if name in library and not name.startswith("__")}
        assert overridden <= DOCUMENTED_EXTENSION_POINTS, (cls.__name__, overridden - DOCUMENTED_EXTENSION_POINTS)
    for name in ("from_pretrained", "save_pretrained", "prepare_inputs_for_generation"):
        assert all(name not in vars(cls) for cls in (HicomPreTrainedModel, HicomForConditionalGeneration)), name


@pytest.mark.parametrize("layer", [-2, -1, 0, 1])
def test_frame_features_are_the_towers_own_hidden_states(model, layer):
    """The hooked layer's output is `output_hidden_states[layer]`, the keys are the last hidden state through the
    pooling head's MLP; chunking does not change them, and no hook is left on the tower."""
    model.config.vision_feature_layer = layer
    tower = model.model.vision_tower
    hooks = lambda: sum(len(module._forward_hooks) for module in tower.modules())  # noqa: E731
    try:
        pixels = random_inputs(model, [7])[0]
        before = hooks()
        with torch.no_grad():
            reference = tower(pixel_values=pixels, output_hidden_states=True)
            before = hooks()  # transformers' own output-capturing hooks, if it installs any, are not ours
            last = reference.last_hidden_state
            expected_embeds = last + tower.head.mlp(tower.head.layernorm(last))
            for chunk in (3, 16):  # float32 matmuls round differently per batch size: 1e-5, not exact
                features, embeds = model.model.encode_frames(pixels, vision_batch_size=chunk)
                torch.testing.assert_close(features.flatten(1, 2), reference.hidden_states[layer], rtol=0, atol=1e-5)
                torch.testing.assert_close(embeds.flatten(1, 2), expected_embeds, rtol=0, atol=1e-5)
            # A consumer that stops early (an error while compressing) leaves no hook behind either.
            next(model.model.iter_encode_frames(pixels, vision_batch_size=2))
            assert hooks() == before
    finally:
        model.config.vision_feature_layer = -2


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize(
    "stream, frames, enabled, shown",
    [
        (_Terminal, 9, True, True),
        (io.StringIO, 9, True, False),
        (_Terminal, 9, False, False),
        (_Terminal, 4, True, False),
    ],
)
def test_vision_tower_progress_bar(model, monkeypatch, stream, frames, enabled, shown):
    """Shown on a terminal for more than one chunk of frames (`vision_batch_size` 4 here); off when stderr is not a
    terminal or after `transformers.logging.disable_progress_bar()`."""
    err = stream()
    monkeypatch.setattr("sys.stderr", err)
    (logging.enable_progress_bar if enabled else logging.disable_progress_bar)()
    try:
        with torch.no_grad():
            model.model.encode_frames(random_inputs(model, [frames])[0])
    finally:
        logging.enable_progress_bar()
    assert ("Encoding frames" in err.getvalue()) == shown


def test_generate_encodes_the_video_once(model):
    """`generate` drops the pixels after the prefill step (transformers does it; the model has no override)."""
    pixels, num_frames, ids, mask = random_inputs(model, [5], seed=1)
    with torch.no_grad():
        count = model.get_video_features(pixels, num_frames, ids, mask).pooler_output[0].shape[0]
    input_ids = torch.tensor([[5, 6] + [VIDEO_TOKEN_ID] * count + [7]])
    calls = []
    handle = model.model.vision_tower.embeddings.register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values_videos=pixels,
                video_num_frames=num_frames, instruct_input_ids=ids, instruct_attention_mask=mask,
                max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0,
            )
    finally:
        handle.remove()
    assert out.shape[1] == input_ids.shape[1] + 4
    assert len(calls) == -(-5 // model.config.vision_batch_size)  # the prefill's chunks, and no decoding step


def test_saved_folder_names_its_classes_through_register_for_auto_class(model, tmp_path):
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_hicom.HicomConfig",
        "AutoModelForImageTextToText": "modeling_hicom.HicomForConditionalGeneration",
    }
    assert {path.name for path in tmp_path.glob("*.py")} == {
        "configuration_hicom.py", "compressor_hicom.py", "modeling_hicom.py"
    }
    base = tmp_path / "base"
    model.model.save_pretrained(base)
    assert json.loads((base / "config.json").read_text())["auto_map"]["AutoModel"] == "modeling_hicom.HicomModel"


def test_not_registered_as_a_causal_lm():
    """Like transformers' own video LLMs, HICom is an image/video-text-to-text model, not a text-only causal LM."""
    with pytest.raises(ValueError, match="(?i)unrecognized configuration class"):
        AutoModelForCausalLM.from_config(HicomConfig())
