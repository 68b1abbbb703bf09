"""vLLM multimodal processor for HICom: pixels, the instruction, and the video placeholder's token count.

The instruction (what HICom's compression is conditioned on) is taken from the request's prompt exactly as
`HicomProcessor` takes it (`extract_instruction` of the last user turn), unless the request gives
`mm_processor_kwargs={"instructions": "..."}`. Either way it is put into the processor kwargs *before* vLLM hashes the
video, so the instruction is part of the key of vLLM's processor cache, encoder cache and prefix cache: two questions
about one video never share visual tokens; the same question on the same video reuses them. See docs/vllm.md.
"""

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from transformers import BatchFeature
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    ProcessorInputs,
    PromptReplacement,
)

from modeling_hicom import HicomConfig
from processing_hicom import HicomProcessor

from .video import VIDEO_BACKEND

INSTRUCTIONS = "instructions"  # the `mm_processor_kwargs` key, named as `HicomProcessor`'s argument
DUMMY_NUM_FRAMES = 32  # frames of the profiling video: the released setting, the largest a request is expected to use


class HicomProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> HicomConfig:
        return self.ctx.get_hf_config(HicomConfig)

    def get_hf_processor(self, **kwargs) -> HicomProcessor:
        return self.ctx.get_hf_processor(HicomProcessor, **kwargs)

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"video": None}

    def get_data_parser(self) -> MultiModalDataParser:
        # The loader's metadata says how many padding frames to append, as `HicomVideoProcessor` does.
        return MultiModalDataParser(video_needs_metadata=True, expected_hidden_size=self._get_expected_hidden_size())

    def get_num_video_tokens(self, num_frames: int) -> int:
        return self.get_hf_processor().num_video_tokens(num_frames)

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        return {"video": self.get_num_video_tokens(DUMMY_NUM_FRAMES)}


class HicomDummyInputsBuilder(BaseDummyInputsBuilder[HicomProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return self.info.get_hf_processor().video_token * mm_counts.get("video", 0)

    def get_dummy_mm_data(self, seq_len, mm_counts, mm_options=None):
        size = self.info.get_hf_config().vision_config.image_size
        frames = np.zeros((DUMMY_NUM_FRAMES, size, size, 3), dtype=np.uint8)
        metadata = {"total_num_frames": DUMMY_NUM_FRAMES, "padded_frames": 0, "video_backend": VIDEO_BACKEND}
        return {"video": [(frames, metadata)] * mm_counts.get("video", 0)}


class HicomMultiModalProcessor(BaseMultiModalProcessor[HicomProcessingInfo]):
    def apply(self, inputs: ProcessorInputs, timing_ctx):
        """Resolve the instruction from the real prompt before vLLM hashes the items (the hash covers the processor
        kwargs), then process as usual."""
        if INSTRUCTIONS not in inputs.hf_processor_mm_kwargs:
            processor = self.info.get_hf_processor()
            prompt = self.info.get_tokenizer().decode(inputs.prompt, skip_special_tokens=False)
            kwargs = {**inputs.hf_processor_mm_kwargs, INSTRUCTIONS: processor.extract_instruction(prompt)}
            inputs = dataclasses.replace(inputs, hf_processor_mm_kwargs=kwargs)
        elif not isinstance(inputs.hf_processor_mm_kwargs[INSTRUCTIONS], str):
            raise ValueError(
                f"`mm_processor_kwargs.{INSTRUCTIONS}` must be a string (what the video compression is conditioned "
                f"on), got {type(inputs.hf_processor_mm_kwargs[INSTRUCTIONS]).__name__}."
            )
        return super().apply(inputs, timing_ctx)

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        """`HicomVideoProcessor`'s pixels for frames the `hicom` loader sampled, and the tokenized instruction."""
        processor = self.info.get_hf_processor()
        video_processor = processor.video_processor
        pixels = []
        for frames, metadata in hf_data.get("videos", []):
            backend = metadata.get("video_backend")
            if backend not in (None, VIDEO_BACKEND):
                raise ValueError(
                    f"HICom videos must be decoded by the `{VIDEO_BACKEND}` video loader (the frames HicomProcessor "
                    f"samples), got frames from `{backend}`: drop the `video_backend` media_io_kwargs override."
                )
            values = video_processor.preprocess_frames(np.asarray(frames))
            if metadata.get("padded_frames"):
                padding = video_processor._padding_frame(*frames.shape[1:3])
                values = torch.cat([values, padding.expand(metadata["padded_frames"], -1, -1, -1)])
            pixels.append(values)
        instructions = processor.tokenize_instructions([hf_kwargs[INSTRUCTIONS]] * len(pixels))
        return BatchFeature({
            "pixel_values_videos": torch.cat(pixels),
            "video_num_frames": torch.tensor([len(p) for p in pixels]),
            "instruct_input_ids": instructions["input_ids"],
            "instruct_attention_mask": instructions["attention_mask"],
        })

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs) -> Mapping[str, MultiModalFieldConfig]:
        num_frames = hf_inputs.get("video_num_frames", torch.empty(0, dtype=torch.long))
        return {
            "pixel_values_videos": MultiModalFieldConfig.flat_from_sizes("video", num_frames),
            "video_num_frames": MultiModalFieldConfig.batched("video", keep_on_cpu=True),
            "instruct_input_ids": MultiModalFieldConfig.batched("video"),
            "instruct_attention_mask": MultiModalFieldConfig.batched("video"),
        }

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs) -> Sequence[PromptReplacement]:
        video_token_id = self.info.get_hf_config().video_token_id

        def replacement(item_index: int) -> list[int]:
            num_frames = int(out_mm_kwargs["video"][item_index]["video_num_frames"].data)
            return [video_token_id] * self.info.get_num_video_tokens(num_frames)

        return [PromptReplacement(modality="video", target=[video_token_id], replacement=replacement)]
