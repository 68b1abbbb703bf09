"""Configuration of HICom (CVPR 2025, arXiv 2503.16036).

The authors' release encodes the compressor in one string (``mm_projector_type``) plus ``use_guide``; that
string has a parsing quirk (see ``conversion/``). Here every compressor choice is an explicit, validated
field, so a config reads as what the model computes.
"""

from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import Qwen2Config, SiglipTextConfig, SiglipVisionConfig
from transformers.configuration_utils import PreTrainedConfig

InjectionMode = Literal["off", "direct", "coarse", "fine"]
NEWLINE_POSITIONS = ("none",)
# Boolean options of each level (all False when the level is absent).
LEVEL_OPTIONS = {
    "local": (
        "local_adapt_query", "local_adapt_key", "local_adapt_value", "local_adapt_instruct", "local_clip_scale",
    ),
    "global": ("global_adapt_instruct", "global_clip_scale"),
}
# Adapter fields of older saved configs: `adapt_*` (before adapters were set per level; always False in converted
# checkpoints) and `*_adapt_guide` (before the instruction had one name, `instruct`, everywhere).
LEGACY_ADAPTER_FIELDS = (
    "adapt_key", "adapt_value", "adapt_query", "adapt_guide", "local_adapt_guide", "global_adapt_guide"
)
_SO400M = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16}

# Sub-config defaults are the released model: SigLIP so400m-patch14-384 (both towers) + Qwen2.5-7B-Instruct.
RELEASED_SUB_CONFIGS = {
    "vision_config": dict(_SO400M, image_size=384, patch_size=14),
    "instruct_config": dict(
        _SO400M, vocab_size=32000, max_position_embeddings=64, pad_token_id=1, bos_token_id=None, eos_token_id=1
    ),
    "text_config": {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "tie_word_embeddings": False,
    },
}


@strict
class HicomInstructConfig(SiglipTextConfig):
    r"""
    [`SiglipTextConfig`] with token ids inside SigLIP's vocabulary. SigLIP's defaults are CLIP's bos/eos ids
    (49406/49407), outside its own 32,000-token vocabulary, and transformers builds the sub-config class with its
    defaults whenever it prints or diffs a config (every `from_pretrained`), which then warns about those ids.
    """

    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = 1


@strict
class HicomConfig(PreTrainedConfig):
    r"""
    Configuration of [`HicomForConditionalGeneration`]: a SigLIP vision tower, a SigLIP text tower that encodes the
    user's instruction, the hybrid-level instruction-conditioned compressor, and a Qwen2 language model.

    Args:
        vision_config (`SiglipVisionConfig` or `dict`): the vision tower (its attention-pooling head is required:
            its MLP maps patches into the joint text-image space used as compression keys).
        instruct_config (`SiglipTextConfig` or `dict`): the instruction encoder (named so because
            `get_text_config()` must find the language model's config alone).
        text_config (`Qwen2Config` or `dict`): the language model.
        vision_feature_layer (`int`, defaults to -2): hidden state of the vision tower used as compression values.
        local_temporal_kernel / local_spatial_kernel (`int`, defaults to 4 / 3): size of the local windows.
        use_local_level (`bool`, defaults to `True`): compress local windows; `False` gives a global-only projector.
        num_global_queries (`int`, defaults to 32): global tokens per video; 0 disables the global level.
        num_global_heads (`int`, *optional*): heads of the global attention (and of fine injection's attention);
            defaults to the reference's `vision_config.hidden_size // 128` (9 for so400m), at least 1.
        local_injection / global_injection (`"off"`, `"direct"`, `"coarse"` or `"fine"`): how the instruction enters
            each level's queries: `"direct"` (the query is the pooled instruction embedding), `"coarse"` (FiLM
            modulation of the unconditional query by it), `"fine"` (the unconditional query cross-attends to the
            instruction's per-token embeddings) or `"off"` (unconditional compression). A model that injects at no
            level encodes no instruction, and its local keys are the features themselves (as in the reference).
        local_adapt_query / local_adapt_key / local_adapt_value / local_adapt_instruct / global_adapt_instruct (`bool`):
            gated residual adapters `(1 - a) * x + a * LN(proj(x))` on the local level's unconditional queries (a
            bias-free linear `proj`; not with direct injection, which has no such query), keys, values, or on the
            instruction embedding of either level (an MLP `proj` each). The reference has no other adapters.
        local_clip_scale / global_clip_scale (`bool`): SigLIP-style attention at that level: L2-normalized
            queries and keys, scores `q . k * exp(logit_scale) + logit_bias` instead of `q . k / sqrt(d)`.
        newline_position (`str`, defaults to `"none"`): separator tokens between frames; the release uses none.
        projector_hidden_act (`str`, defaults to `"gelu"`): activation of the compressor MLPs.
        video_token_id / image_token_id (`int`): placeholder ids that the compressed tokens replace.
        instruct_max_length (`int`, defaults to 64): instruction length (padded to it: SigLIP pools the last position).
        vision_batch_size (`int`, defaults to 16): frames encoded at once; bounds peak memory on long videos.
    """

    model_type = "hicom"
    # Sub-configs are built in `__post_init__` (the `sub_configs` mapping style that every transformers 5.x reads;
    # 5.20 added `sub_configs_defaults`, which 5.19 lacks).
    sub_configs = {
        "vision_config": SiglipVisionConfig, "instruct_config": HicomInstructConfig, "text_config": Qwen2Config
    }

    vision_config: dict | PreTrainedConfig | None = None
    instruct_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    vision_feature_layer: int = -2
    local_temporal_kernel: int = 4
    local_spatial_kernel: int = 3
    use_local_level: bool = True
    num_global_queries: int = 32
    num_global_heads: int | None = None
    local_injection: InjectionMode = "direct"
    global_injection: InjectionMode = "direct"
    local_adapt_query: bool = False
    local_adapt_key: bool = False
    local_adapt_value: bool = False
    local_adapt_instruct: bool = False
    global_adapt_instruct: bool = False
    local_clip_scale: bool = False
    global_clip_scale: bool = False
    newline_position: str = "none"
    projector_hidden_act: str = "gelu"
    video_token_id: int = 151665
    image_token_id: int = 151666
    instruct_max_length: int = 64
    vision_batch_size: int = 16
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        for name, config_class in self.sub_configs.items():
            value = getattr(self, name)
            if value is None:
                value = RELEASED_SUB_CONFIGS[name]
            if isinstance(value, dict):
                # A saved config carries `model_type`; the class is fixed here, so it is not an argument.
                value = config_class(**{key: item for key, item in value.items() if key != "model_type"})
            setattr(self, name, value)
        _drop_legacy_adapter_fields(kwargs)
        super().__post_init__(**kwargs)
        self._check_variant()
        if self.newline_position not in NEWLINE_POSITIONS:
            raise ValueError(f"`newline_position` must be one of {NEWLINE_POSITIONS}, got {self.newline_position!r}.")
        for name in ("local_temporal_kernel", "local_spatial_kernel", "instruct_max_length", "vision_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        if self.num_global_queries < 0:
            raise ValueError(f"`num_global_queries` must be >= 0, got {self.num_global_queries}.")
        if self.num_global_heads is None:
            self.num_global_heads = max(1, self.vision_config.hidden_size // 128)
        if self.num_global_heads < 1 or self.vision_config.hidden_size % self.num_global_heads:
            raise ValueError(
                f"`num_global_heads` must be a positive divisor of the vision hidden_size "
                f"{self.vision_config.hidden_size}, got {self.num_global_heads}."
            )
        if not getattr(self.vision_config, "vision_use_head", True):
            raise ValueError("HICom needs the SigLIP vision head (`vision_config.vision_use_head=True`).")

    def _check_variant(self) -> None:
        """Combinations of the per-level settings that no model computes (each field alone is checked by its type)."""
        levels = {"local": self.use_local_level, "global": self.num_global_queries > 0}
        if not any(levels.values()):
            raise ValueError("The compressor needs a level: set `use_local_level=True` or `num_global_queries` > 0.")
        for level, present in levels.items():
            enabled = [name for name in LEVEL_OPTIONS[level] if getattr(self, name)]
            if not present and enabled:
                raise ValueError(f"`{enabled[0]}=True` has no effect: the model has no {level} level.")
            if present and getattr(self, f"{level}_injection") == "off" and getattr(self, f"{level}_adapt_instruct"):
                raise ValueError(
                    f"`{level}_adapt_instruct=True` has no effect with `{level}_injection='off'` (no instruction enters "
                    f"the {level} level)."
                )
        if self.local_adapt_query and self.local_injection == "direct":
            raise ValueError(
                "`local_adapt_query=True` has no effect with `local_injection='direct'`: the query is the instruction "
                "embedding, no unconditional query is computed (the reference turns this adapter off)."
            )
        modes = {
            self.local_injection if levels["local"] else "off", self.global_injection if levels["global"] else "off"
        }
        if "fine" in modes and modes - {"fine", "off"}:
            raise ValueError(
                f"`local_injection={self.local_injection!r}` and `global_injection={self.global_injection!r}` cannot "
                "be combined: fine injection reads the instruction's per-token embeddings, direct and coarse its pooled "
                "embedding, and the instruction is encoded one way per model (as in the reference)."
            )

    @property
    def instruct_embedding(self) -> Literal["none", "pooled", "per_token"]:
        """What the instruction encoder gives the compressor: nothing if no level injects the instruction, one row
        per instruction token (padding included) for fine injection, else the pooled embedding."""
        modes = []
        if self.use_local_level:
            modes.append(self.local_injection)
        if self.num_global_queries > 0:
            modes.append(self.global_injection)
        if "fine" in modes:
            return "per_token"
        return "pooled" if any(mode != "off" for mode in modes) else "none"


def _drop_legacy_adapter_fields(kwargs: dict) -> None:
    """Drop the `LEGACY_ADAPTER_FIELDS` of an older saved config when False (no adapter: the weights are unchanged).
    A True one names an adapter whose weights were saved under another layout or name: loading them would silently
    leave the adapter out, so the checkpoint must be converted again."""
    for name in LEGACY_ADAPTER_FIELDS:
        if kwargs.pop(name, False):
            raise ValueError(
                f"`{name}=True` is from an older HicomConfig whose adapter weights this version names differently; "
                "re-convert the checkpoint (the per-level fields are `local_adapt_query`, `local_adapt_key`, "
                "`local_adapt_value`, `local_adapt_instruct`, `global_adapt_instruct`)."
            )


HicomConfig.register_for_auto_class()  # saved configs name this class in `auto_map` (remote code)

__all__ = ["HicomConfig", "HicomInstructConfig"]
