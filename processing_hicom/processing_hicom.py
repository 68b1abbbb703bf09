"""`HicomProcessor`: prompts, videos, images and the instruction that conditions HICom's token compression.

HICom compresses each video *conditioned on the question*, so besides the usual LLM inputs the processor returns the
question tokenized for the SigLIP text tower (`instruct_input_ids`), one row per video. It also expands each `<video>`
placeholder into exactly the number of tokens the compressor will produce for that video.

Remote code: this file is copied flat next to the model files, so it imports only torch, numpy, transformers and its
siblings `pipeline_hicom` (to register the pipeline task) and `video_processing_hicom`.
"""

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, BatchFeature, PretrainedConfig, SiglipTextConfig
from transformers.processing_utils import ProcessorMixin
from transformers.utils import logging
from transformers.video_processing_utils import VideoProcessorMixin

from .pipeline_hicom import register_pipeline
from .video_processing_hicom import VIDEO_KWARGS

logger = logging.get_logger(__name__)

VIDEO_TOKEN = "<video>"
IMAGE_TOKEN = "<image>"

# Qwen2.5 ChatML with the reference's default system prompt. A video block renders as "<video>\n" before the text, so a
# user turn [video, "question"] is exactly the reference prompt `"<video>\n" + question`.
HICOM_CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for block in content -%}"
    "{%- if block['type'] == 'video' -%}{{ '<video>\\n' }}"
    "{%- elif block['type'] == 'image' -%}{{ '<image>\\n' }}"
    "{%- elif block['type'] == 'text' -%}{{ block['text'] }}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- if not messages or messages[0]['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + render(message['content'] if 'content' in message else '') "
    "+ '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# --- Instruction extraction (docs/inputs.md; the authors' `extract_guided_prompt`, made order-independent) ------------
_USER_TURN = re.compile(r"<\|im_start\|>user\n?(.*?)(?:<\|im_end\|>|\Z)", re.S)
_CHAT_MARKUP = re.compile(r"<\|[^|\n]*\|>")
# Answer options start at the earliest of these (case-sensitive: they are formatting, not words). The sentences are
# the reference's option prompts, cut whole so that "Pick ... from the list of options." does not stay behind.
_OPTION_MARKERS = re.compile(
    "|".join(
        [
            re.escape(sentence)
            for sentence in (
                "Select one or more correct answers from following:",
                "Choose the corresponding category that captures this action from the offered options.",
                "Pick the most suitable category that represents the interaction from the provided options.",
                "Select the most accurate category from the available choices.",
                "Identify the most accurate action category from the provided options.",
                "Choose the appropriate action category from the listed choices.",
                "Determine the action category that aligns best with these features from the selection provided.",
                "Select the category that best characterizes this interaction from the given choices.",
                "Pick the relevant category from the list of options.",
                "Select the fitting category that describes their interaction from the available options.",
                "Determine the best-matching action category from the choices given.",
            )
        ]
        + [r"\nA\. ", r"\n\(A\)", r"\nA\)", r"Options?:", r"\nOptions", r"Choices:", r"\nChoices"]
    )
)
# A subtitles block (VideoMME and its kin put the video's subtitles before the question): from its header to the next
# answer-format hint, or to the end of the paragraph when no hint follows.
_SUBTITLES = re.compile(r"(?:these are the frames of a video\. )?this video's subtitles are listed below[^:\n]*:", re.I)
# Answer-format hints say nothing about what to look at; removed anywhere, case-insensitively.
_HINTS = re.compile(
    "|".join(
        [
            r"answer with the option(?:'|\u2019)?s letter from the given choices directly(?: and only give the best option)?\.?",
            r"answer the question using a single word or phrase\.?",
            r"please answer with a single word(?: or phrase)?\.?",
            r"(?:please )?respond with only the letter[^.\n]*\.?",
            r"please provide your answer by stating the letter followed by the full option\.?",
            r"select the best answer to the following multiple-choice question based on the video(?: and the "
            r"subtitles)?\.?",
            r"the best (?:answer|option) is:?",
        ]
    ),
    re.I,
)


def extract_instruction(prompt: str, video_token: str = VIDEO_TOKEN, image_token: str = IMAGE_TOKEN) -> str:
    """The part of a prompt that says what to look for: the question, without tags, answer options or format hints.

    This is what the authors feed the instruction encoder (the question alone, at training and evaluation time), so
    the compressed tokens keep what the question needs; options and hints would only dilute the 64-token query.

    Rules, in order: take the last user turn of a ChatML prompt (the whole text otherwise); drop chat markup and the
    video/image tags; drop a subtitles block ("This video's subtitles are listed below:" up to the next answer-format
    hint, else to the next blank line): subtitles are context, and would push the question past the 64 tokens kept;
    remove answer-format hints ("Answer the question using a single word or phrase." ...); cut at the first
    answer-option marker ("\\nA. ", "\\n(A)", "\\nA)", "Option:", "Options:", "Choices:", the reference's option
    sentences); keep what follows the last "Question:"; collapse whitespace.
    """
    turns = _USER_TURN.findall(prompt)
    text = turns[-1] if turns else prompt
    text = _CHAT_MARKUP.sub(" ", text)
    for tag in (video_token, image_token):
        text = re.sub(r"[ \t]*" + re.escape(tag) + r"[ \t]*", " ", text)
    text = re.sub(r"[ \t]*\n[ \t]*", "\n", text)
    subtitles = _SUBTITLES.search(text)
    if subtitles is not None:
        hint = _HINTS.search(text, subtitles.end())
        paragraph_end = text.find("\n\n", subtitles.end())
        end = hint.start() if hint is not None else (paragraph_end if paragraph_end >= 0 else len(text))
        text = text[: subtitles.start()] + "\n" + text[end:]
    text = _HINTS.sub(" ", text)
    marker = _OPTION_MARKERS.search(text)
    if marker is not None:
        text = text[: marker.start()]
    question = text.rsplit("Question:", 1)[-1]
    if question.strip():
        text = question
    return " ".join(text.split())


# --- Input structure -----------------------------------------------------------------------------------------------
def _is_pil(value) -> bool:
    return type(value).__module__.startswith("PIL.")


def _is_array(value) -> bool:
    return isinstance(value, (np.ndarray, torch.Tensor))


def _is_frame(value) -> bool:
    return _is_pil(value) or (_is_array(value) and value.ndim in (2, 3))


def _is_single_video(value) -> bool:
    """What `HicomVideoProcessor` reads as one video: a path, a file object, an array/tensor ((T, H, W, C) usually), a
    PIL image, or a list of frames (PIL images or (H, W[, C]) arrays)."""
    if isinstance(value, (str, os.PathLike)) or hasattr(value, "read") or _is_array(value) or _is_pil(value):
        return True
    return isinstance(value, (list, tuple)) and bool(value) and all(_is_frame(frame) for frame in value)


def _is_single_image(value) -> bool:
    """A path or URL, a PIL image, or an (H, W[, C]) array/tensor."""
    return isinstance(value, (str, os.PathLike)) or _is_frame(value)


def _flatten_visuals(value, is_single, counts: list[int], name: str) -> list:
    """One flat list, in order of appearance, from a single input, a flat list, or one list per prompt."""
    if is_single(value):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"`{name}` must be one {name[:-1]}, a list of them, or one list per prompt; got {type(value).__name__}.")
    if all(is_single(item) for item in value):
        return list(value)
    if all(isinstance(item, (list, tuple)) and all(is_single(sub) for sub in item) for item in value):
        per_prompt = [len(item) for item in value]
        if per_prompt != counts:
            raise ValueError(
                f"`{name}` is given per prompt ({per_prompt}) but the prompts have {counts} `<{name[:-1]}>` "
                f"placeholders: put one placeholder per {name[:-1]} (a `<{name[:-1]}>` typed in the text counts too)."
            )
        return [sub for item in value for sub in item]
    raise TypeError(
        f"Could not read `{name}`: expected one {name[:-1]}, a flat list, or one list per prompt. A video is a path, a "
        "file object, a (T, H, W, 3) array/tensor or a list of frames; an image is a path, a PIL image or an (H, W, 3) "
        "array/tensor."
    )


def _open_image_file(source, name: str):
    """An image file (a local path or a binary file object) as a PIL image in its own mode (16-bit kept), EXIF
    orientation applied. `name` is what the user gave, for errors."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(source) as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"`images`: could not read {name} as an image ({error}).") from error


def _count_per_row(input_ids, token_id: int) -> list[int]:
    if isinstance(input_ids, torch.Tensor):
        return (input_ids == token_id).sum(-1).reshape(-1).tolist()
    if isinstance(input_ids, np.ndarray):
        return (input_ids == token_id).sum(-1).reshape(-1).tolist()
    return [list(row).count(token_id) for row in input_ids]


# --- Token budget ---------------------------------------------------------------------------------------------------
# The model config's fields that fix how many tokens a video becomes (`num_video_tokens`'s arguments).
TOKEN_COUNT_FIELDS = ("local_temporal_kernel", "local_spatial_kernel", "num_global_queries", "use_local_level")
# Every model config field the processor needs. `HicomProcessor.from_pretrained` reads them from the model's
# `config.json`, so that a converted folder holds one copy of them.
MODEL_CONFIG_FIELDS = (*TOKEN_COUNT_FIELDS, "instruct_max_length")


def _check_num_frames(num_frames) -> int:
    if isinstance(num_frames, torch.Tensor) and num_frames.numel() == 1:
        num_frames = num_frames.item()
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
        raise ValueError(f"`num_frames` must be a positive integer, got {num_frames!r}.")
    return int(num_frames)


def num_video_tokens(num_frames, patch_grid, *, local_temporal_kernel, local_spatial_kernel, num_global_queries,
                     use_local_level) -> int:
    """LLM positions a video of `num_frames` frames becomes: the local level's windows
    `ceil(T/kt) x ceil(rows/ks) x ceil(cols/ks)` (when `use_local_level`) plus the `num_global_queries` global tokens.

    `patch_grid` is the vision tower's `(rows, cols)` of patches per frame; the other arguments are the model config's
    fields of the same names (`TOKEN_COUNT_FIELDS`). `kt` is 1 for a single frame (images), as in the model. This is
    the one place the count is computed: the processor (hence the vLLM plugin) and the benchmarks call it, and a test
    checks it against the tokens every compressor variant outputs. Released settings, 32 frames at 27x27 patches:
    8*9*9 + 32 = 680.
    """
    num_frames = _check_num_frames(num_frames)
    rows, cols = patch_grid
    if not use_local_level:
        return num_global_queries
    kt, ks = (1 if num_frames == 1 else local_temporal_kernel), local_spatial_kernel
    return math.ceil(num_frames / kt) * math.ceil(rows / ks) * math.ceil(cols / ks) + num_global_queries


# What `HicomProcessor.__call__` passes on to the LLM tokenizer (`VIDEO_KWARGS` go to the video processor).
_TOKENIZER_KWARGS = (
    "add_special_tokens",
    "truncation",
    "max_length",
    "pad_to_multiple_of",
    "padding_side",
    "return_attention_mask",
    "return_token_type_ids",
    "return_offsets_mapping",
    "return_length",
    "verbose",
)


class HicomProcessor(ProcessorMixin):
    r"""
    Builds HICom inputs: the Qwen2 prompt with expanded placeholders, the video/image pixels, and the instruction for the
    SigLIP text tower.

    Args:
        tokenizer: the LLM's tokenizer; `video_token` and `image_token` must be single (special) tokens in it.
        instruct_tokenizer: the SigLIP text tokenizer of the instruction encoder (saved in the `instruct_tokenizer/`
            subfolder).
        video_processor: a `HicomVideoProcessor` (frame sampling and SigLIP preprocessing; also used for images).
        chat_template (`str`, defaults to `HICOM_CHAT_TEMPLATE`): Qwen2.5 ChatML; video blocks render as `"<video>\n"`.
        video_token / image_token (`str`): placeholders in the prompt.
        local_temporal_kernel / local_spatial_kernel / num_global_queries / use_local_level: the compressor's
            settings, which fix the token count (`num_video_tokens`), and instruct_max_length (`int`, defaults to 64):
            the instruction length (SigLIP pools the last position, so instructions are padded to it). These are the
            model config's fields of the same names (`MODEL_CONFIG_FIELDS`): `from_pretrained` reads them from the
            model's `config.json` in the same folder, and `save_pretrained` does not copy them into the processor's.
    """

    def __init__(
        self,
        tokenizer=None,
        instruct_tokenizer=None,
        video_processor=None,
        chat_template=None,
        video_token=VIDEO_TOKEN,
        image_token=IMAGE_TOKEN,
        local_temporal_kernel=4,
        local_spatial_kernel=3,
        num_global_queries=32,
        use_local_level=True,
        instruct_max_length=64,
    ):
        for name, value, low in (("local_temporal_kernel", local_temporal_kernel, 1),
                                 ("local_spatial_kernel", local_spatial_kernel, 1),
                                 ("num_global_queries", num_global_queries, 0),
                                 ("instruct_max_length", instruct_max_length, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"`{name}` must be an integer >= {low}, got {value!r}.")
        if not isinstance(use_local_level, bool):
            raise ValueError(f"`use_local_level` must be True or False, got {use_local_level!r}.")
        self.video_token = video_token
        self.image_token = image_token
        self.local_temporal_kernel = local_temporal_kernel
        self.local_spatial_kernel = local_spatial_kernel
        self.num_global_queries = num_global_queries
        self.use_local_level = use_local_level
        self.instruct_max_length = instruct_max_length
        super().__init__(
            tokenizer, instruct_tokenizer, video_processor, chat_template=chat_template or HICOM_CHAT_TEMPLATE
        )
        for name, token in (("video_token", video_token), ("image_token", image_token)):
            if token not in tokenizer.get_vocab():
                raise ValueError(
                    f"`{name}` {token!r} is not a token of the LLM tokenizer: add it with "
                    f"`tokenizer.add_special_tokens({{'additional_special_tokens': [{token!r}]}})` (and resize the "
                    "model's embeddings), or build the processor with `HicomProcessor.from_components`."
                )

    def check_argument_for_proper_class(self, argument_name, argument):
        """transformers' check, against the same base class, for the video processor too. transformers looks
        `VideoProcessorMixin` up by name in its top-level namespace, which lacks it when torchvision is not installed
        (there is no CPU build of torchvision here), so its check would fail on any video processor."""
        if argument_name == "video_processor":
            if not isinstance(argument, VideoProcessorMixin):
                raise TypeError(f"`video_processor` must be a video processor (a HicomVideoProcessor), got "
                                f"{type(argument).__name__}.")
            return VideoProcessorMixin
        return super().check_argument_for_proper_class(argument_name, argument)

    @classmethod
    def get_processor_dict(cls, pretrained_model_name_or_path, **kwargs):
        """`ProcessorMixin.get_processor_dict`, plus the `MODEL_CONFIG_FIELDS` read from the model's `config.json`
        in the same folder (same `subfolder`, `revision`, cache and token options): the processor's token count must
        follow the model's compressor, so it reads the model's own copy instead of keeping a second one. Arguments
        given to `from_pretrained` still override them."""
        processor_dict, unused = super().get_processor_dict(pretrained_model_name_or_path, **kwargs)
        # `trust_remote_code` is for the Auto classes (it warns here); a config dict runs no code.
        hub_kwargs = {key: value for key, value in kwargs.items() if key != "trust_remote_code"}
        config, _ = PretrainedConfig.get_config_dict(pretrained_model_name_or_path, **hub_kwargs)  # {} without a file
        if not config:
            raise OSError(
                f"{str(pretrained_model_name_or_path)!r} has no model config.json: HicomProcessor reads the compressor "
                f"settings {list(MODEL_CONFIG_FIELDS)} from it. Save the model to the same folder as the processor."
            )
        missing = [name for name in MODEL_CONFIG_FIELDS if name not in config]
        if missing:
            raise ValueError(
                f"The config.json of {str(pretrained_model_name_or_path)!r} lacks {missing}: it is not a HICom model "
                "config."
            )
        return {**processor_dict, **{name: config[name] for name in MODEL_CONFIG_FIELDS}}, unused

    def to_dict(self) -> dict:
        """`ProcessorMixin.to_dict` without `MODEL_CONFIG_FIELDS`: the model's config.json holds them (see
        `get_processor_dict`)."""
        return {key: value for key, value in super().to_dict().items() if key not in MODEL_CONFIG_FIELDS}

    @property
    def video_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.video_token)

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.image_token)

    @property
    def model_input_names(self) -> list[str]:
        return [
            "input_ids",
            "attention_mask",
            "pixel_values_videos",
            "video_num_frames",
            "instruct_input_ids",
            "instruct_attention_mask",
            "pixel_values",
            "image_instruct_input_ids",
            "image_instruct_attention_mask",
        ]

    # --- token budget ----------------------------------------------------------------------------------------------
    def _patch_grid(self) -> tuple[int, int]:
        size, patch = self.video_processor.size, self.video_processor.patch_size
        return size["height"] // patch, size["width"] // patch

    def num_video_tokens(self, num_frames: int) -> int:
        """LLM positions one video of `num_frames` frames takes (the module's `num_video_tokens` with this processor's
        frame size and compressor settings)."""
        settings = {name: getattr(self, name) for name in TOKEN_COUNT_FIELDS}
        return num_video_tokens(num_frames, self._patch_grid(), **settings)

    def num_raw_tokens(self, num_frames: int) -> int:
        """SigLIP patch tokens of `num_frames` frames without compression (32 frames at 384 px: 23,328)."""
        rows, cols = self._patch_grid()
        return _check_num_frames(num_frames) * rows * cols

    # --- instructions ----------------------------------------------------------------------------------------------
    def extract_instruction(self, prompt: str) -> str:
        """The default instruction for the videos/images of `prompt` (see the module-level `extract_instruction`)."""
        return extract_instruction(prompt, self.video_token, self.image_token)

    def _resolve_instructions(self, instructions, text: list[str], kinds: list[list[str]]) -> list[str]:
        """One instruction per placeholder, in order of appearance across the prompts."""
        num_visuals = sum(len(k) for k in kinds)
        if instructions is None:
            return [self.extract_instruction(prompt) for prompt, k in zip(text, kinds) for _ in k]
        if isinstance(instructions, str):
            return [instructions] * num_visuals
        if not isinstance(instructions, (list, tuple)) or not all(isinstance(i, str) for i in instructions):
            raise TypeError("`instructions` must be a string or a list of strings.")
        if len(instructions) == num_visuals:
            return list(instructions)
        if len(instructions) == len(text):
            return [instruction for instruction, k in zip(instructions, kinds) for _ in k]
        raise ValueError(
            f"`instructions` has {len(instructions)} entries: give one per video/image placeholder ({num_visuals}) "
            f"or one per prompt ({len(text)})."
        )

    def tokenize_instructions(self, instructions: list[str], return_tensors="pt") -> BatchFeature:
        """Instruction tokens as the reference makes them: padded to `instruct_max_length`, truncated beyond it.

        An empty instruction is allowed: it tokenizes to the end-of-sequence token alone, whose embedding is a fixed,
        question-independent query, so the compression no longer depends on the question.
        """
        # Measured untruncated, silently: the tokenizer's own "longer than the maximum ... indexing errors" warning
        # would be wrong here (the instruction is truncated below, and said so once).
        lengths = [len(ids) for ids in self.instruct_tokenizer(list(instructions), verbose=False)["input_ids"]]
        if any(length > self.instruct_max_length for length in lengths):
            logger.warning_once(
                f"An instruction is longer than {self.instruct_max_length} SigLIP tokens and was truncated; pass a "
                "shorter `instructions=` to choose what conditions the compression."
            )
        return self.instruct_tokenizer(
            list(instructions),
            padding="max_length",
            truncation=True,
            max_length=self.instruct_max_length,
            return_tensors=return_tensors,
        )

    # --- main entry --------------------------------------------------------------------------------------------------
    def __call__(
        self,
        text=None,
        videos=None,
        images=None,
        instructions=None,
        padding=None,
        return_tensors="pt",
        return_metadata=False,
        **kwargs,
    ) -> BatchFeature:
        """Tokenize prompts, load and preprocess videos/images, and tokenize one instruction per video/image.

        Args:
            text: a prompt or a list of prompts, with one `<video>` (`<image>`) placeholder per video (image).
            videos: one video, a flat list (in order of appearance across prompts) or one list per prompt. A video is a
                path, a file object, a (T, H, W, 3) uint8 array/tensor or a list of frames.
            images: likewise; an image is a path/URL, a PIL image or an (H, W, 3) uint8 array/tensor.
            instructions: what conditions the compression; by default taken from each prompt's (last) user text, see
                `extract_instruction`. A string (all placeholders), one per placeholder in order of appearance, or one
                per prompt.
            padding: tokenizer padding; default `True` for several prompts. The side is `tokenizer.padding_side` (set
                it to `"left"` for batched generation).
            return_metadata: also return `video_metadata` (sampled indices, timestamps...) per video.
            kwargs: the video processor's sampling options, `num_frames`, `fps`, `start`, `end`, `max_frames`,
                `pad_to_num_frames` (see `VideoSampling`; `num_frames` and `fps` are exclusive;
                `pad_to_num_frames=False` gives a clip shorter than `num_frames` its own frames only, instead of the
                reference's black padding frames) and `do_sample_frames` (`False`: every frame, see
                `HicomVideoProcessor.resolve_sampling`); and tokenizer options (`add_special_tokens`, `truncation`,
                `max_length`, ...).

        Returns:
            `BatchFeature` with `input_ids`, `attention_mask`; with videos `pixel_values_videos` (sum T_i, 3, S, S),
            `video_num_frames` (num_videos,), `instruct_input_ids` / `instruct_attention_mask` (num_videos,
            instruct_max_length); with images `pixel_values` (num_images, 3, S, S), `image_instruct_input_ids` /
            `image_instruct_attention_mask`.
        """
        video_kwargs = {name: kwargs.pop(name) for name in VIDEO_KWARGS if name in kwargs}
        # Generic multimodal callers (lmms-eval's `huggingface` model, `apply_chat_template`) pass every modality, the
        # ones a prompt does not use as `None` or `[]`. HICom has no audio input: only actual audio is an error.
        for name in ("audio", "audios"):
            audio = kwargs.pop(name, None)
            if not (audio is None or (isinstance(audio, (list, tuple)) and not audio)):
                raise ValueError(
                    f"HICom has no audio input: `{name}` must be None or empty, got {type(audio).__name__}"
                    f"{f' of {len(audio)} items' if isinstance(audio, (list, tuple)) else ''}. A video's sound track "
                    "is ignored; pass the video alone."
                )
        unexpected = sorted(set(kwargs) - set(_TOKENIZER_KWARGS))
        if unexpected:
            raise TypeError(f"HicomProcessor got unexpected arguments: {unexpected}.")
        if text is None:
            raise ValueError("`text` is required: the prompt holds the `<video>`/`<image>` placeholders and the question.")
        if isinstance(text, str):
            text = [text]
        elif not (isinstance(text, (list, tuple)) and text and all(isinstance(t, str) for t in text)):
            raise TypeError(f"`text` must be a string or a non-empty list of strings, got {type(text).__name__}.")
        text = list(text)

        placeholder = re.compile(f"{re.escape(self.video_token)}|{re.escape(self.image_token)}")
        kinds = [["video" if m == self.video_token else "image" for m in placeholder.findall(t)] for t in text]
        video_counts = [k.count("video") for k in kinds]
        image_counts = [k.count("image") for k in kinds]
        flat_videos = self._visual_list(videos, _is_single_video, video_counts, "videos")
        flat_images = self._visual_list(images, _is_single_image, image_counts, "images")
        instruction_texts = self._resolve_instructions(instructions, text, kinds)

        data = {}
        tokens_per_visual = {"video": [], "image": []}  # LLM positions of each video / image, in order
        if flat_videos:
            video_inputs = self.video_processor(
                flat_videos, return_tensors="pt", return_metadata=return_metadata, **video_kwargs
            )
            tokens_per_visual["video"] = [self.num_video_tokens(int(n)) for n in video_inputs["video_num_frames"]]
            data["pixel_values_videos"] = video_inputs["pixel_values_videos"]
            data["video_num_frames"] = video_inputs["video_num_frames"]
            if return_metadata:
                data["video_metadata"] = video_inputs["video_metadata"]
        if flat_images:
            data["pixel_values"] = torch.cat([self._preprocess_image(image) for image in flat_images])
            tokens_per_visual["image"] = [self.num_video_tokens(1)] * len(flat_images)

        flat_kinds = [kind for row in kinds for kind in row]
        for kind, prefix in (("video", ""), ("image", "image_")):
            selected = [instruction for instruction, k in zip(instruction_texts, flat_kinds) if k == kind]
            if selected:
                tokens = self.tokenize_instructions(selected, return_tensors)
                data[f"{prefix}instruct_input_ids"] = tokens["input_ids"]
                data[f"{prefix}instruct_attention_mask"] = tokens["attention_mask"]

        counts = {kind: iter(values) for kind, values in tokens_per_visual.items()}
        expected = {"video": [0] * len(text), "image": [0] * len(text)}
        expanded = []
        for row, prompt in enumerate(text):

            def expand(match, row=row):
                kind = "video" if match.group() == self.video_token else "image"
                count = next(counts[kind])
                expected[kind][row] += count
                return match.group() * count

            expanded.append(placeholder.sub(expand, prompt))
        if padding is None:
            padding = len(text) > 1
        text_inputs = self.tokenizer(expanded, padding=padding, return_tensors=return_tensors, **kwargs)
        for kind, token_id in (("video", self.video_token_id), ("image", self.image_token_id)):
            found = _count_per_row(text_inputs["input_ids"], token_id)
            if found != expected[kind]:
                # Truncation, or a placeholder that is not a single token, would misalign the visual tokens.
                raise ValueError(
                    f"Expected {expected[kind]} {kind} tokens per prompt after expansion, the tokenizer produced "
                    f"{found}: do not truncate prompts with visual inputs, and keep `{kind}_token` a special token."
                )
        return BatchFeature({**text_inputs, **data}, tensor_type=return_tensors, skip_tensor_conversion=["video_metadata"])

    def _preprocess_image(self, image) -> torch.Tensor:
        """An image is a one-frame video: `(1, 3, S, S)`.

        Paths and URLs (`file://`, `data:`, http(s), see `open_source`) are opened with PIL in the image's own mode, so
        that the video processor's pixel rules apply: a 16-bit PNG is scaled to 8 bits (transformers' `load_image`
        converts to RGB first, which clips 16-bit values to 255), alpha is dropped.
        """
        if isinstance(image, (str, os.PathLike)):
            from .video_processing_hicom import describe, open_source

            image = _open_image_file(open_source(image, "images", "an image"), describe(os.fspath(image)))
        pixels = self.video_processor.preprocess_frames(image)
        if pixels.shape[0] != 1:
            raise ValueError(f"An image must be one (H, W[, C]) frame, got {tuple(image.shape)}.")
        return pixels

    @staticmethod
    def _visual_list(value, is_single, counts: list[int], name: str) -> list:
        kind = name[:-1]
        if value is None:
            if sum(counts):
                raise ValueError(f"The prompts have {sum(counts)} `<{kind}>` placeholders but no `{name}` were given.")
            return []
        flat = _flatten_visuals(value, is_single, counts, name)
        if len(flat) != sum(counts):
            raise ValueError(
                f"The prompts have {sum(counts)} {kind} placeholders but {len(flat)} {name} were given: put one "
                f"placeholder in the text per {kind} (a `<{kind}>` typed in the text counts too)."
            )
        return flat

    # --- chat ----------------------------------------------------------------------------------------------------------
    def apply_chat_template(self, conversation, chat_template=None, processor_kwargs=None, **kwargs):
        """`ProcessorMixin.apply_chat_template`, also taking this processor's own call arguments (`instructions` and
        the video arguments of `__call__`) directly, as `apply_chat_template(messages, num_frames=8)`: transformers
        wants them in `processor_kwargs` and would otherwise warn.

        Video blocks may name the video with `path`, `url` (a path or a `file://`, `data:` or http(s) URL) or `video`
        (also an array or frames), image blocks likewise (`image`, `url`, `path`, `base64`); with `tokenize=True` they
        are loaded by this processor, videos sampled with `num_frames`/`fps`.
        """
        processor_kwargs = dict(processor_kwargs or {})
        for name in (*VIDEO_KWARGS, "instructions"):
            if name in kwargs:
                processor_kwargs[name] = kwargs.pop(name)
        return super().apply_chat_template(
            conversation, chat_template=chat_template, processor_kwargs=processor_kwargs, **kwargs
        )

    # --- construction ----------------------------------------------------------------------------------------------
    @classmethod
    def from_components(
        cls,
        tokenizer,
        instruct_tokenizer_path=None,
        *,
        instruct_tokenizer=None,
        config=None,
        num_frames=32,
        video_processor=None,
        chat_template=None,
    ) -> "HicomProcessor":
        """Assemble a processor from an LLM tokenizer and a SigLIP folder (what the converter does).

        Args:
            tokenizer: the LLM tokenizer or its folder. `<video>`/`<image>` are added as special tokens when missing; with
                `config`, their ids must equal `config.video_token_id` / `config.image_token_id`.
            instruct_tokenizer_path: the SigLIP folder (tokenizer files; its `config.json` and `preprocessor_config.json`
                give the frame size and normalization when present). Or pass `instruct_tokenizer=`.
            config: a `HicomConfig`; its compressor fields, instruction length and vision image/patch size are used.
            num_frames: default frames per video of the video processor.
            video_processor: use this instead of building a `HicomVideoProcessor`.
        """
        if (instruct_tokenizer is None) == (instruct_tokenizer_path is None):
            raise ValueError("Give exactly one of `instruct_tokenizer_path` and `instruct_tokenizer`.")
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        missing = [token for token in (VIDEO_TOKEN, IMAGE_TOKEN) if token not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        if config is not None:
            for token, expected in ((VIDEO_TOKEN, config.video_token_id), (IMAGE_TOKEN, config.image_token_id)):
                if tokenizer.convert_tokens_to_ids(token) != expected:
                    raise ValueError(
                        f"{token} has id {tokenizer.convert_tokens_to_ids(token)} in the tokenizer but "
                        f"{expected} in the model config."
                    )

        siglip = {}
        if instruct_tokenizer is None:
            folder = Path(instruct_tokenizer_path)
            # Without `config`, transformers builds the folder's SigLIP config to find the tokenizer class, and that
            # config's CLIP-era bos/eos defaults fail its vocabulary check with two warnings on every conversion.
            instruct_tokenizer = AutoTokenizer.from_pretrained(
                folder, config=SiglipTextConfig(bos_token_id=None, eos_token_id=1, pad_token_id=1)
            )
            for name in ("config.json", "preprocessor_config.json"):
                if (folder / name).is_file():
                    siglip[name] = json.loads((folder / name).read_text())

        if video_processor is None:
            from .video_processing_hicom import HicomVideoProcessor

            vision = siglip.get("config.json", {}).get("vision_config", {})
            image_size = config.vision_config.image_size if config is not None else vision.get("image_size", 384)
            patch_size = config.vision_config.patch_size if config is not None else vision.get("patch_size", 14)
            normalization = {
                key: siglip["preprocessor_config.json"][key]
                for key in ("image_mean", "image_std")
                if key in siglip.get("preprocessor_config.json", {})
            }
            video_processor = HicomVideoProcessor(
                size={"height": image_size, "width": image_size},
                patch_size=patch_size,
                num_frames=num_frames,
                **normalization,
            )

        settings = {name: getattr(config, name) for name in MODEL_CONFIG_FIELDS} if config is not None else {}
        return cls(tokenizer, instruct_tokenizer, video_processor, chat_template=chat_template, **settings)


HicomProcessor.register_for_auto_class("AutoProcessor")
# Loading the processor (from this package or as a folder's remote code) makes the pipeline task available, so that a
# model object loaded by the user can be wrapped with `pipeline("video-text-to-text", model=model, processor=processor)`.
register_pipeline()

__all__ = ["HICOM_CHAT_TEMPLATE", "MODEL_CONFIG_FIELDS", "TOKEN_COUNT_FIELDS", "HicomProcessor", "extract_instruction",
           "num_video_tokens"]
