"""HICom as a vLLM model: vLLM's SigLIP vision tower and Qwen2, transformers' SigLIP text tower, the project's compressor.

Each video is encoded a `vision_batch_size` chunk of frames at a time and compressed as it is encoded (the
compressor's `stream`), so the encoder step never holds a clip's features, as in `HicomModel.get_video_features`.
The instruction encoder is transformers' `SiglipTextModel`: vLLM's SigLIP text tower runs through vLLM's paged
attention as a language model and takes no padding mask, while HICom's instruction is padded to a fixed length and
pooled at its last position with the mask applied.
"""

from collections.abc import Iterable

import torch
from torch import nn
from transformers import SiglipTextModel
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal
from vllm.model_executor.models.siglip import SiglipVisionModel
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from modeling_hicom import HicomConfig
from modeling_hicom.compressor_hicom import HicomCompressor, HicomCompressorState

from .processing import HicomDummyInputsBuilder, HicomMultiModalProcessor, HicomProcessingInfo


@MULTIMODAL_REGISTRY.register_processor(
    HicomMultiModalProcessor, info=HicomProcessingInfo, dummy_inputs=HicomDummyInputsBuilder
)
class HicomForConditionalGeneration(nn.Module, SupportsMultiModal):
    # Names of a converted folder (`hicom-convert`), as `HicomForConditionalGeneration.save_pretrained` writes them.
    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={
            "model.language_model.": "language_model.model.",
            "lm_head.": "language_model.lm_head.",
            "model.vision_tower.": "vision_tower.vision_model.",
            "model.instruct_encoder.": "instruct_encoder.",
            "model.compressor.": "compressor.",
        }
    )

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("video"):
            return "<video>"
        raise ValueError(f"HICom on vLLM takes videos only, got a {modality!r} input.")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: HicomConfig = vllm_config.model_config.hf_config
        self.config = config
        with self._mark_tower_model(vllm_config, "video"):
            self.vision_tower = SiglipVisionModel(
                config.vision_config,
                vllm_config.quant_config,
                require_post_norm=True,
                use_head=True,
                prefix=maybe_prefix(prefix, "vision_tower"),
            )
            self.instruct_encoder = SiglipTextModel(config.instruct_config)
            self.compressor = HicomCompressor(config)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=["Qwen2ForCausalLM"],
            )

    def iter_encode_frames(self, pixel_values: torch.Tensor):
        """Yields `(features, patch_embeds)`, each `(n, H, W, D)`: the hidden state of `vision_feature_layer` (the
        compressor's values) and the last one through the head's residual MLP, in SigLIP's joint text-image space
        (its keys; the head's attention pooling is not used), for `vision_batch_size` frames at a time."""
        tower = self.vision_tower.vision_model
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        for frames in pixel_values.split(self.config.vision_batch_size):
            hidden_states = tower.encoder(tower.embeddings(frames.to(self.vision_tower.dtype)), return_all_hidden_states=True)
            last = tower.post_layernorm(hidden_states[-1])
            embeds = last + tower.head.mlp(tower.head.layernorm(last))
            features = hidden_states[self.config.vision_feature_layer]
            yield features.unflatten(1, (side, side)), embeds.unflatten(1, (side, side))

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """One `(num_tokens, hidden_size)` tensor per video: its local tokens, then its global tokens."""
        pixel_values = kwargs.get("pixel_values_videos")
        if pixel_values is None:
            return []
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = torch.cat(list(pixel_values))
        num_frames = [int(n) for n in torch.as_tensor(kwargs["video_num_frames"]).reshape(-1).tolist()]
        instruct_embeds = [None] * len(num_frames)
        if self.compressor.needs_instruct:
            instruct_embeds = self.instruct_encoder(
                input_ids=torch.as_tensor(kwargs["instruct_input_ids"]).reshape(len(num_frames), -1),
                attention_mask=torch.as_tensor(kwargs["instruct_attention_mask"]).reshape(len(num_frames), -1),
            ).pooler_output
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        tokens = []
        for video, instruct in zip(pixel_values.split(num_frames), instruct_embeds):
            state = HicomCompressorState((len(video), side, side))
            for features, patch_embeds in self.iter_encode_frames(video):
                output = self.compressor(features, patch_embeds, instruct, state=state)
            tokens.append(output.tokens)
        return tuple(tokens)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)
