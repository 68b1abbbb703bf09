"""Greedy tokens of `HicomForConditionalGeneration.generate` for the vLLM equality test, printed as JSON.

Run by the test in the project's own venv (`HICOM_REFERENCE_PYTHON`, set by `.ci/vllm.sh`): the reference is the
transformers model on the transformers version the project targets, not on the older one vLLM pins.

    python reference_generate.py MODEL_DIR CLIP NUM_FRAMES[,NUM_FRAMES...] MAX_TOKENS QUESTION [QUESTION ...]

Prints `{num_frames: [tokens per question]}`.
"""

import json
import sys

import torch

from modeling_hicom import HicomForConditionalGeneration
from processing_hicom import HicomProcessor


def main(model_dir, clip, num_frames, max_tokens, *questions):
    model = HicomForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = HicomProcessor.from_pretrained(model_dir)
    tokens = {}
    for frames, question in ((int(n), q) for n in num_frames.split(",") for q in questions):
        conversation = [{"role": "user", "content": [{"type": "video", "path": clip}, {"type": "text", "text": question}]}]
        inputs = processor.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=True, num_frames=frames
        )
        generated = model.generate(
            **inputs, max_new_tokens=int(max_tokens), min_new_tokens=int(max_tokens), do_sample=False
        )
        tokens.setdefault(frames, []).append(generated[0, inputs["input_ids"].shape[1]:].tolist())
    print(json.dumps(tokens))


if __name__ == "__main__":
    main(*sys.argv[1:])
