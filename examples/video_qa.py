"""`hicom-video-qa`: ask a HICom model a question about a video.

    hicom-video-qa --model path/or/hub-id --video clip.mp4 --question "What happens?" [--stream]
    hicom-video-qa            # embedded demo: tiny random-weight model built locally, generated clip

With no `--model`, the demo builds (once, cached) a tiny random-weight checkpoint through the real converter and
answers about a generated clip: the answer is noise, the token budget and the code path are real.
"""

import argparse
import threading
import time

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, TextIteratorStreamer


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="converted HICom folder or Hub id (default: the embedded demo model)")
    parser.add_argument("--video", help="video file (default: a generated clip)")
    parser.add_argument("--question", default="What is moving in the video, and in which direction?")
    parser.add_argument("--num-frames", type=int, help="frames to sample (default: the processor's)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--stream", action="store_true", help="print the answer as it is generated")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--device", default=None, help='"cpu", "cuda", "cuda:1", or "auto" (device_map)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    demo = args.model is None
    if demo:
        from examples.demo_model import demo_clip, demo_model_dir

        print("Embedded demo: a tiny HICom with RANDOM weights, built locally through the real converter.")
        print("Its answers are meaningless; the token budget and every code path are real.\n")
        args.model = str(demo_model_dir())
        args.video = args.video or str(demo_clip())
    if args.video is None:
        raise SystemExit("hicom-video-qa: error: --video is required with --model")

    start = time.perf_counter()
    processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True)
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    device_map = "auto" if args.device == "auto" else None
    model = AutoModelForImageTextToText.from_pretrained(
        args.model, trust_remote_code=True, dtype=dtype, device_map=device_map
    ).eval()
    if args.device not in (None, "auto"):
        model.to(args.device)

    messages = [
        {"role": "user", "content": [{"type": "video", "path": args.video}, {"type": "text", "text": args.question}]}
    ]
    sampling = {"num_frames": args.num_frames} if args.num_frames else {}
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", **sampling
    ).to(model.device)
    inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(model.dtype)
    frames = int(inputs["video_num_frames"][0])
    raw, compressed = processor.num_raw_tokens(frames), processor.num_video_tokens(frames)
    print(f"Video: {args.video} -> {frames} frames")
    print(f"Visual tokens: {raw:,} raw SigLIP patches -> {compressed:,} HICom tokens ({raw / compressed:.1f}x fewer)")
    print(f"Question: {args.question}\nAnswer: ", end="", flush=True)

    generate_kwargs = dict(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
    if args.stream:
        streamer = TextIteratorStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        thread = threading.Thread(target=model.generate, kwargs={**generate_kwargs, "streamer": streamer})
        thread.start()
        for piece in streamer:
            print(piece, end="", flush=True)
        thread.join()
        print()
    else:
        with torch.no_grad():
            output = model.generate(**generate_kwargs)
        print(processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    print(f"\n({time.perf_counter() - start:.1f} s{', random demo weights' if demo else ''})")


if __name__ == "__main__":
    main()
