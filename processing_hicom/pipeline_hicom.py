"""`pipeline("video-text-to-text")`: transformers 5.x has no such task, so HICom ships one.

It mirrors `image-text-to-text`: chat messages with `{"type": "video", "path": ...}` (and `"image"`) blocks, or
`videos=` / `images=` + `text=`; output `[{"input_text": ..., "generated_text": ...}]`. A list, a torch `Dataset` or a
generator of inputs is processed `batch_size` examples per `generate()` call, left-padded, so that batching changes
speed and not answers; with `num_workers`, torch `DataLoader` workers prepare the next videos while the model runs
(docs/throughput.md). Long decodes and generations show progress bars on a terminal (`progress_bar`).
"""

import enum
import itertools
from collections.abc import Iterable, Sized

import torch
from torch.utils.data import Dataset, IterableDataset
from transformers import AutoModelForImageTextToText, BatchFeature, GenerationConfig, Pipeline
from transformers.generation import BaseStreamer
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.pipelines.pt_utils import PipelineDataset
from transformers.utils import ModelOutput, logging

from .video_processing_hicom import VIDEO_KWARGS, progress_bar

logger = logging.get_logger(__name__)

TASK = "video-text-to-text"
DEFAULT_MAX_NEW_TOKENS = 256


class ReturnType(enum.Enum):
    TENSORS = 0
    NEW_TEXT = 1
    FULL_TEXT = 2


# Keys naming a chat block's visual, in transformers' `apply_chat_template` order.
_BLOCK_KEYS = {"video": ("video", "url", "path"), "image": ("image", "url", "path", "base64")}


def _is_chat(value) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def _as_example(item) -> dict:
    """One item of a list, dataset or generator of inputs: a chat, or a `{"text": ..., "videos": ..., "images": ...}`
    dict."""
    if _is_chat(item):
        return {"chat": list(item)}
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        return {"text": item["text"], "videos": item.get("videos"), "images": item.get("images")}
    got = f"a dict with keys {sorted(item)}" if isinstance(item, dict) else type(item).__name__
    raise TypeError(
        f"Each input of the {TASK} pipeline must be a chat (list of messages) or a dict with a string `text` and "
        f"optional `videos` / `images`; got {got}."
    )


def _input_text(example: dict):
    """What the results echo as `input_text`: the chat, or the prompt string."""
    return example.get("chat", example.get("text"))


class _Batches(Dataset):
    """Consecutive `size`-example slices of a list or `Dataset` of examples, read lazily (in the workers)."""

    def __init__(self, examples, size: int):
        self.examples, self.size = examples, size

    def __len__(self):
        return -(-len(self.examples) // self.size)

    def __getitem__(self, index):
        return [self.examples[i] for i in range(index * self.size, min((index + 1) * self.size, len(self.examples)))]


def _batched(items: Iterable, size: int):
    """Consecutive `size`-item lists of an iterable, pulled as they are needed (a generator, which `Pipeline` streams
    through one worker)."""
    items = iter(items)
    while batch := list(itertools.islice(items, size)):
        yield batch


# What makes one example's inputs unusable: the processor reports unreadable or malformed videos and prompts with these
# (FileNotFoundError is an OSError). Anything else is a fault of the run, not of one example, and is raised.
_INPUT_ERRORS = (ValueError, TypeError, OSError)


class VideoTextToTextPipeline(Pipeline):
    """Answers questions about videos with a HICom model.

    ```python
    >>> from transformers import pipeline
    >>> pipe = pipeline("video-text-to-text", model="path/to/hicom-7b-hf", trust_remote_code=True)
    >>> messages = [{"role": "user", "content": [{"type": "video", "path": "clip.mp4"},
    ...                                          {"type": "text", "text": "What happens in the video?"}]}]
    >>> pipe(text=messages, max_new_tokens=64, return_full_text=False)
    [{'input_text': [...], 'generated_text': '...'}]
    >>> pipe(videos="clip.mp4", text="What happens in the video?", num_frames=16)
    ```
    """

    _load_processor = True
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, *args, batch_size=None, **kwargs):
        # The pipeline's own default `batch_size` (`pipeline(..., batch_size=8)`): batches are formed here, not by
        # `Pipeline`'s `DataLoader` (see `_run_many`).
        super().__init__(*args, **kwargs)
        self.batch_size = batch_size

    def _sanitize_parameters(
        self,
        max_new_tokens=None,
        generate_kwargs=None,
        return_full_text=None,
        return_tensors=None,
        instructions=None,
        skip_special_tokens=None,
        **kwargs,
    ):
        # Frame sampling (`num_frames`, `fps`, `start`, `end`, `max_frames`, `pad_to_num_frames`, `do_sample_frames`)
        # goes to the processor, which validates it.
        preprocess_params = {key: kwargs.pop(key) for key in VIDEO_KWARGS if kwargs.get(key) is not None}
        if instructions is not None:
            preprocess_params["instructions"] = instructions
        generate_kwargs = dict(generate_kwargs or {})
        # Generation parameters (`do_sample=True`, `temperature=...`, a `streamer`) may be given directly, as with
        # transformers' text pipelines; anything else is a typo worth reporting.
        generation_keys = {key for key in vars(GenerationConfig()) if not key.startswith("_")} | {"streamer"}
        for key in generation_keys & kwargs.keys():
            generate_kwargs[key] = kwargs.pop(key)
        if kwargs:
            raise TypeError(f"Unexpected arguments for the {TASK} pipeline: {sorted(kwargs)}.")
        forward_params = {"generate_kwargs": generate_kwargs}
        if max_new_tokens is not None:
            if "max_new_tokens" in forward_params["generate_kwargs"]:
                raise ValueError("`max_new_tokens` is given twice: directly and in `generate_kwargs`.")
            forward_params["generate_kwargs"]["max_new_tokens"] = max_new_tokens
        postprocess_params = {}
        if return_tensors and return_full_text is not None:
            raise ValueError("`return_full_text` and `return_tensors` are mutually exclusive.")
        if return_tensors:
            postprocess_params["return_type"] = ReturnType.TENSORS
        elif return_full_text is not None:
            postprocess_params["return_type"] = ReturnType.FULL_TEXT if return_full_text else ReturnType.NEW_TEXT
        if skip_special_tokens is not None:
            postprocess_params["skip_special_tokens"] = skip_special_tokens
        return preprocess_params, forward_params, postprocess_params

    def __call__(self, text=None, videos=None, images=None, **kwargs):
        """Generate answers for one example or a list of them.

        Args:
            text: a prompt string (with or without `<video>`/`<image>` tags: one is prepended per video/image when
                missing), a chat (list of `{"role", "content"}` messages whose content holds `{"type": "video",
                "path": ...}` / `{"type": "image", "path": ...}` blocks), a list of prompts / chats, or a list, torch
                `Dataset` (e.g. `KeyDataset`) or generator of chats / `{"text": prompt, "videos": ..., "images": ...}`
                dicts.
            videos: with string prompts, one video per prompt (path, URL, file object or `(T, H, W, 3)` uint8 array),
                or a list of videos per prompt.
            images: likewise, one image per prompt (path, URL, PIL image or `(H, W, 3)` array) or a list per prompt.
            num_frames / fps / start / end / max_frames / pad_to_num_frames / do_sample_frames: frame selection,
                passed to the processor (docs/inputs.md).
            max_new_tokens, generate_kwargs: passed to `generate()`.
            return_full_text: `False` returns only the answer; default `True` (prompt + answer), like
                `image-text-to-text`.
            batch_size: examples per `generate()` call when several are given.
            num_workers: `DataLoader` worker processes that decode and preprocess the next examples while the model
                runs (default 0: on the calling thread). At most `2 * num_workers` batches are prepared ahead. A
                generator is read by one worker (more would each replay it); a list or `Dataset` uses them all.
        Returns:
            For one example, a list `[{"input_text", "generated_text"}]`; for a list, one such list per example, in
            order; for a `Dataset` or generator, an iterator over them. With several examples, one whose video or
            prompt cannot be prepared gives `[{"input_text", "error"}]` (the processor's message) in its place and
            the others still run; a single example raises instead.
        """
        if text is None:
            raise ValueError(f"The {TASK} pipeline needs `text`: a prompt or chat messages.")
        if isinstance(text, str):
            return super().__call__({"text": text, "videos": videos, "images": images}, **kwargs)
        if isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
            per_prompt = {}
            for name, value in (("videos", videos), ("images", images)):
                if value is None:
                    per_prompt[name] = [None] * len(text)
                elif isinstance(value, (list, tuple)) and len(value) == len(text):
                    per_prompt[name] = list(value)
                else:
                    raise ValueError(f"Give one {name[:-1]} (or list of {name}) per prompt in `{name}`: "
                                     f"{len(text)} prompts.")
            return self._run_many(
                [{"text": t, "videos": v, "images": i} for t, v, i in zip(text, per_prompt["videos"],
                                                                           per_prompt["images"])],
                kwargs,
            )
        if videos is not None or images is not None:
            raise ValueError(
                "With chat messages, or a list, dataset or generator of inputs, put the videos and images inside the "
                "messages (or each input), not in `videos=` / `images=`."
            )
        if _is_chat(text):
            return super().__call__({"chat": list(text)}, **kwargs)
        if isinstance(text, (list, tuple)):
            return self._run_many([_as_example(item) for item in text], kwargs)
        if isinstance(text, Dataset) and not isinstance(text, IterableDataset):
            # Mapped lazily, item by item (in the workers): a large dataset is never materialized.
            return self._run_many(PipelineDataset(text, _as_example, {}), kwargs)
        if isinstance(text, Iterable) and not isinstance(text, dict):
            return self._run_many((_as_example(item) for item in text), kwargs)
        raise TypeError(
            f"`text` must be a string, a chat, or a list, dataset or generator of them; got {type(text).__name__}."
        )

    def _run_many(self, examples, kwargs):
        """Answer a list, `Dataset` or generator of examples, `batch_size` per `generate()` call, in input order.

        `Pipeline.__call__` is given whole batches (lists of examples) one at a time (its own `batch_size=1`), so that
        `preprocess` merges each batch (see `_merge`) and `Pipeline.get_iterator` runs as it is: a `PipelineDataset` or
        `PipelineIterator` (generators: one worker) feeding a `DataLoader`, whose bounded prefetch limits how many
        prepared videos are held, whatever the number of inputs. Its own batching cannot be used: its collate
        function pads with the tokenizer's side and would merge frames of different videos as if they were images.
        """
        size = kwargs.pop("batch_size", None) or self.batch_size or 1
        if isinstance(examples, Sized):
            batches = _Batches(examples, size)
        else:
            batches = _batched(examples, size)
        results = self._unbatch(super().__call__(batches, batch_size=1, **kwargs))
        return list(results) if isinstance(examples, list) else results

    @staticmethod
    def _unbatch(batches):
        """One result per example, from each batch's list of results; examples that could not be prepared are
        logged by their position."""
        position = 0
        for results in batches:
            for result in results:
                if "error" in result[0]:
                    logger.warning(f"{TASK}: input {position} was skipped: {result[0]['error']}")
                yield result
                position += 1

    def preprocess(self, inputs, **processor_kwargs):
        """One example (raises if it cannot be prepared), or a batch of them from `_run_many` (a list): there an
        example whose video or prompt cannot be prepared gets its error result in its place, and the others run."""
        if not isinstance(inputs, list):
            return self._prepare(inputs, **processor_kwargs)
        prepared = []
        for example in inputs:
            try:
                prepared.append(self._prepare(example, **processor_kwargs))
            except _INPUT_ERRORS as error:
                # A string, not the exception: it crosses from the worker process, and chained causes do not pickle.
                prepared.append({"failure": [{"input_text": _input_text(example),
                                              "error": f"{type(error).__name__}: {error}"}]})
        return self._merge(prepared)

    def _merge(self, prepared: list[dict]) -> dict:
        """Merge prepared examples into one batch equal to the processor's output for their prompts together.

        Runs where `preprocess` runs (a `DataLoader` worker), so the main process only moves tensors to the model.
        Prompts are left-padded for batched generation by this call's `padding_side` (the user's tokenizer keeps its
        own); the other tensors are per video or per instruction and are concatenated in example order, as the
        processor orders them. `failures` has one entry per example: its error result, or `None`.
        """
        ready = [item for item in prepared if "failure" not in item]
        batch = {"failures": [item.get("failure") for item in prepared], "input_text": []}
        if not ready:
            return batch
        inputs = [item["model_inputs"] for item in ready]
        text_keys = ("input_ids", "attention_mask")
        merged = self.processor.tokenizer.pad(
            {key: [row for item in inputs for row in item[key].tolist()] for key in text_keys},
            padding=True,
            padding_side="left",
            return_tensors="pt",
        )
        for key in dict.fromkeys(key for item in inputs for key in item if key not in text_keys):
            merged[key] = torch.cat([item[key] for item in inputs if key in item])
        batch["model_inputs"] = BatchFeature(dict(merged))
        batch["input_text"] = [text for item in ready for text in item["input_text"]]
        return batch

    def _prepare(self, example, **processor_kwargs):
        """The processor's inputs for one example (a chat or a prompt with its videos and images)."""
        if "chat" in example:
            prompt, visuals = self._render_chat(example["chat"])
        else:
            prompt, visuals = self._render_text(example["text"], example.get("videos"), example.get("images"))
        model_inputs = self.processor(
            text=prompt, videos=visuals["video"] or None, images=visuals["image"] or None, return_tensors="pt",
            **processor_kwargs,
        )
        # No `.to(self.device)`: this may run in a DataLoader worker, which must not touch the GPU; `Pipeline.forward`
        # moves the inputs.
        if self.dtype is not None:
            for key in ("pixel_values_videos", "pixel_values"):
                if key in model_inputs:
                    model_inputs[key] = model_inputs[key].to(self.dtype)
        return {"model_inputs": model_inputs, "input_text": [_input_text(example)]}

    def _render_chat(self, messages):
        """The prompt and the chat's videos and images, in order, named by the same block keys transformers'
        `apply_chat_template` reads (OpenAI-style `image_url` blocks included, which it renders as images)."""
        prompt = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        visuals = {"video": [], "image": []}
        for message in messages:
            if not isinstance(message.get("content"), list):
                continue
            for block in message["content"]:
                kind = block.get("type")
                if kind == "image_url":
                    url = block.get("image_url")
                    visuals["image"].append(url.get("url") if isinstance(url, dict) else url)
                elif kind in _BLOCK_KEYS:
                    found = [block[key] for key in _BLOCK_KEYS[kind] if block.get(key) is not None]
                    if len(found) != 1:
                        raise ValueError(f"A `{kind}` block needs exactly one of the keys {list(_BLOCK_KEYS[kind])} "
                                         f"(found {len(found)}).")
                    visuals[kind].append(found[0])
        return prompt, visuals

    def _render_text(self, text, videos, images):
        """The chat prompt of a plain question, with one tag per video/image prepended when the text has none."""
        visuals = {}
        for kind, value in (("video", videos), ("image", images)):
            visuals[kind] = [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]
        prefix = ""
        for kind, tag in (("image", self.processor.image_token), ("video", self.processor.video_token)):
            if text.count(tag) != len(visuals[kind]):
                if tag in text:
                    raise ValueError(f"The prompt has {text.count(tag)} `{tag}` tags for {len(visuals[kind])} "
                                     f"{kind}s.")
                prefix += f"{tag}\n" * len(visuals[kind])
        return self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": prefix + text}]}], tokenize=False,
            add_generation_prompt=True,
        ), visuals

    def _forward(self, inputs, generate_kwargs=None):
        failures = {"failures": inputs["failures"]} if "failures" in inputs else {}
        if "model_inputs" not in inputs:  # a batch none of whose examples could be prepared
            return failures
        model_inputs = inputs["model_inputs"]
        generate_kwargs = dict(generate_kwargs or {})
        if "generation_config" not in generate_kwargs and self.model.generation_config.pad_token_id is None:
            generate_kwargs.setdefault("pad_token_id", self.processor.tokenizer.pad_token_id)
        # An answer length where neither the call nor the generation config sets one: `generate()`'s own default
        # (`max_length=20`, prompt included) would cut every answer about a video to nothing.
        config = generate_kwargs.get("generation_config") or self.model.generation_config
        if config.max_new_tokens is None and not {"max_new_tokens", "max_length"} & generate_kwargs.keys():
            generate_kwargs["max_new_tokens"] = DEFAULT_MAX_NEW_TOKENS
        progress = self._generation_progress(generate_kwargs)
        if progress is not None:
            generate_kwargs["streamer"] = progress
        try:
            generated = self.model.generate(**model_inputs, **generate_kwargs)
        finally:
            if progress is not None:
                progress.end()
        # A generation config with `return_dict_in_generate=True` makes `generate()` return an output object.
        sequences = generated.sequences if isinstance(generated, ModelOutput) else generated
        return {"sequences": sequences, "input_ids": model_inputs["input_ids"], "input_text": inputs["input_text"],
                **failures}

    def _generation_progress(self, generate_kwargs) -> "_TokenProgress | None":
        """A progress bar over the generated tokens (see `progress_bar`: only on a terminal, after a second), fed as
        `generate()`'s streamer. None when the user passes a streamer (`generate()` takes one) or uses beam search
        (`generate()` refuses streamers there), or when the bar is off."""
        config = generate_kwargs.get("generation_config") or self.model.generation_config
        num_beams = generate_kwargs.get("num_beams", config.num_beams) or 1
        if "streamer" in generate_kwargs or num_beams > 1:
            return None
        bar = progress_bar(generate_kwargs.get("max_new_tokens", config.max_new_tokens), "Generating", "token")
        if isinstance(bar, logging.EmptyTqdm) or bar.disable:  # transformers' bars disabled, or not a terminal
            bar.close()
            return None
        return _TokenProgress(bar)

    def postprocess(self, outputs, return_type=ReturnType.FULL_TEXT, skip_special_tokens=True):
        """One example's result, or a batch's results in example order, error results in their places."""
        answers = iter(self._answers(outputs, return_type, skip_special_tokens) if "sequences" in outputs else ())
        if "failures" not in outputs:
            return next(answers)
        return [failure if failure is not None else next(answers) for failure in outputs["failures"]]

    def _answers(self, outputs, return_type, skip_special_tokens):
        prompt_length = outputs["input_ids"].shape[1]
        for sequence, input_text in zip(outputs["sequences"], outputs["input_text"]):
            if return_type == ReturnType.TENSORS:
                yield [{"input_text": input_text, "generated_token_ids": sequence[prompt_length:]}]
                continue
            answer = self.processor.decode(sequence[prompt_length:], skip_special_tokens=skip_special_tokens)
            if return_type == ReturnType.FULL_TEXT:
                if isinstance(input_text, list):
                    answer = input_text + [{"role": "assistant", "content": answer}]
                else:
                    answer = input_text + answer
            yield [{"input_text": input_text, "generated_text": answer}]


class _TokenProgress(BaseStreamer):
    """Advances a progress bar once per generation step. `generate()` first `put`s the prompt, which is not counted."""

    def __init__(self, bar):
        self.bar, self.prompt_seen = bar, False

    def put(self, value):
        if self.prompt_seen:
            self.bar.update(1)
        self.prompt_seen = True

    def end(self):
        self.bar.close()


def register_pipeline():
    """Make `pipeline("video-text-to-text", ...)` resolve to this module's pipeline class in this process.

    Called when this package is imported and when a folder's remote-code processor is loaded (`processing_hicom`
    imports this module), so that `pipeline(TASK, model=<model object>, processor=<processor>)` works in a process
    that only has the converted folder: transformers reads `custom_pipelines` only when `model` is a path, and has no
    `video-text-to-text` task of its own. Registering the same class again is skipped (transformers warns on every
    overwrite).
    """
    registered = PIPELINE_REGISTRY.supported_tasks.get(TASK, {}).get("impl")
    if registered is not VideoTextToTextPipeline:
        PIPELINE_REGISTRY.register_pipeline(
            TASK, pipeline_class=VideoTextToTextPipeline, pt_model=AutoModelForImageTextToText, type="multimodal"
        )


__all__ = ["VideoTextToTextPipeline", "register_pipeline", "TASK"]
