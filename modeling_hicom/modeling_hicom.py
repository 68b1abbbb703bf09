"""HICom for transformers: SigLIP vision tower + SigLIP instruction encoder + hybrid-level compressor + Qwen2.

Each video's frames are encoded by SigLIP, compressed *conditioned on the user's instruction* into
`ceil(T/4)*ceil(27/3)^2 + 32` tokens (680 for 32 frames, against 23,328 raw patches), and those tokens replace the
video placeholder tokens in the language model's input. docs/architecture.md walks through the computation.
"""

import logging as std_logging
import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel, SiglipTextModel, SiglipVisionModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast, ModelOutput
from transformers.utils import auto_docstring, can_return_tuple, logging

from .compressor_hicom import (
    HicomAdapter,
    HicomCompressor,
    HicomCompressorState,
    HicomGlobalAttention,
    HicomGlobalCompressor,
    HicomLocalCompressor,
)
from .configuration_hicom import HicomConfig

logger = logging.get_logger(__name__)


class _EachMessageOnce(std_logging.Filter):
    """Lets each distinct log message through once per process."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def filter(self, record: std_logging.LogRecord) -> bool:
        key = (record.msg, record.args)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


# bitsandbytes' 8-bit matmul logs at every call of every 8-bit layer that it casts its inputs to float16 (the
# language model runs in float32 or bfloat16): hundreds of identical lines for a short answer. Once says it all.
std_logging.getLogger("bitsandbytes.autograd._functions").addFilter(_EachMessageOnce())


# The inputs HICom adds to a language model's, documented once for both models' `forward` (`auto_docstring`).
HICOM_INPUTS_DOCSTRING = r"""
    pixel_values_videos (`torch.FloatTensor` of shape `(sum_i T_i, 3, image_size, image_size)`):
        The frames of all videos, concatenated (`HicomProcessor` returns them).
    video_num_frames (`torch.LongTensor` of shape `(num_videos,)`):
        Frames per video.
    instruct_input_ids (`torch.LongTensor` of shape `(num_videos, instruct_max_length)`):
        The instruction that conditions each video's compression, tokenized by the SigLIP tokenizer with
        `padding="max_length"`.
    instruct_attention_mask (`torch.LongTensor` of shape `(num_videos, instruct_max_length)`):
        Its attention mask.
    image_instruct_input_ids (`torch.LongTensor` of shape `(num_images, instruct_max_length)`):
        The instruction of each image.
    image_instruct_attention_mask (`torch.LongTensor` of shape `(num_images, instruct_max_length)`):
        Its attention mask.
    vision_batch_size (`int`, *optional*):
        Frames encoded at once (defaults to `config.vision_batch_size`); results do not depend on it.
"""


@dataclass
class HicomVideoFeaturesOutput(ModelOutput):
    """
    Output of [`HicomModel.get_video_features`].

    Args:
        pooler_output (`tuple(torch.FloatTensor)`): one `(num_tokens_i, text_hidden_size)` tensor per video: its local
            tokens in `(t, h, w)` order, then its global tokens.
        grid_shapes (`tuple(tuple(int))`): `(T, H, W)` patch grid of each video.
        local_attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions=True`): per video,
            `(T', H', W', window)` softmax weights of every local cell over the patches of its window (their flat
            positions are `window_index(T, H, W, kt, ks)`).
        global_attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions=True`): per video,
            `(heads, num_global_queries, T*H*W)` weights of the global queries over all patches.
    """

    pooler_output: tuple[torch.FloatTensor, ...] | None = None
    grid_shapes: tuple[tuple[int, int, int], ...] | None = None
    local_attentions: tuple[torch.FloatTensor, ...] | None = None
    global_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class HicomModelOutputWithPast(BaseModelOutputWithPast):
    """
    [`HicomModel`] outputs: the language model's, plus the compressed tokens that were fed to it.

    Args:
        video_hidden_states (`torch.FloatTensor`, *optional*): `(total_video_tokens, text_hidden_size)`.
        image_hidden_states (`torch.FloatTensor`, *optional*): `(total_image_tokens, text_hidden_size)`.
    """

    video_hidden_states: torch.FloatTensor | None = None
    image_hidden_states: torch.FloatTensor | None = None


@dataclass
class HicomCausalLMOutputWithPast(CausalLMOutputWithPast):
    """
    [`HicomForConditionalGeneration`] outputs: the language model's (loss, logits, key/value cache, hidden states,
    attentions), plus the compressed tokens that were fed to it.

    Args:
        video_hidden_states (`torch.FloatTensor`, *optional*): `(total_video_tokens, text_hidden_size)`.
        image_hidden_states (`torch.FloatTensor`, *optional*): `(total_image_tokens, text_hidden_size)`.
    """

    video_hidden_states: torch.FloatTensor | None = None
    image_hidden_states: torch.FloatTensor | None = None


@auto_docstring
class HicomPreTrainedModel(PreTrainedModel):
    config_class = HicomConfig
    config: HicomConfig
    base_model_prefix = "model"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    # The key/value cache argument, by its name in transformers >= 5.24 and before (see docs/architecture.md).
    _skip_keys_device_placement = ["cache", "past_key_values"]
    # Layers that device_map="auto" must keep whole; the compressor reads whole clips, so it stays in one piece.
    _no_split_modules = [
        "Qwen2DecoderLayer",
        "SiglipEncoderLayer",
        "SiglipVisionEmbeddings",
        "SiglipTextEmbeddings",
        "SiglipMultiheadAttentionPoolingHead",
        "HicomCompressor",
    ]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True
    # Modules that run in float32 when the model is loaded in float16 (fp16's range is narrower than the bf16 the
    # release was trained in); quantizers also leave every module listed here unquantized, so only the language
    # model is quantized and the visual tokens are those of the unquantized model. Patterns match from the module
    # name's start, with or without the head model's `model.` prefix. See docs/architecture.md.
    _keep_in_fp32_modules = [r"(?:model\.)?vision_tower", r"(?:model\.)?instruct_encoder", r"(?:model\.)?compressor"]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, HicomGlobalCompressor):
            module.query.normal_(mean=0.0, std=self.config.vision_config.hidden_size**-0.5)
        elif isinstance(module, HicomAdapter):
            module.gate.zero_()
        if isinstance(module, (HicomLocalCompressor, HicomGlobalAttention)) and module.clip_scale:
            # SigLIP's initial temperature and bias (converted checkpoints carry the trained ones).
            module.logit_scale.fill_(math.log(10.0))
            module.logit_bias.fill_(-10.0)


@auto_docstring(
    custom_intro="HICom without a language-modeling head: the SigLIP encoders, the compressor and the bare Qwen2 model."
)
class HicomModel(HicomPreTrainedModel):

    def __init__(self, config: HicomConfig):
        super().__init__(config)
        self.vision_tower = SiglipVisionModel(config.vision_config)
        # A model that injects the instruction at no level has no instruction encoder (nor its weights).
        self.instruct_encoder = (
            SiglipTextModel(config.instruct_config) if config.instruct_embedding != "none" else None
        )
        self.compressor = HicomCompressor(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def encode_frames(self, pixel_values: torch.Tensor, vision_batch_size: int | None = None):
        """SigLIP features (values) and joint-space patch embeddings (keys), each `(num_frames, H, W, D)`.

        Frames are encoded `vision_batch_size` at a time, so peak memory holds one chunk's activations rather than
        every frame's. The attention-pooling head is skipped: only its residual MLP is applied, to every patch.
        (`get_video_features` does not keep these whole: it compresses each chunk as it is encoded.)
        """
        features, patch_embeds = zip(*self.iter_encode_frames(pixel_values, vision_batch_size))
        return torch.cat(features), torch.cat(patch_embeds)

    def iter_encode_frames(self, pixel_values: torch.Tensor, vision_batch_size: int | None = None):
        """Yields `(features, patch_embeds)`, each `(n, H, W, D)`, for `vision_batch_size` frames at a time.

        `features` is the output of the vision tower's `config.vision_feature_layer`, caught with a forward hook on
        that layer so that no other layer's hidden states are kept; `patch_embeds` is the tower's last hidden state
        (after its final layer norm) through the residual MLP of its pooling head, applied to every patch. A progress
        bar (transformers' `logging.tqdm`: off when stderr is not a terminal or after
        `transformers.logging.disable_progress_bar()`) shows when the frames take more than one chunk.
        """
        tower = self.vision_tower
        layers = tower.encoder.layers
        layer = self.config.vision_feature_layer
        feature_index = layer if layer >= 0 else len(layers) + 1 + layer
        if not 0 <= feature_index <= len(layers):
            raise ValueError(f"`vision_feature_layer` {layer} is out of range for a {len(layers)}-layer vision tower.")
        chunk = vision_batch_size or self.config.vision_batch_size
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        chunks = pixel_values.split(chunk)
        selected = []
        # Hidden state k is the output of layer k (k >= 1) or of the embeddings (k = 0), as in `output_hidden_states`.
        source = tower.embeddings if feature_index == 0 else layers[feature_index - 1]
        handle = source.register_forward_hook(lambda module, args, output: selected.append(output))
        # Only for more than one chunk of frames, and (`disable=None`) only on a terminal.
        bar = None
        if len(chunks) > 1:
            bar = logging.tqdm(total=len(chunks), desc="Encoding frames", unit="chunk", disable=None, leave=False)
        try:
            for frames in chunks:
                # The tower's modules in the order its own `forward` calls them, minus the attention-pooling head's
                # pooling (its one pooled vector is not used; its residual MLP is, on every patch).
                hidden = tower.embeddings(frames.to(tower.embeddings.patch_embedding.weight.dtype))
                last = tower.post_layernorm(tower.encoder(inputs_embeds=hidden).last_hidden_state)
                del hidden
                embeds = last + tower.head.mlp(tower.head.layernorm(last))
                del last
                if bar is not None:
                    bar.update()
                yield selected.pop().unflatten(1, (side, side)), embeds.unflatten(1, (side, side))
        finally:
            handle.remove()
            if bar is not None:
                bar.close()

    def encode_instructions(self, instruct_input_ids, instruct_attention_mask=None):
        """The instruction as the compressor reads it: SigLIP text `pooler_output` `(num_videos, instruct_dim)` (the head of
        the last, padded position), or for fine injection the head applied to every position, `(num_videos,
        instruct_max_length, instruct_dim)` (padding rows included, as in the reference)."""
        if self.instruct_encoder is None:
            raise ValueError("This model injects the instruction at no level: it has no instruction encoder.")
        outputs = self.instruct_encoder(input_ids=instruct_input_ids, attention_mask=instruct_attention_mask)
        if self.config.instruct_embedding == "per_token":
            return self.instruct_encoder.head(outputs.last_hidden_state)
        return outputs.pooler_output

    def _check_visual_inputs(self, pixel_values, num_frames, instruct_input_ids, name):
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(pixel_values).__name__}.")
        size = self.config.vision_config.image_size
        if pixel_values.ndim == 5:
            if num_frames is None:
                num_frames = torch.full((pixel_values.shape[0],), pixel_values.shape[1], dtype=torch.long)
            pixel_values = pixel_values.flatten(0, 1)
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise ValueError(
                f"`{name}` must have shape (total_frames, 3, {size}, {size}) (frames of all videos concatenated), "
                f"got {tuple(pixel_values.shape)}."
            )
        if not pixel_values.is_floating_point():
            raise TypeError(f"`{name}` must be a floating point tensor, got {pixel_values.dtype}.")
        # A slice at a time: `isfinite` of the whole input is a mask as large as the pixels (113 MB at 256 frames).
        if not all(torch.isfinite(part).all() for part in pixel_values.split(16)):
            raise ValueError(f"`{name}` contains NaN or infinite values.")
        if num_frames is None:
            num_frames = [pixel_values.shape[0]]
        num_frames = [int(n) for n in torch.as_tensor(num_frames).reshape(-1).tolist()]
        if any(n < 1 for n in num_frames) or sum(num_frames) != pixel_values.shape[0]:
            raise ValueError(
                f"`video_num_frames` {num_frames} must be positive and sum to the {pixel_values.shape[0]} frames "
                f"of `{name}`."
            )
        if self.compressor.needs_instruct:
            instruct = "image_instruct" if name == "pixel_values" else "instruct"  # names of the caller's arguments
            if instruct_input_ids is None:
                raise ValueError(
                    f"This model compresses visual tokens conditioned on the instruction: pass `{instruct}_input_ids` "
                    f"and `{instruct}_attention_mask` (HicomProcessor returns them)."
                )
            if instruct_input_ids.ndim != 2 or instruct_input_ids.shape[0] != len(num_frames):
                raise ValueError(
                    f"`{instruct}_input_ids` must have shape ({len(num_frames)}, length): one instruction per "
                    f"{'image' if name == 'pixel_values' else 'video'}; got {tuple(instruct_input_ids.shape)}."
                )
        return pixel_values, num_frames

    @can_return_tuple
    def get_video_features(
        self,
        pixel_values_videos: torch.FloatTensor,
        video_num_frames: torch.LongTensor | None = None,
        instruct_input_ids: torch.LongTensor | None = None,
        instruct_attention_mask: torch.LongTensor | None = None,
        vision_batch_size: int | None = None,
        output_attentions: bool = False,
    ) -> HicomVideoFeaturesOutput | tuple:
        """Compressed tokens of every video.

        Args:
            pixel_values_videos: `(sum_i T_i, 3, S, S)`, the frames of all videos concatenated (or `(B, T, 3, S, S)`).
            video_num_frames: `(num_videos,)` frames per video; defaults to one video of all frames.
            instruct_input_ids / instruct_attention_mask: `(num_videos, instruct_max_length)` instruction tokens.
            vision_batch_size: frames encoded at once (defaults to `config.vision_batch_size`); results do not
                depend on it.
            output_attentions: also return the compressor's attention weights (see [`HicomVideoFeaturesOutput`]).
        """
        pixel_values, num_frames = self._check_visual_inputs(
            pixel_values_videos, video_num_frames, instruct_input_ids, "pixel_values_videos"
        )
        return self._compress(
            pixel_values, num_frames, instruct_input_ids, instruct_attention_mask, vision_batch_size, output_attentions
        )

    def _compress(
        self, pixel_values, num_frames, instruct_input_ids, instruct_attention_mask, vision_batch_size, output_attentions
    ) -> HicomVideoFeaturesOutput:
        """`get_video_features` on checked inputs: `pixel_values (sum T_i, 3, S, S)`, `num_frames` a list of ints."""
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        instruct_embeds = [None] * len(num_frames)
        if self.compressor.needs_instruct:
            instruct_embeds = self.encode_instructions(
                instruct_input_ids.to(pixel_values.device), instruct_attention_mask
            )
        # Each chunk of frames is compressed as soon as it is encoded: the clip's features are never all kept.
        states = [HicomCompressorState((n, side, side)) for n in num_frames]
        outputs = [None] * len(num_frames)
        ends = torch.tensor(num_frames).cumsum(0).tolist()
        video, position = 0, 0  # next frame to route: video `video`, global frame index `position`
        for features, patch_embeds in self.iter_encode_frames(pixel_values, vision_batch_size):
            start = 0
            while start < features.shape[0]:
                take = min(features.shape[0] - start, ends[video] - position)
                outputs[video] = self.compressor(
                    features[start : start + take], patch_embeds[start : start + take], instruct_embeds[video],
                    output_attentions=output_attentions, state=states[video],
                )
                start, position = start + take, position + take
                video += position == ends[video]
            del features, patch_embeds
        tokens, local_attn, global_attn = zip(*outputs)
        return HicomVideoFeaturesOutput(
            pooler_output=tuple(tokens),
            grid_shapes=tuple((n, side, side) for n in num_frames),
            local_attentions=tuple(local_attn) if output_attentions and self.compressor.local_level is not None else None,
            global_attentions=tuple(global_attn) if output_attentions and self.compressor.global_level else None,
        )

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        image_instruct_input_ids: torch.LongTensor | None = None,
        image_instruct_attention_mask: torch.LongTensor | None = None,
        vision_batch_size: int | None = None,
        output_attentions: bool = False,
    ) -> HicomVideoFeaturesOutput | tuple:
        """Compressed tokens of images `(num_images, 3, S, S)`: each image is a one-frame video."""
        if isinstance(pixel_values, torch.Tensor) and pixel_values.ndim == 3:
            pixel_values = pixel_values[None]
        num_frames = torch.ones(pixel_values.shape[0], dtype=torch.long) if isinstance(pixel_values, torch.Tensor) else None
        pixel_values, num_frames = self._check_visual_inputs(
            pixel_values, num_frames, image_instruct_input_ids, "pixel_values"
        )
        return self._compress(
            pixel_values, num_frames, image_instruct_input_ids, image_instruct_attention_mask, vision_batch_size,
            output_attentions,
        )

    def get_placeholder_mask(self, input_ids, inputs_embeds, image_features=None, video_features=None):
        """Masks `(batch, seq, hidden)` of the image and of the video placeholder positions (from `inputs_embeds` when
        there are no `input_ids`), after checking that each holds exactly as many positions as there are features."""
        masks = []
        for token_id, features, kind in (
            (self.config.image_token_id, image_features, "image"), (self.config.video_token_id, video_features, "video")
        ):
            if input_ids is None:
                placeholder = self.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
                mask = (inputs_embeds == placeholder).all(-1)
            else:
                mask = input_ids == token_id
            if features is not None and int(mask.sum()) != features.shape[0]:
                raise ValueError(
                    f"The prompt has {int(mask.sum())} {kind} placeholder tokens (id {token_id}) but the {kind}s were "
                    f"compressed into {features.shape[0]} tokens. Each {kind} placeholder must be expanded into exactly "
                    f"its compressed token count: build inputs with HicomProcessor."
                )
            masks.append(mask.unsqueeze(-1).expand_as(inputs_embeds).to(inputs_embeds.device))
        return tuple(masks)

    @can_return_tuple
    @auto_docstring(custom_args=HICOM_INPUTS_DOCSTRING)
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        video_num_frames: torch.LongTensor | None = None,
        instruct_input_ids: torch.LongTensor | None = None,
        instruct_attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_instruct_input_ids: torch.LongTensor | None = None,
        image_instruct_attention_mask: torch.LongTensor | None = None,
        vision_batch_size: int | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> HicomModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        # Placeholders are checked on the prefill step only: a decoding step feeds back sampled tokens, and a sampled
        # placeholder id is just a token there (the visual inputs were consumed on prefill).
        # The cache is in `kwargs` under the installed transformers' name (see the language-model call below).
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        prefill = cache is None or cache.get_seq_length() == 0
        if input_ids is not None and prefill:
            for values, token_id, name in (
                (pixel_values_videos, self.config.video_token_id, "pixel_values_videos"),
                (pixel_values, self.config.image_token_id, "pixel_values"),
            ):
                if values is None and bool((input_ids == token_id).any()):
                    raise ValueError(f"`input_ids` hold placeholder tokens (id {token_id}) but `{name}` is missing.")

        video_tokens = image_tokens = None
        if pixel_values_videos is not None:
            features = self.get_video_features(
                pixel_values_videos, video_num_frames, instruct_input_ids, instruct_attention_mask, vision_batch_size
            )
            video_tokens = torch.cat(features.pooler_output)
        if pixel_values is not None:
            features = self.get_image_features(
                pixel_values, image_instruct_input_ids, image_instruct_attention_mask, vision_batch_size=vision_batch_size
            )
            image_tokens = torch.cat(features.pooler_output)
        if video_tokens is not None or image_tokens is not None:
            image_mask, video_mask = self.get_placeholder_mask(input_ids, inputs_embeds, image_tokens, video_tokens)
            for mask, tokens in ((video_mask, video_tokens), (image_mask, image_tokens)):
                if tokens is not None:
                    inputs_embeds = inputs_embeds.masked_scatter(mask, tokens.to(inputs_embeds.device, inputs_embeds.dtype))

        # The key/value cache travels in `kwargs` under the installed transformers' own name (`cache` from 5.24,
        # `past_key_values` before), and comes back in the output field of that name: see docs/architecture.md.
        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return HicomModelOutputWithPast(**outputs, video_hidden_states=video_tokens, image_hidden_states=image_tokens)


@auto_docstring(
    custom_intro="HICom with a language-modeling head: `generate()` answers questions about videos and images."
)
class HicomForConditionalGeneration(HicomPreTrainedModel, GenerationMixin):

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: HicomConfig):
        super().__init__(config)
        self.model = HicomModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_video_features(self, *args, **kwargs) -> HicomVideoFeaturesOutput | tuple:
        return self.model.get_video_features(*args, **kwargs)

    get_video_features.__doc__ = HicomModel.get_video_features.__doc__

    def get_image_features(self, *args, **kwargs) -> HicomVideoFeaturesOutput | tuple:
        return self.model.get_image_features(*args, **kwargs)

    @can_return_tuple
    @auto_docstring(custom_args=HICOM_INPUTS_DOCSTRING)
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        video_num_frames: torch.LongTensor | None = None,
        instruct_input_ids: torch.LongTensor | None = None,
        instruct_attention_mask: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        image_instruct_input_ids: torch.LongTensor | None = None,
        image_instruct_attention_mask: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> HicomCausalLMOutputWithPast | tuple:
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            pixel_values_videos=pixel_values_videos,
            video_num_frames=video_num_frames,
            instruct_input_ids=instruct_input_ids,
            instruct_attention_mask=instruct_attention_mask,
            pixel_values=pixel_values,
            image_instruct_input_ids=image_instruct_input_ids,
            image_instruct_attention_mask=image_instruct_attention_mask,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size)
        language_outputs = {key: value for key, value in outputs.items() if key != "last_hidden_state"}
        return HicomCausalLMOutputWithPast(loss=loss, logits=logits, **language_outputs)


# `save_pretrained` copies this module and its relative imports next to the weights and names the classes in the
# config's `auto_map`, so a saved folder loads as remote code (`trust_remote_code=True`).
HicomModel.register_for_auto_class("AutoModel")
HicomForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = ["HicomForConditionalGeneration", "HicomModel", "HicomPreTrainedModel", "HicomVideoFeaturesOutput"]
