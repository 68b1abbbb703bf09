"""`hicom-video-qa`: ask a HICom model a question about a video or an image.

    hicom-video-qa --model path/or/hub-id --video clip.mp4 --question "What happens?" [--stream]
    hicom-video-qa --model path/or/hub-id --image photo.jpg --question "What is on the table?"
    hicom-video-qa            # embedded demo: tiny random-weight model built locally, generated clip

With no `--model`, the demo builds (once, cached) a tiny random-weight checkpoint through the real converter and
answers about a generated clip: the answer is noise, the token budget and the code path are real. The demo shows its
answer as token ids, because random weights pick byte pieces that do not form valid text.

A problem with the inputs (a missing or unreadable file, an unconverted checkpoint, a device that is not there) is
reported in one line on stderr, with exit code 2.
"""

import argparse
import threading
import time
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoModelForImageTextToText, AutoProcessor, TextIteratorStreamer

from hicom_transformers.conversion.convert_hicom_original_to_hf import ConversionError, read_config

PROG = "hicom-video-qa"


class UsageError(Exception):
    """The command line asks for something that cannot be done; reported in one line, exit code 2."""


def one_line(error: BaseException, limit: int = 500) -> str:
    """An error message on one line, cut at `limit` characters (it may echo a very long argument)."""
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="converted HICom folder or Hub id (default: the embedded demo model)")
    visual = parser.add_mutually_exclusive_group()
    visual.add_argument("--video", help="video file (default: a generated clip)")
    visual.add_argument("--image", help="image file, instead of a video")
    parser.add_argument("--question", default="What is moving in the video, and in which direction?")
    parser.add_argument("--num-frames", type=positive_int, help="frames to sample (default: the processor's)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=32)
    parser.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--device", default=None, help='"cpu", "cuda", "cuda:1", or "auto" (device_map)')
    return parser, parser.parse_args(argv)


def check_device(name: str | None) -> None:
    if name in (None, "auto"):
        return
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UsageError(f"--device {name!r} is not a device name (expected cpu, cuda, cuda:1, ... or auto).") from error
    if device.type == "cpu":
        return
    accelerator = torch.accelerator.current_accelerator()
    if accelerator is None or accelerator.type != device.type:
        available = accelerator.type if accelerator is not None else "only cpu"
        raise UsageError(f"--device {name}: no {device.type} device is available here ({available}); use --device cpu.")
    if device.index is not None and device.index >= torch.accelerator.device_count():
        raise UsageError(f"--device {name}: there are {torch.accelerator.device_count()} {device.type} devices here.")


def check_model(model: str) -> None:
    """Refuse, before loading anything, a `--model` that is not a converted HICom folder or Hub repository."""
    folder = Path(model)
    if not folder.exists():
        try:
            validate_repo_id(model)
        except HFValidationError as error:
            raise UsageError(f"--model {model!r}: no such folder.") from error
        try:
            folder = Path(hf_hub_download(model, "config.json")).parent
        except (OSError, EntryNotFoundError) as error:  # huggingface_hub's HTTP, offline and missing-file errors
            raise UsageError(
                f"--model {model!r}: no such folder, and not a Hub repository that can be reached ({one_line(error)})"
            ) from error
    try:
        model_type = read_config(folder, "--model").get("model_type")
    except ConversionError as error:
        raise UsageError(str(error)) from error
    if model_type == "hicom_qwen2":
        raise UsageError(
            f"--model {model!r} is an original HICom checkpoint (model_type hicom_qwen2): convert it with "
            "hicom-convert first (see the README)."
        )
    if model_type != "hicom":
        raise UsageError(f"--model {model!r} is not a HICom model (model_type {model_type!r}, expected 'hicom').")


class TokenIds:
    """Stands in for the tokenizer when decoding the demo's answer: random weights choose byte-level pieces that are
    not valid UTF-8 together, so the ids are what a person can recognise as "random weights"."""

    def decode(self, token_ids, **kwargs) -> str:
        return " ".join(str(int(token_id)) for token_id in token_ids)


def stream_generate(model, streamer: TextIteratorStreamer, generate_kwargs: dict):
    """Yield the streamer's text while `model.generate` runs in a thread. An error in `generate` ends the stream and
    is raised here, in the caller's thread: on its own the streamer would wait forever for text that never comes."""
    errors = []

    def generate():
        try:
            model.generate(**generate_kwargs, streamer=streamer)
        except BaseException as error:  # handed to the caller's thread below
            errors.append(error)
            streamer.end()

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
    if errors:
        raise errors[0]


def answer(args) -> None:
    demo = args.model is None
    if demo:
        from hicom_transformers.examples.demo_model import demo_clip, demo_model_dir

        print("Embedded demo: a tiny HICom with RANDOM weights, built locally through the real converter.")
        print("Its answers are meaningless (shown as token ids); the token budget and every code path are real.\n")
        args.model = str(demo_model_dir())
        if args.image is None:
            args.video = args.video or str(demo_clip())
    if args.video is None and args.image is None:
        raise UsageError("--video or --image is required with --model.")
    check_device(args.device)
    check_model(args.model)

    start = time.perf_counter()
    kind, source = ("video", args.video) if args.video is not None else ("image", args.image)
    try:
        processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    except OSError as error:  # missing or corrupt processor files
        raise UsageError(f"--model {args.model!r}: the processor cannot be loaded ({one_line(error)})") from error
    messages = [{"role": "user", "content": [{"type": kind, "path": source}, {"type": "text", "text": args.question}]}]
    sampling = {"num_frames": args.num_frames} if args.num_frames else {}
    try:
        inputs = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", **sampling
        )
    except (OSError, ValueError) as error:  # the processor's errors for missing, unreadable or undecodable files
        raise UsageError(f"--{kind}: {one_line(error)}") from error

    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            args.model, trust_remote_code=True, dtype=dtype, device_map="auto" if args.device == "auto" else None
        ).eval()
    except OSError as error:  # missing, corrupt or truncated weight files
        raise UsageError(f"--model {args.model!r}: the model cannot be loaded ({one_line(error)})") from error
    if args.device not in (None, "auto"):
        model.to(args.device)
    inputs = inputs.to(model.device)
    for name in ("pixel_values_videos", "pixel_values"):
        if name in inputs:
            inputs[name] = inputs[name].to(model.dtype)

    token_id = processor.video_token_id if kind == "video" else processor.image_token_id
    compressed = int((inputs["input_ids"] == token_id).sum())
    frames = int(inputs["video_num_frames"][0]) if kind == "video" else 1
    raw = processor.num_raw_tokens(frames)
    print(f"{kind.capitalize()}: {source}" + (f" -> {frames} frames" if kind == "video" else ""))
    print(f"Visual tokens: {raw:,} raw SigLIP patches -> {compressed:,} HICom tokens ({raw / compressed:.1f}x fewer)")
    print(f"Question: {args.question}")
    print("Answer (token ids): " if demo else "Answer: ", end="", flush=True)

    decoder = TokenIds() if demo else processor.tokenizer
    generate_kwargs = dict(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    if args.stream:
        streamer = TextIteratorStreamer(decoder, skip_prompt=True, skip_special_tokens=True)
        for piece in stream_generate(model, streamer, generate_kwargs):
            print(piece, end="", flush=True)
        print()
    else:
        output = model.generate(**generate_kwargs)
        print(decoder.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    print(f"\n({time.perf_counter() - start:.1f} s{', random demo weights' if demo else ''})")


def main(argv=None):
    parser, args = parse_args(argv)
    try:
        answer(args)
    except UsageError as error:
        parser.exit(2, f"{PROG}: error: {error}\n")


if __name__ == "__main__":
    main()
