"""The model's behaviour beyond the fixture: any frame count, batching, injection modes, generation, errors."""

import math

import pytest
import torch
from tiny_models import IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, random_inputs, tiny_model

from modeling_hicom import HicomConfig
from modeling_hicom.compressor_hicom import sincos_embedding_1d, window_index, window_starts


@pytest.fixture(scope="module")
def model():
    return tiny_model()


# --- windows ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "length, kernel, starts, size",
    [
        (8, 4, [0, 4], 4),  # divisible: consecutive blocks
        (3, 4, [0], 3),  # shorter than the kernel: one window of everything
        (10, 4, [0, 3, 6], 4),  # the reference's balanced split (docs/architecture.md)
        (8, 3, [0, 3, 5], 3),
        (7, 4, [0, 3], 4),
        (5, 3, [0, 2], 3),
        (5, 4, [0, 1], 4),  # the reference crashes on these: even spread instead
        (6, 4, [0, 2], 4),
        (9, 4, [0, 2, 5], 4),
    ],
)
def test_window_starts(length, kernel, starts, size):
    assert window_starts(length, kernel) == (starts, size)


@pytest.mark.parametrize("length", range(1, 41))
@pytest.mark.parametrize("kernel", [1, 3, 4])
def test_windows_cover_every_position_inside_the_axis(length, kernel):
    starts, size = window_starts(length, kernel)
    assert len(starts) == math.ceil(length / kernel)
    covered = {s + i for s in starts for i in range(size)}
    assert covered == set(range(length))


def test_window_index_is_flat_t_h_w():
    index = window_index(2, 3, 3, 1, 3)
    assert index.shape == (2, 1, 1, 9)
    assert index[1, 0, 0].tolist() == list(range(9, 18))


def test_sincos_embedding_matches_definition():
    table = sincos_embedding_1d(5, 6)
    pos, i = 3, 3
    assert table[pos, i].item() == pytest.approx(math.cos(pos / 10000 ** (2 * (i // 2) / 6)), abs=1e-6)
    assert table[pos, 2].item() == pytest.approx(math.sin(pos / 10000 ** (2 / 6)), abs=1e-6)


# --- frame counts and batches -----------------------------------------------------------------------------------


def test_every_frame_count_from_1_to_40(model):
    side = math.ceil(5 / 3)
    lengths = list(range(1, 41))
    with torch.no_grad():
        features = model.get_video_features(*random_inputs(model, lengths)).pooler_output
    for frames, tokens in zip(lengths, features):
        temporal = 1 if frames == 1 else 4
        assert tokens.shape == (math.ceil(frames / temporal) * side * side + 4, 32)
        assert torch.isfinite(tokens).all()


def test_mixed_length_batch_equals_separate_runs(model):
    lengths = [3, 9, 1, 6, 16]
    pixels, num_frames, ids, mask = random_inputs(model, lengths, seed=1)
    with torch.no_grad():
        batched = model.get_video_features(pixels, num_frames, ids, mask, vision_batch_size=5).pooler_output
        offsets = [0] + torch.tensor(lengths).cumsum(0).tolist()
        for i, frames in enumerate(lengths):
            alone = model.get_video_features(
                pixels[offsets[i] : offsets[i + 1]], None, ids[i : i + 1], mask[i : i + 1]
            ).pooler_output[0]
            torch.testing.assert_close(batched[i], alone, atol=1e-5, rtol=0)


def test_chunk_size_does_not_change_results(model):
    inputs = random_inputs(model, [12])
    with torch.no_grad():
        reference = model.get_video_features(*inputs, vision_batch_size=12).pooler_output[0]
        for chunk in (1, 5):
            chunked = model.get_video_features(*inputs, vision_batch_size=chunk).pooler_output[0]
            torch.testing.assert_close(chunked, reference, atol=1e-5, rtol=0)


# --- injection modes ----------------------------------------------------------------------------------------------


def test_direct_global_injection_gives_identical_global_tokens(model):
    with torch.no_grad():
        tokens = model.get_video_features(*random_inputs(model, [8])).pooler_output[0]
    global_tokens = tokens[-4:]
    assert torch.equal(global_tokens, global_tokens[:1].expand_as(global_tokens))


@pytest.mark.parametrize("local_injection", ["direct", "coarse", "off"])
def test_coarse_global_injection_gives_distinct_global_tokens(local_injection):
    model = tiny_model(
        local_injection=local_injection, global_injection="coarse", local_adapt_key=True, global_adapt_instruct=True
    )
    with torch.no_grad():
        tokens = model.get_video_features(*random_inputs(model, [8])).pooler_output[0]
    global_tokens = tokens[-4:]
    assert torch.cdist(global_tokens, global_tokens).fill_diagonal_(1).min() > 1e-3


def test_instruction_changes_tokens_unless_injection_is_off():
    for mode, should_change in (("direct", True), ("off", False)):
        model = tiny_model(local_injection=mode, global_injection=mode)
        pixels, frames, ids, mask = random_inputs(model, [4])
        with torch.no_grad():
            a = model.get_video_features(pixels, frames, ids, mask).pooler_output[0]
            b = model.get_video_features(pixels, frames, ids.roll(1, -1), mask).pooler_output[0]
        assert (not torch.allclose(a, b)) == should_change


def test_no_global_level():
    model = tiny_model(num_global_queries=0)
    with torch.no_grad():
        tokens = model.get_video_features(*random_inputs(model, [4])).pooler_output[0]
    assert tokens.shape[0] == 4  # 1 x 2 x 2 local cells


def test_bf16_compressor_stays_close_to_fp32(model):
    inputs = random_inputs(model, [8])
    low = tiny_model().to(torch.bfloat16)
    with torch.no_grad():
        reference = model.get_video_features(*inputs).pooler_output[0]
        tokens = low.get_video_features(inputs[0].bfloat16(), *inputs[1:]).pooler_output[0]
    assert tokens.dtype == torch.bfloat16
    assert (tokens.float() - reference).abs().max() < 0.1 * reference.abs().max()


# --- language model path, generation ------------------------------------------------------------------------------


def prompt_for(model, frames):
    tokens = model.get_video_features(*random_inputs(model, [frames])).pooler_output[0].shape[0]
    return torch.tensor([[5, 6, 7] + [VIDEO_TOKEN_ID] * tokens + [8, 9]])


def test_generate_uses_cache_and_encodes_the_video_once(model):
    pixels, frames, ids, mask = random_inputs(model, [6])
    input_ids = prompt_for(model, 6)
    calls = []
    hook = model.model.vision_tower.embeddings.register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                pixel_values_videos=pixels,
                video_num_frames=frames,
                instruct_input_ids=ids,
                instruct_attention_mask=mask,
                max_new_tokens=5,
                do_sample=False,
                pad_token_id=0,
            )
    finally:
        hook.remove()
    assert out.shape == (1, input_ids.shape[1] + 5)
    assert len(calls) == math.ceil(6 / model.config.vision_batch_size)
    # Greedy decoding with a cache equals step-by-step argmax without one.
    sequence = input_ids
    with torch.no_grad():
        for _ in range(5):
            logits = model(
                input_ids=sequence,
                pixel_values_videos=pixels,
                video_num_frames=frames,
                instruct_input_ids=ids,
                instruct_attention_mask=mask,
                use_cache=False,
            ).logits
            sequence = torch.cat([sequence, logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(out, sequence)


@pytest.mark.parametrize("token_id", [VIDEO_TOKEN_ID, IMAGE_TOKEN_ID])
def test_a_sampled_placeholder_does_not_stop_generation(model, token_id):
    """A model that emits a placeholder id (here forced by a logit bias) keeps generating: decoding steps feed back
    sampled tokens and must not be checked for placeholders as a prompt is."""
    pixels, frames, ids, mask = random_inputs(model, [4])
    input_ids = prompt_for(model, 4)
    bias = torch.zeros(model.config.text_config.vocab_size)
    bias[token_id] = 100.0
    hook = model.lm_head.register_forward_hook(lambda module, args, logits: logits + bias)
    try:
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids, pixel_values_videos=pixels, video_num_frames=frames, instruct_input_ids=ids,
                instruct_attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0,
            )
    finally:
        hook.remove()
    assert out[0, input_ids.shape[1] :].tolist() == [token_id] * 3


def test_placeholders_in_the_prompt_are_still_checked_by_generate(model):
    with pytest.raises(ValueError, match="pixel_values_videos"):
        model.generate(input_ids=prompt_for(model, 4), max_new_tokens=2, do_sample=False, pad_token_id=0)


def test_labels_give_a_loss(model):
    pixels, frames, ids, mask = random_inputs(model, [4])
    input_ids = prompt_for(model, 4)
    labels = input_ids.masked_fill(input_ids == VIDEO_TOKEN_ID, -100)
    out = model(
        input_ids=input_ids, pixel_values_videos=pixels, video_num_frames=frames,
        instruct_input_ids=ids, instruct_attention_mask=mask, labels=labels,
    )
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)


def test_images_are_one_frame_videos(model):
    pixels, _, ids, mask = random_inputs(model, [1, 1])
    with torch.no_grad():
        images = model.get_image_features(pixels, ids, mask).pooler_output
        videos = model.get_video_features(pixels, torch.tensor([1, 1]), ids, mask).pooler_output
    for image, video in zip(images, videos):
        torch.testing.assert_close(image, video)


# --- errors -------------------------------------------------------------------------------------------------------


def test_placeholder_count_mismatch_is_a_clear_error(model):
    pixels, frames, ids, mask = random_inputs(model, [4])
    input_ids = prompt_for(model, 4)[:, :-4]
    with pytest.raises(ValueError, match="placeholder tokens"):
        model(input_ids=input_ids, pixel_values_videos=pixels, video_num_frames=frames,
              instruct_input_ids=ids, instruct_attention_mask=mask)


def test_placeholders_without_pixels_is_a_clear_error(model):
    with pytest.raises(ValueError, match="pixel_values_videos"):
        model(input_ids=prompt_for(model, 4))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda p, f, i: (p, torch.tensor([3, 3]), i), "video_num_frames"),
        (lambda p, f, i: (p[:, :, :10], f, i), "shape"),
        (lambda p, f, i: (p.masked_fill(p > 2, float("nan")), f, i), "NaN"),
        (lambda p, f, i: (p, f, None), "instruct_input_ids"),
        (lambda p, f, i: (p, f, i.repeat(2, 1)), "one instruction per video"),
        (lambda p, f, i: ((p * 100).long(), f, i), "floating point"),
        (lambda p, f, i: (p.numpy(), f, i), "torch.Tensor"),
    ],
)
def test_bad_visual_inputs_are_clear_errors(model, change, match):
    pixels, frames, ids, mask = random_inputs(model, [4])
    pixels, frames, ids = change(pixels, frames, ids)
    with pytest.raises((ValueError, TypeError), match=match):
        model.get_video_features(pixels, frames, ids, None)


@pytest.mark.parametrize("name", ["adapt_key", "local_adapt_guide", "global_adapt_guide"])
def test_older_configs_adapter_fields(name):
    """An older saved config's adapter field loads when False (no adapter, same weights) and is refused when True
    (its adapter's weights have another name now: loading would silently leave the adapter out)."""
    saved = HicomConfig().to_dict()
    assert not hasattr(HicomConfig.from_dict({**saved, name: False}), name)
    with pytest.raises(ValueError, match=f"`{name}=True`.*re-convert"):
        HicomConfig.from_dict({**saved, name: True})
