r"""Convert an original HICom release (github lntzm/HICom, transformers 4.46) into a transformers remote-code folder.

    hicom-convert --input HICom_7B_qwen25_directg_local43_global32 \
        --vision-tower siglip-so400m-patch14-384 --output hicom-7b-hf

The original encodes the compressor in `mm_projector_type` + `use_guide` + `use_clip_scale`; this script
reproduces that parser exactly (including its quirk, see `parse_projector_type`) for every projector the authors'
code can build, and writes explicit `HicomConfig` fields. Every weight is renamed by one regex table; a tensor no
rule maps, or a model tensor left unfilled, stops the conversion.
"""

import argparse
import json
import re
import shutil
import uuid
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm
from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, SiglipVisionConfig
from transformers.utils import logging

from modeling_hicom import HicomConfig, HicomForConditionalGeneration

logger = logging.get_logger("hicom-convert")

# Compressor names of either level: original (under `model.mm_projector.<level>_compressor.`) -> ours (under
# `model.compressor.<level>_level.`). Which of them a checkpoint has depends on its variant.
# Two-layer MLPs, `nn.Sequential(Linear, GELU, Linear)` in the original (children `0`, `2`):
COMPRESSOR_MLPS = {
    "readout": "readout",
    "k_proj": "key_adapter.proj",
    "v_proj": "value_adapter.proj",
    "guide_injector.text2qk_proj": "injection.text2qk",
    "guide_injector.guide_proj": "injection.instruct_adapter.proj",
    "guide_injector.coarse_proj": "injection.film",
}
MLP_LAYERS = {"0": "linear_1", "2": "linear_2"}
# Other modules (their parameters keep their names) and bare parameters:
COMPRESSOR_MODULES = {
    "q_proj": "query_adapter.proj",  # a bias-free Linear, not an MLP
    "q_norm": "query_adapter.norm",
    "k_norm": "key_adapter.norm",
    "v_norm": "value_adapter.norm",
    "attn_layer": "attn",
    "guide_injector.guide_norm": "injection.instruct_adapter.norm",
    "guide_injector.coarse_norm": "injection.norm",
    "guide_injector.fine_proj": "injection.attn",
    "guide_injector.fine_norm": "injection.norm",
}
COMPRESSOR_PARAMETERS = {
    "query": "query",
    "q_alpha": "query_adapter.gate",
    "k_alpha": "key_adapter.gate",
    "v_alpha": "value_adapter.gate",
    "guide_injector.guide_alpha": "injection.instruct_adapter.gate",
}
_LEVEL = r"^model\.mm_projector\.(local|global)_compressor\."
# Original key -> converted key. Applied in order; the first match wins.
KEY_RULES = [
    (r"^model\.vision_tower\.vision_tower\.vision_model\.(.+)$", r"model.vision_tower.\1"),
    (r"^model\.vision_tower\.guide_encoder\.text_model\.(.+)$", r"model.instruct_encoder.\1"),
    *[
        (rf"{_LEVEL}{re.escape(original)}\.{index}\.(weight|bias)$", rf"model.compressor.\1_level.{ours}.{layer}.\2")
        for original, ours in COMPRESSOR_MLPS.items()
        for index, layer in MLP_LAYERS.items()
    ],
    *[
        (rf"{_LEVEL}{re.escape(original)}\.(.+)$", rf"model.compressor.\1_level.{ours}.\2")
        for original, ours in COMPRESSOR_MODULES.items()
    ],
    *[
        (rf"{_LEVEL}{re.escape(original)}$", rf"model.compressor.\1_level.{ours}")
        for original, ours in COMPRESSOR_PARAMETERS.items()
    ],
    # CLIP scale: SigLIP's temperature and bias, copied per level onto the projector itself.
    (r"^model\.mm_projector\.local_logit_(scale|bias)$", r"model.compressor.local_level.logit_\1"),
    (r"^model\.mm_projector\.global_logit_(scale|bias)$", r"model.compressor.global_level.attn.logit_\1"),
    (r"^model\.(embed_tokens|layers|norm)\.(.+)$", r"model.language_model.\1.\2"),
    (r"^lm_head\.weight$", r"lm_head.weight"),
]
_COMPILED_RULES = [(re.compile(pattern), target) for pattern, target in KEY_RULES]

# Original config fields this converter understands, with the only values it can convert faithfully.
SUPPORTED_SETTINGS = {
    "mm_vision_select_feature": ("patch",),
    "mm_newline_position": ("no_token",),
    "image_aspect_ratio": ("pad",),
}
QWEN2_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling", "attention_dropout",
    "sliding_window", "use_sliding_window", "max_window_layers", "tie_word_embeddings", "initializer_range",
    "bos_token_id", "eos_token_id",
)
INJECTION_MODES = ("off", "direct", "coarse", "fine")
# `use_guide` values the reference runs: None / "off" encode no instruction.
USE_GUIDE_VALUES = (None, "off", "direct", "coarse", "fine")
VIDEO_TOKEN, IMAGE_TOKEN = "<video>", "<image>"


class ConversionError(ValueError):
    """The inputs cannot be converted (faithfully); the message says why and, where it can, what to do."""


def read_config(folder: Path, argument: str) -> dict:
    """`folder/config.json` as a dict, or a `ConversionError` naming `argument` and what is wrong with it."""
    path = folder / "config.json"
    if not folder.is_dir():
        raise ConversionError(f"{argument} {str(folder)!r}: no such folder.")
    if not path.is_file():
        raise ConversionError(f"{argument} {str(folder)!r} has no config.json.")
    try:
        config = json.loads(path.read_text())
    except ValueError as error:  # malformed JSON, or not text at all
        raise ConversionError(f"{path} is not valid JSON ({error}).") from error
    if not isinstance(config, dict):
        raise ConversionError(f"{path} must hold a JSON object, got {type(config).__name__}.")
    return config


def rename_key(key: str) -> str | None:
    for pattern, target in _COMPILED_RULES:
        if pattern.match(key):
            return pattern.sub(target, key)
    return None


def _leading_digits(phase: str) -> str:
    return re.match(r"\d*", phase)[0]


def _injection_mode(phase: str, use_guide, level: str, projector_type: str) -> str:
    """The reference: `guide<mode>` in the level's phase (up to the next `_`) overrides `use_guide`."""
    if "guide" not in phase:
        return "off" if use_guide is None else use_guide
    mode = phase.split("guide")[-1].split("_")[0]
    if mode not in INJECTION_MODES:
        raise ConversionError(
            f"Unsupported word 'guide{mode}' in `mm_projector_type` {projector_type!r}: the {level} level's injection "
            f"must be one of {', '.join('guide' + m for m in INJECTION_MODES)} (the reference cannot run {mode!r})."
        )
    return mode


def _ignored_words(phase: str, read: tuple[str, ...]) -> list[str]:
    """Words of a level's phase that the reference's parser never reads (after the leading number)."""
    return [word for word in phase.split("_")[1:] if word and not any(key in word for key in read)]


def parse_projector_type(projector_type: str, use_guide=None, use_clip_scale: str = "") -> dict:
    """Explicit `HicomConfig` compressor settings from the original `mm_projector_type`, `use_guide` and
    `use_clip_scale`, read exactly as the reference's `build_vision_projector` reads them.

    Each level reads its own phase of the string (`local_phase` = after the last `local`, up to `global`; the global
    one likewise): local `<kt><ks>` (one digit, then one or two), adapters from the letters after the last `adapt`
    (`q`, `k`, `v`, `g`), global `<num_queries>` and adapter `g` iff `adaptg` appears. A level's injection is its
    `guide<mode>` word, else `use_guide`. Other words select nothing: the released `local43_global32_coarse` with
    `use_guide: direct` is therefore direct at *both* levels, its 32 global tokens identical. Reproduced on purpose:
    it is what the weights were trained with. What the reference cannot build or run is refused, naming the reason.
    """
    if not isinstance(projector_type, str) or ("local" not in projector_type and "global" not in projector_type):
        raise ConversionError(
            f"Unsupported `mm_projector_type` {projector_type!r}: a HICom projector names a `local<kt><ks>` and/or a "
            "`global<num_queries>` level (the reference's `linear`/`mlp` projectors are not HICom)."
        )
    if use_guide not in USE_GUIDE_VALUES:
        raise ConversionError(f"Unknown `use_guide` value {use_guide!r}; expected one of {USE_GUIDE_VALUES}.")
    if not isinstance(use_clip_scale, str):
        raise ConversionError(f"`use_clip_scale` must be a comma-separated string, got {use_clip_scale!r}.")
    clip_levels = use_clip_scale.split(",")
    settings = {
        "use_local_level": "local" in projector_type, "num_global_queries": 0,
        "local_injection": "off", "global_injection": "off",
    }
    ignored = [item for item in clip_levels if item not in ("", "local", "global")]
    for level in ("local", "global"):
        if level in clip_levels and level not in projector_type:
            raise ConversionError(
                f"`use_clip_scale` {use_clip_scale!r} names `{level}` but {projector_type!r} has no {level} level."
            )
    if settings["use_local_level"]:
        phase = projector_type.split("local")[-1].split("global")[0]
        digits = _leading_digits(phase)
        if len(digits) not in (2, 3) or int(digits[0]) == 0 or int(digits[1:]) == 0:
            raise ConversionError(
                f"Unsupported word 'local{digits}' in `mm_projector_type` {projector_type!r}: the reference reads "
                "`local<kt><ks>`, a one-digit temporal and a one- or two-digit spatial kernel, both positive."
            )
        letters = ""
        for letter in phase.split("adapt")[-1] if "adapt" in phase else "":
            if letter not in "qkvg":
                break
            letters += letter
        mode = _injection_mode(phase, use_guide, "local", projector_type)
        settings.update(
            local_temporal_kernel=int(digits[0]),
            local_spatial_kernel=int(digits[1:]),
            local_injection=mode,
            # The reference turns the query adapter off for direct injection, and builds no instruction adapter
            # without injection: those checkpoints have no such weights.
            local_adapt_query="q" in letters and mode != "direct",
            local_adapt_key="k" in letters,
            local_adapt_value="v" in letters,
            local_adapt_instruct="g" in letters and mode != "off",
            local_clip_scale="local" in clip_levels,
        )
        ignored += _ignored_words(phase, ("adapt", "guide"))
    if "global" in projector_type:
        phase = projector_type.split("global")[-1].split("local")[0]
        digits = _leading_digits(phase)
        if not digits or int(digits) == 0:
            raise ConversionError(
                f"Unsupported word 'global{digits}' in `mm_projector_type` {projector_type!r}: the reference reads "
                "`global<num_queries>`, a positive number of queries."
            )
        mode = _injection_mode(phase, use_guide, "global", projector_type)
        settings.update(
            num_global_queries=int(digits),
            global_injection=mode,
            global_adapt_instruct="adaptg" in phase and mode != "off",
            global_clip_scale="global" in clip_levels,
        )
        ignored += _ignored_words(phase, ("adaptg", "guide"))
    _check_instruction_form(settings, use_guide, projector_type)
    if ignored:
        logger.warning(
            f"The reference's parser ignores {', '.join(map(repr, ignored))} in `mm_projector_type` {projector_type!r} "
            f"/ `use_clip_scale` {use_clip_scale!r}; so does this conversion."
        )
    return settings


def _check_instruction_form(settings: dict, use_guide, projector_type: str) -> None:
    """The reference encodes the instruction from the config's `use_guide` alone: not at all when it is None/off,
    per token when it is `fine`, pooled otherwise. A level whose mode needs another form crashes there."""
    modes = {settings["local_injection"], settings["global_injection"]}
    described = f"`{projector_type}` with use_guide={use_guide!r}"
    if use_guide in (None, "off"):
        if modes - {"off"}:
            raise ConversionError(
                f"{described} injects the instruction at a level, but with use_guide={use_guide!r} the reference "
                "encodes no instruction (it cannot run this checkpoint)."
            )
    elif use_guide == "fine" and modes - {"fine", "off"} or use_guide != "fine" and "fine" in modes:
        raise ConversionError(
            f"{described} mixes fine injection with the {'pooled' if use_guide != 'fine' else 'per-token'} "
            "instruction embedding that use_guide selects; the reference cannot run it (fine needs per-token "
            "embeddings, direct and coarse the pooled one)."
        )
    elif modes == {"off"}:
        raise ConversionError(
            f"{described} injects the instruction at no level, yet the reference would still encode it and key the "
            "local level on patch embeddings; this converter supports unconditional projectors with use_guide off."
        )


def build_config(original: dict, siglip: dict, video_token_id: int, image_token_id: int) -> HicomConfig:
    """Map the original `config.json` and the SigLIP folder's config onto `HicomConfig`."""
    if original.get("model_type") != "hicom_qwen2":
        raise ConversionError(f"Expected an original HICom Qwen2 config (`model_type: hicom_qwen2`), got {original.get('model_type')!r}.")
    for field, allowed in SUPPORTED_SETTINGS.items():
        if original.get(field, allowed[0]) not in allowed:
            raise ConversionError(f"Unsupported `{field}`={original[field]!r}; this converter handles {allowed}.")
    text = {k: original[k] for k in QWEN2_FIELDS if original.get(k) is not None}
    instruct = dict(siglip["text_config"])
    # SigLIP configs inherit CLIP's bos/eos ids (49406/49407), outside SigLIP's sentencepiece vocabulary.
    vocab = instruct.get("vocab_size", 32000)
    for name, fallback in (("bos_token_id", None), ("eos_token_id", instruct.get("pad_token_id", 1))):
        if instruct.get(name, vocab) is None or instruct.get(name, vocab) >= vocab:
            instruct[name] = fallback
    for token_id in (video_token_id, image_token_id):
        if token_id >= text["vocab_size"]:
            raise ConversionError(f"Placeholder token id {token_id} does not fit the vocabulary ({text['vocab_size']}).")
    return HicomConfig(
        vision_config=SiglipVisionConfig(**{k: v for k, v in siglip["vision_config"].items() if k != "model_type"}),
        # A dict, so that HicomConfig builds its own instruction-config class (valid default ids).
        instruct_config={k: v for k, v in instruct.items() if k != "model_type"},
        text_config=Qwen2Config(**text),
        vision_feature_layer=original.get("mm_vision_select_layer", -2),
        newline_position="none",
        video_token_id=video_token_id,
        image_token_id=image_token_id,
        tie_word_embeddings=original.get("tie_word_embeddings", False),
        **parse_projector_type(
            original["mm_projector_type"], original.get("use_guide"), original.get("use_clip_scale", "")
        ),
    )


def iter_checkpoint(folder: Path):
    """Yield `(key, tensor)` of an original checkpoint: safetensors (single or sharded), or `.bin` weights-only."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        bins = sorted(folder.glob("pytorch_model*.bin"))
        if not bins:
            raise ConversionError(f"No model.safetensors(.index.json) or pytorch_model*.bin in {folder}.")
        for path in bins:
            # Pickle files can run code when loaded: only plain tensors are accepted.
            yield from torch.load(path, map_location="cpu", weights_only=True, mmap=True).items()
        return
    for name in files:
        path = folder / name
        if not path.exists():
            raise ConversionError(f"The checkpoint index lists {name}, which is missing from {folder}.")
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():
                yield key, handle.get_tensor(key)


def count_tensors(folder: Path) -> int | None:
    """Number of tensors, for the progress bar (unknown for pickle checkpoints without loading them)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return len(json.loads(index.read_text())["weight_map"])
    if (folder / "model.safetensors").exists():
        with safe_open(folder / "model.safetensors", framework="pt") as handle:
            return len(handle.keys())
    return None


def convert_state_dict(tensors, expected: dict, dtype: torch.dtype | None, total: int | None = None) -> dict:
    """Rename and check every tensor against the model's `expected` `{key: shape}`; refuse any gap or surplus."""
    state_dict, unmapped = {}, []
    for key, tensor in tqdm(tensors, total=total, desc="Converting tensors", unit="tensor"):
        new_key = rename_key(key)
        if new_key is None or new_key not in expected:
            unmapped.append(key)
            continue
        if tuple(tensor.shape) != tuple(expected[new_key]):
            raise ConversionError(f"{key} has shape {tuple(tensor.shape)}, the model expects {tuple(expected[new_key])} for {new_key}.")
        state_dict[new_key] = tensor.to(dtype) if dtype is not None else tensor
    missing = sorted(set(expected) - set(state_dict))
    if unmapped or missing:
        raise ConversionError(
            "The checkpoint does not match the HICom layout; nothing was written.\n"
            + (f"Tensors no rule maps ({len(unmapped)}): {', '.join(unmapped)}\n" if unmapped else "")
            + (f"Model tensors the checkpoint does not fill ({len(missing)}): {', '.join(missing)}" if missing else "")
        )
    return state_dict


def check_tokenizer_files(folder: Path, argument: str) -> None:
    """Refuse a folder without a Qwen2 tokenizer: from such a folder `AutoTokenizer` quietly builds a tokenizer of a
    few special tokens that reads every prompt as nothing, and the converted model would be useless."""
    missing = [] if (folder / "tokenizer_config.json").is_file() else ["tokenizer_config.json"]
    if not (folder / "tokenizer.json").is_file() and not all((folder / n).is_file() for n in ("vocab.json", "merges.txt")):
        missing.append("tokenizer.json (or vocab.json and merges.txt)")
    if missing:
        raise ConversionError(
            f"{argument} {str(folder)!r} lacks the language model's tokenizer files: {', '.join(missing)}. Copy them "
            "there, or pass --tokenizer with a folder that has them (the base LLM's, e.g. Qwen2.5-7B-Instruct)."
        )


def load_tokenizer(folder: Path):
    """The LLM tokenizer; a Qwen2 config is passed so the original `config.json` (model_type hicom_qwen2) is not read."""
    return AutoTokenizer.from_pretrained(folder, config=Qwen2Config())


def build_processor(tokenizer, vision_tower: Path, config: HicomConfig, original: dict):
    """Processor for the converted folder: the LLM tokenizer (with placeholders), SigLIP's tokenizer and frame settings."""
    from processing_hicom import HicomProcessor

    return HicomProcessor.from_components(
        tokenizer=tokenizer,
        instruct_tokenizer_path=vision_tower,
        config=config,
        num_frames=original.get("num_frames", 32),
    )


MODEL_CARD = """---
library_name: transformers
pipeline_tag: video-text-to-text
tags: [hicom, video-llm, token-compression, custom_code]
---

# {name} (HICom, transformers format)

HICom (CVPR 2025, arXiv 2503.16036) compresses a video's visual tokens *conditioned on the question*: attention
inside space-time windows (local level) and learnable-query tokens over the whole clip (global level).

## Variant
{variant}

## Token budget
| frames | raw SigLIP tokens | HICom tokens |
| --- | --- | --- |
{budget}

## How the original settings were read
The original config says `mm_projector_type: {projector}` with `use_guide: {use_guide}` and `use_clip_scale:
{clip_scale!r}`. The authors' parser only switches a level to another injection mode through a `guide<mode>` word, so
this checkpoint uses `local_injection={local}` and `global_injection={global_}`.{quirk}

## Usage
```python
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

model = AutoModelForImageTextToText.from_pretrained("{name}", trust_remote_code=True, dtype="auto")
processor = AutoProcessor.from_pretrained("{name}", trust_remote_code=True)
pipe = pipeline("video-text-to-text", model="{name}", trust_remote_code=True)
pipe(videos="clip.mp4", text="What happens in the video?", max_new_tokens=64)
```

## Conversion
Converted with hicom-transformers' `hicom-convert --input {input} --vision-tower {vision}` from the original
release (weights stored as {dtype}).
"""


INJECTION_WORDS = {
    "off": "no instruction injection",
    "direct": "direct injection",
    "coarse": "coarse injection",
    "fine": "fine injection",
}


def describe_variant(config: HicomConfig) -> str:
    """The compressor in words, e.g. "local: 4x3x3 windows, direct injection, adapters k,v; global: 32 queries, coarse
    injection, adapter g; CLIP-scale attention: none"."""
    parts = ["local: none"]
    if config.use_local_level:
        adapters = ",".join(
            letter for letter, name in zip("qkvg", ("query", "key", "value", "instruct"))
            if getattr(config, f"local_adapt_{name}")
        )
        kt, ks = config.local_temporal_kernel, config.local_spatial_kernel
        injection = INJECTION_WORDS[config.local_injection]
        parts[0] = f"local: {kt}x{ks}x{ks} windows, {injection}, adapters {adapters or 'none'}"
    if config.num_global_queries:
        adapter = "g" if config.global_adapt_instruct else "none"
        injection = INJECTION_WORDS[config.global_injection]
        parts.append(f"global: {config.num_global_queries} queries, {injection}, adapter {adapter}")
    else:
        parts.append("global: none")
    clip = [level for level in ("local", "global") if getattr(config, f"{level}_clip_scale")]
    parts.append(f"CLIP-scale attention: {','.join(clip) or 'none'}")
    return "; ".join(parts)


def write_model_card(output: Path, config: HicomConfig, processor, original: dict, input_dir: Path, vision_tower: Path, dtype):
    rows = [
        f"| {n} | {processor.num_raw_tokens(n):,} | {processor.num_video_tokens(n):,} |" for n in (8, 32, 64, 128)
    ]
    identical = config.global_injection == "direct" and config.num_global_queries > 0
    quirk = (
        f" With direct injection every global query *is* the instruction embedding, so the {config.num_global_queries}"
        " global tokens are identical copies (the paper describes coarse injection at the global level). This"
        " conversion reproduces what the weights were trained with."
        if identical
        else ""
    )
    (output / "README.md").write_text(
        MODEL_CARD.format(
            name=output.name, variant=describe_variant(config), budget="\n".join(rows),
            projector=original["mm_projector_type"], use_guide=original.get("use_guide"),
            clip_scale=original.get("use_clip_scale", ""), local=config.local_injection,
            global_=config.global_injection,
            quirk=quirk, input=input_dir.name, vision=vision_tower.name, dtype=str(dtype).replace("torch.", ""),
        )
    )


def verify_reference(output: Path, reference: Path, atol: float = 1e-4) -> float:
    """Reload the written folder as remote code and compare its logits with the reference run's."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    data = load_file(reference)
    model = AutoModelForImageTextToText.from_pretrained(output, trust_remote_code=True, dtype=torch.float32).eval()
    n_tokens = data["expected_visual_tokens"].shape[0]
    input_ids = torch.cat(
        [data["text_before_ids"], torch.full((n_tokens,), model.config.video_token_id), data["text_after_ids"]]
    )[None]
    with torch.no_grad():
        logits = model(
            input_ids=input_ids,
            pixel_values_videos=data["pixel_values"].float(),
            instruct_input_ids=data["guide_input_ids"],
            instruct_attention_mask=data["guide_attention_mask"],
        ).logits[0]
    error = (logits - data["expected_logits"]).abs().max().item()
    if error > atol:
        raise ConversionError(f"Converted logits differ from the reference by {error:.3g} (> {atol}).")
    return error


def build_generation_config(input_dir: Path, config: HicomConfig) -> GenerationConfig:
    """The release's generation settings, with the `<video>`/`<image>` placeholders suppressed: a trained model never
    needs to emit them, and one sampled from a weak or random model would read as a placeholder of a missing input."""
    try:
        generation = (
            GenerationConfig.from_pretrained(input_dir)
            if (input_dir / "generation_config.json").is_file()
            else GenerationConfig.from_model_config(config.get_text_config())
        )
    except OSError as error:  # transformers reports a malformed generation_config.json as an OSError
        raise ConversionError(f"{input_dir / 'generation_config.json'} cannot be read: {error}") from error
    generation.suppress_tokens = sorted(
        set(generation.suppress_tokens or ()) | {config.video_token_id, config.image_token_id}
    )
    return generation


def check_output(output: Path, overwrite: bool, inputs: list[Path]) -> None:
    """Refuse, before any work, an output that would mix with or destroy other files."""
    if output.exists() and not output.is_dir():
        raise ConversionError(f"--output {str(output)!r} is a file, not a folder.")
    for folder in inputs:
        if output.resolve() == folder.resolve() or output.resolve() in folder.resolve().parents:
            raise ConversionError(f"--output {str(output)!r} would replace the input folder {str(folder)!r}.")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ConversionError(
            f"--output {str(output)!r} is not empty: pass --overwrite to replace it, or choose another folder."
        )


def move_into_place(staging: Path, output: Path) -> None:
    """Replace `output` with the finished `staging` folder (renames within one parent folder). Nothing of an earlier
    conversion survives, such as a shard index that points at shards which no longer exist."""
    if output.exists():
        previous = staging.with_name(staging.name + ".previous")
        output.rename(previous)
        staging.rename(output)
        shutil.rmtree(previous)
    else:
        staging.rename(output)


def write_converted(staging: Path, input_dir: Path, vision_tower: Path, original: dict, siglip: dict, tokenizer, dtype,
                    max_shard_size):
    """Convert the weights and write the whole folder (model, generation config, processor, model card) to `staging`."""
    config = build_config(
        original, siglip, tokenizer.convert_tokens_to_ids(VIDEO_TOKEN), tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    )
    with torch.device("meta"):
        model = HicomForConditionalGeneration(config)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    state_dict = convert_state_dict(
        iter_checkpoint(input_dir), expected, getattr(torch, dtype) if dtype else None, total=count_tensors(input_dir)
    )
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.config.dtype = next(iter(state_dict.values())).dtype
    model.generation_config = build_generation_config(input_dir, config)
    from processing_hicom import VideoTextToTextPipeline  # importing the package registers the pipeline task

    processor = build_processor(tokenizer, vision_tower, config, original)
    # transformers' `any-to-any` pipeline loads the model with `AutoModelForMultimodalLM`; `register_for_auto_class`
    # names one Auto class per model class, so a second one goes in the config's `auto_map`, as transformers'
    # custom-model guide says (saving adds the registered ones).
    model.config.auto_map = {"AutoModelForMultimodalLM": "modeling_hicom.HicomForConditionalGeneration"}
    # The pipeline's own saving writes the model (with its generation config), every remote-code module and the
    # `custom_pipelines` entry that `pipeline("video-text-to-text", model=folder, trust_remote_code=True)` reads; the
    # processor saves itself.
    VideoTextToTextPipeline(model=model, processor=processor).save_pretrained(staging, max_shard_size=max_shard_size)
    processor.save_pretrained(staging)
    write_model_card(staging, config, processor, original, input_dir, vision_tower, model.config.dtype)


def convert(input_dir, vision_tower, output, dtype=None, reference=None, push_to_hub=None, max_shard_size="5GB",
            tokenizer=None, overwrite=False):
    """Convert `input_dir` (+ the SigLIP folder `vision_tower`) into `output`, which is written only once complete.

    The folder is built in a temporary sibling of `output` and renamed into place: a failed conversion leaves nothing
    behind, and a replaced `output` keeps no file of an earlier conversion. `tokenizer` is a folder with the language
    model's tokenizer files, when `input_dir` lacks them.
    """
    input_dir, vision_tower, output = Path(input_dir), Path(vision_tower), Path(output)
    tokenizer_dir = Path(tokenizer) if tokenizer is not None else input_dir
    check_output(output, overwrite, [input_dir, vision_tower, tokenizer_dir])
    original = read_config(input_dir, "--input")
    siglip = read_config(vision_tower, "--vision-tower")
    if tokenizer is not None and not tokenizer_dir.is_dir():
        raise ConversionError(f"--tokenizer {str(tokenizer_dir)!r}: no such folder.")
    if reference is not None and not Path(reference).is_file():
        raise ConversionError(f"--reference {str(reference)!r}: no such file.")
    check_tokenizer_files(tokenizer_dir, "--tokenizer" if tokenizer is not None else "--input")
    llm_tokenizer = load_tokenizer(tokenizer_dir)
    llm_tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN, IMAGE_TOKEN]})

    staging = output.with_name(f".{output.name}.partial-{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    try:
        write_converted(staging, input_dir, vision_tower, original, siglip, llm_tokenizer, dtype, max_shard_size)
        if reference is not None:
            error = verify_reference(staging, Path(reference))
            logger.warning(f"Reference logits reproduced: max abs error {error:.2e}")
        move_into_place(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.warning(f"Wrote {output}")
    if push_to_hub:
        from huggingface_hub import upload_folder

        try:
            upload_folder(repo_id=push_to_hub, folder_path=str(output), repo_type="model")
        except OSError as error:  # huggingface_hub's HTTP and connection errors
            raise ConversionError(f"Wrote {output}, but the upload to {push_to_hub} failed: {error}") from error
    return output


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="hicom-convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", required=True, help="original HICom checkpoint folder")
    parser.add_argument("--vision-tower", required=True, help="SigLIP folder (config, tokenizer, preprocessor config)")
    parser.add_argument("--output", required=True, help="folder to write the converted model to")
    parser.add_argument(
        "--tokenizer", help="folder with the language model's tokenizer files, when --input lacks them"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: keep the checkpoint's")
    parser.add_argument("--reference", help="reference_io.safetensors to verify the converted logits against")
    parser.add_argument("--push-to-hub", metavar="REPO", help="also upload the folder to this Hub repository")
    parser.add_argument("--max-shard-size", default="5GB")
    args = parser.parse_args(argv)
    try:
        convert(
            args.input, args.vision_tower, args.output, args.dtype, args.reference, args.push_to_hub,
            args.max_shard_size, tokenizer=args.tokenizer, overwrite=args.overwrite,
        )
    except ConversionError as error:
        parser.exit(2, f"hicom-convert: error: {error}\n")


if __name__ == "__main__":
    main()
