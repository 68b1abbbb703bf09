"""Tiny random HICom models built in-process (no weights are downloaded anywhere in the tests)."""

import torch

from modeling_hicom import HicomConfig, HicomForConditionalGeneration

VIDEO_TOKEN_ID, IMAGE_TOKEN_ID = 90, 91


def tiny_config(**overrides) -> HicomConfig:
    """SigLIP 70 px / patch 14 (5x5 patches: exercises the overlapping spatial split), width 64, Qwen2 width 32."""
    settings = dict(
        vision_config=dict(
            hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=2, image_size=70, patch_size=14
        ),
        instruct_config=dict(
            hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, vocab_size=64,
            max_position_embeddings=16, pad_token_id=1, bos_token_id=None, eos_token_id=1,
        ),
        text_config=dict(
            vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, max_position_embeddings=2048, bos_token_id=None, eos_token_id=2, pad_token_id=0,
        ),
        num_global_queries=4,
        instruct_max_length=16,
        video_token_id=VIDEO_TOKEN_ID,
        image_token_id=IMAGE_TOKEN_ID,
        vision_batch_size=4,
    )
    settings.update(overrides)
    return HicomConfig(**settings)


def tiny_model(seed: int = 0, **overrides) -> HicomForConditionalGeneration:
    torch.manual_seed(seed)
    model = HicomForConditionalGeneration(tiny_config(**overrides)).eval()
    # Random init leaves biases and adapter gates at zero; perturb every parameter so no path is trivially inert.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


def random_inputs(model, num_frames, seed: int = 0):
    """Pixels for videos of `num_frames` frames and one random instruction per video."""
    generator = torch.Generator().manual_seed(seed)
    size = model.config.vision_config.image_size
    pixels = torch.randn(sum(num_frames), 3, size, size, generator=generator)
    ids = torch.randint(2, 64, (len(num_frames), model.config.instruct_max_length), generator=generator)
    mask = torch.ones_like(ids)
    return pixels, torch.tensor(num_frames), ids, mask
