"""`pipeline("video-text-to-text")`: transformers 5.x has no such task, so HICom ships one.

It mirrors `image-text-to-text`: chat messages with `{"type": "video", "path": ...}` blocks, or `videos=` + `text=`;
output `[{"input_text": ..., "generated_text": ...}]`. A list of inputs is processed `batch_size` examples per
`generate()` call, left-padded, so that batching changes speed and not answers.
"""

import enum
from itertools import islice

from transformers import AutoModelForImageTextToText, GenerationConfig, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import logging

logger = logging.get_logger(__name__)

TASK = "video-text-to-text"


class ReturnType(enum.Enum):
    TENSORS = 0
    NEW_TEXT = 1
    FULL_TEXT = 2


def _is_chat(value) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


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
    _pipeline_calls_generate = True
    _default_generation_config = GenerationConfig(max_new_tokens=256)

    def _sanitize_parameters(
        self,
        max_new_tokens=None,
        generate_kwargs=None,
        return_full_text=None,
        return_tensors=None,
        num_frames=None,
        fps=None,
        instructions=None,
        skip_special_tokens=None,
        **kwargs,
    ):
        preprocess_params = {k: v for k, v in (("num_frames", num_frames), ("fps", fps)) if v is not None}
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

    def __call__(self, text=None, videos=None, **kwargs):
        """Generate answers for one example or a list of them.

        Args:
            text: a prompt string (with or without a `<video>` tag: one is prepended per video when missing), a chat
                (list of `{"role", "content"}` messages whose content holds `{"type": "video", "path": ...}` blocks),
                or a list of prompts / chats.
            videos: with string prompts, one video per prompt (path, file object or `(T, H, W, 3)` uint8 array), or a
                list of videos per prompt.
            num_frames / fps: frame sampling, passed to the processor.
            max_new_tokens, generate_kwargs: passed to `generate()`.
            return_full_text: `False` returns only the answer; default `True` (prompt + answer), like
                `image-text-to-text`.
            batch_size: examples per `generate()` call when a list is given.
        Returns:
            For one example, a list `[{"input_text", "generated_text"}]`; for a list, one such list per example.
        """
        if text is None:
            raise ValueError(f"The {TASK} pipeline needs `text`: a prompt or chat messages.")
        if _is_chat(text):
            if videos is not None:
                raise ValueError("With chat messages, put the videos inside the messages, not in `videos=`.")
            return super().__call__({"chat": list(text)}, **kwargs)
        if isinstance(text, (list, tuple)) and text and all(_is_chat(chat) for chat in text):
            if videos is not None:
                raise ValueError("With chat messages, put the videos inside the messages, not in `videos=`.")
            return super().__call__([{"chat": list(chat)} for chat in text], **kwargs)
        if isinstance(text, str):
            return super().__call__({"text": text, "videos": videos}, **kwargs)
        if isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
            if not isinstance(videos, (list, tuple)) or len(videos) != len(text):
                raise ValueError(f"Give one video (or list of videos) per prompt: {len(text)} prompts.")
            return super().__call__([{"text": t, "videos": v} for t, v in zip(text, videos)], **kwargs)
        raise TypeError(f"`text` must be a string, a chat, or a list of them; got {type(text).__name__}.")

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params):
        """Run `batch_size` examples per preprocess/generate call (transformers' collate cannot stack videos)."""
        iterator = iter(inputs)
        while batch := list(islice(iterator, batch_size)):
            outputs = self.forward(self.preprocess(batch, **preprocess_params), **forward_params)
            yield from self.postprocess(outputs, batched=True, **postprocess_params)

    def preprocess(self, inputs, **processor_kwargs):
        examples = inputs if isinstance(inputs, list) else [inputs]
        prompts, videos = [], []
        for example in examples:
            if "chat" in example:
                prompt, example_videos = self._render_chat(example["chat"])
            else:
                prompt, example_videos = self._render_text(example["text"], example["videos"])
            prompts.append(prompt)
            videos.extend(example_videos)
        self.processor.tokenizer.padding_side = "left"
        model_inputs = self.processor(
            text=prompts, videos=videos or None, padding=True, return_tensors="pt", **processor_kwargs
        )
        model_inputs = model_inputs.to(self.device)
        if self.dtype is not None:
            for key in ("pixel_values_videos", "pixel_values"):
                if key in model_inputs:
                    model_inputs[key] = model_inputs[key].to(self.dtype)
        return {"model_inputs": model_inputs, "input_text": [e.get("chat", e.get("text")) for e in examples]}

    def _render_chat(self, messages):
        prompt = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        videos = [
            block.get("path") or block.get("url") or block.get("video")
            for message in messages
            if isinstance(message.get("content"), list)
            for block in message["content"]
            if block.get("type") == "video"
        ]
        return prompt, videos

    def _render_text(self, text, videos):
        videos = [] if videos is None else list(videos) if isinstance(videos, (list, tuple)) else [videos]
        tag = self.processor.video_token
        if text.count(tag) != len(videos):
            if tag in text:
                raise ValueError(f"The prompt has {text.count(tag)} `{tag}` tags for {len(videos)} videos.")
            text = "".join(f"{tag}\n" for _ in videos) + text
        return self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": text}]}], tokenize=False, add_generation_prompt=True
        ), videos

    def _forward(self, inputs, generate_kwargs=None):
        model_inputs = inputs["model_inputs"]
        generate_kwargs = dict(generate_kwargs or {})
        if "generation_config" not in generate_kwargs and self.model.generation_config.pad_token_id is None:
            generate_kwargs.setdefault("pad_token_id", self.processor.tokenizer.pad_token_id)
        # The pipeline's defaults (max_new_tokens=256) under the user's and the model's generation settings.
        generate_kwargs = self._prepare_generate_kwargs(generate_kwargs, return_dict_in_generate=False)
        sequences = self.model.generate(**model_inputs, **generate_kwargs)
        return {"sequences": sequences, "input_ids": model_inputs["input_ids"], "input_text": inputs["input_text"]}

    def postprocess(self, outputs, return_type=ReturnType.FULL_TEXT, skip_special_tokens=True, batched=False):
        prompt_length = outputs["input_ids"].shape[1]
        results = []
        for sequence, input_text in zip(outputs["sequences"], outputs["input_text"]):
            if return_type == ReturnType.TENSORS:
                results.append([{"input_text": input_text, "generated_token_ids": sequence[prompt_length:]}])
                continue
            answer = self.processor.decode(sequence[prompt_length:], skip_special_tokens=skip_special_tokens)
            if return_type == ReturnType.FULL_TEXT:
                if isinstance(input_text, list):
                    answer = input_text + [{"role": "assistant", "content": answer}]
                else:
                    answer = input_text + answer
            results.append([{"input_text": input_text, "generated_text": answer}])
        return results if batched else results[0]


def register_pipeline():
    """Make `pipeline("video-text-to-text", model=...)` work in this process (remote code does it via the config)."""
    PIPELINE_REGISTRY.register_pipeline(
        TASK, pipeline_class=VideoTextToTextPipeline, pt_model=AutoModelForImageTextToText, type="multimodal"
    )


__all__ = ["VideoTextToTextPipeline", "register_pipeline", "TASK"]
