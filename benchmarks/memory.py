"""Peak memory of `get_video_features` vs the number of frames, with and without chunked, streamed encoding.

Each (frames, mode) runs in a fresh process. The model has the real widths of the release where memory is decided
(SigLIP so400m vision width 1152 at 384 px = 27x27 patches, MLP 4304, 16 heads; the released compressor with
C = 3584) but fewer layers: ONE vision layer (features = layer -2 = the embeddings' output, kept alive while the last
layer runs, exactly as layer 26's output is in the 27-layer tower: activations are per layer, so depth changes
weights, not the peak of the activations), a one-layer instruction encoder (vocab 1024) and a one-layer, narrow LM
(not run). Modes:
  * streamed: the model's path, `vision_batch_size=16`: each chunk is compressed as soon as it is encoded.
  * unchunked: `vision_batch_size=T`: every frame's activations at once.
  * kept_features: `encode_frames` in chunks of 16, all features F and patch embeddings E kept, then the compressor
    (the previous implementation's memory behaviour).
"Model memory" = weights + the extra peak RSS during the call (peak mark reset right before it); the input pixels
(1.7 MB per frame, the caller's) and the interpreter are excluded there and included in `absolute_peak_mb`.

    python benchmarks/memory.py            # full (~5 min on 2 cores)
    python benchmarks/memory.py --quick    # tiny model, seconds
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402

NAME = "memory"
MODES = ("streamed", "unchunked", "kept_features")


def settings(quick: bool) -> dict:
    if quick:
        return dict(
            frames=[2, 4, 8], chunk=2, vision_layers=1,
            vision=dict(hidden_size=64, intermediate_size=96, num_attention_heads=2, image_size=70, patch_size=14),
            text_hidden=96, num_global_queries=4,
        )
    return dict(frames=[8, 32, 128, 256], chunk=16, vision_layers=1, vision=dict(C.SO400M_VISION), text_hidden=3584,
                num_global_queries=32)


def build_config(s: dict):
    from modeling_hicom import HicomConfig

    width = s["vision"]["hidden_size"]
    return HicomConfig(
        vision_config=dict(s["vision"], num_hidden_layers=s["vision_layers"]),
        instruct_config=dict(
            hidden_size=width, intermediate_size=s["vision"]["intermediate_size"], num_attention_heads=
            s["vision"]["num_attention_heads"], num_hidden_layers=1, vocab_size=1024, max_position_embeddings=64,
            pad_token_id=1, bos_token_id=None, eos_token_id=1,
        ),
        text_config=dict(
            hidden_size=s["text_hidden"], intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, bos_token_id=None, eos_token_id=2, pad_token_id=0,
        ),
        num_global_queries=s["num_global_queries"],
        vision_batch_size=s["chunk"],
        video_token_id=250,
        image_token_id=251,
    )


def worker(job: dict) -> dict:
    from modeling_hicom import HicomModel

    s, frames, mode = job["s"], job["frames"], job["mode"]
    rss_start = C.rss_mb()
    torch.manual_seed(0)
    model = HicomModel(build_config(s)).eval()
    size = model.config.vision_config.image_size
    pixels = torch.randn(frames, 3, size, size)
    ids = torch.randint(2, 1024, (1, model.config.instruct_max_length))
    mask = torch.ones_like(ids)
    chunk = frames if mode == "unchunked" else s["chunk"]

    def run():
        with torch.no_grad():
            if mode == "kept_features":
                features, embeds = model.encode_frames(pixels, chunk)
                instruct_embeds = model.encode_instructions(ids, mask)[0]
                return model.compressor(features, embeds, instruct_embeds).tokens
            return model.get_video_features(pixels, None, ids, mask, vision_batch_size=chunk).pooler_output[0]

    with torch.no_grad():  # warm-up on one frame: one-time allocations (thread pools, kernels) are not the run's
        model.get_video_features(pixels[:1], None, ids, mask)
    rss_before = C.rss_mb()
    start = time.perf_counter()
    tokens, extra, exact = C.measure_extra_memory(run)
    seconds = time.perf_counter() - start
    side = size // model.config.vision_config.patch_size
    width = model.config.vision_config.hidden_size
    return {
        "frames": frames, "mode": mode, "vision_batch_size": chunk, "seconds": seconds,
        "weights_mb": C.parameter_mb(model),
        "vision_tower_weights_mb": C.parameter_mb(model.vision_tower),
        "features_F_mb": frames * side * side * width * 4 / C.MB,
        "pixels_mb": pixels.numel() * 4 / C.MB,
        "extra_peak_mb": extra,
        "rss_after_imports_mb": rss_start,
        "rss_before_call_mb": rss_before,
        "absolute_peak_mb": rss_before + extra,
        "peak_reset_supported": exact,
        "tokens": list(tokens.shape),
    }


def main():
    args = C.parse_args(__doc__.splitlines()[0])
    if args.worker:
        C.worker_reply(worker(json.loads(args.worker)))
        return
    s = settings(args.quick)
    runs = []
    for frames in s["frames"]:
        for mode in MODES:
            job = {"s": s, "frames": frames, "mode": mode}
            run = C.run_worker(__file__, job, in_process=worker if args.quick else None)
            run["model_memory_mb"] = run["weights_mb"] + run["extra_peak_mb"]
            runs.append(run)
            print(f"{frames:>4} frames {mode:>13}: extra peak {run['extra_peak_mb']:8.1f} MB, weights "
                  f"{run['weights_mb']:.0f} MB, features F {run['features_F_mb']:.0f} MB ({run['seconds']:.1f}s)",
                  flush=True)

    def find(frames, mode):
        return next(r for r in runs if r["frames"] == frames and r["mode"] == mode)

    longest, reference = max(s["frames"]), (32 if 32 in s["frames"] else s["frames"][1])
    streamed_long, streamed_ref = find(longest, "streamed"), find(reference, "streamed")
    limit = 1.3 * (streamed_long["weights_mb"] + streamed_long["features_F_mb"])
    growth = streamed_long["extra_peak_mb"] / streamed_ref["extra_peak_mb"]
    allowed_growth = 2 ** (torch.log2(torch.tensor(longest / reference)).item() / 3)  # 2x per 8x frames
    targets = [
        C.target(
            f"streamed model memory at {longest} frames / (weights + features)",
            round(streamed_long["model_memory_mb"] / (limit / 1.3), 3), 1.3,
            streamed_long["model_memory_mb"] <= limit,
            f"{streamed_long['model_memory_mb']:.0f} MB vs weights {streamed_long['weights_mb']:.0f} MB + features "
            f"{streamed_long['features_F_mb']:.0f} MB",
        ),
        C.target(
            f"(peak - weights) growth from {reference} to {longest} frames (streamed)", round(growth, 3),
            round(allowed_growth, 3), growth <= allowed_growth, "limit: 2x per 8x frames",
        ),
    ]
    notes = [
        f"Vision tower: {s['vision_layers']} layer(s) at width {s['vision']['hidden_size']} (not 27): the peak is one "
        "layer's activations for one chunk, the same at any depth; weights of the other 26 layers (~1.6 GB fp32) "
        "would add a constant.",
        "model_memory_mb = weights_mb + extra_peak_mb (peak RSS during the call above RSS before it, mark reset via "
        "/proc/self/clear_refs; large allocations by mmap so freed tensors leave RSS). Pixels are the caller's input.",
        "unchunked and kept_features are shown for comparison; kept_features holds F and E for every frame (2x the "
        "features), as the implementation before the streamed path did.",
    ]
    if args.quick:
        notes.insert(0, "QUICK MODE (smoke run): tiny model, measured in this process (no fresh process per "
                        "configuration); targets only meaningful in full mode.")
    C.write_results(NAME, args, {"settings": s, "runs": runs, "targets": targets, "notes": notes})

    fig, (ax,) = C.figure(1, width=7.5)
    for mode, style in zip(MODES, ("o-", "s--", "^:")):
        values = [find(f, mode)["model_memory_mb"] for f in s["frames"]]
        ax.plot(s["frames"], values, style, label=f"{mode} (weights + extra peak)")
    weights = [find(f, "streamed")["weights_mb"] for f in s["frames"]]
    features = [find(f, "streamed")["features_F_mb"] for f in s["frames"]]
    ax.plot(s["frames"], [w + f for w, f in zip(weights, features)], "k-", lw=0.8, label="weights + features F")
    ax.plot(s["frames"], [1.3 * (w + f) for w, f in zip(weights, features)], "k--", lw=0.8, label="1.3 x that (target)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(s["frames"], [str(f) for f in s["frames"]])
    ax.set_xlabel("frames")
    ax.set_ylabel("MB (log)")
    ax.set_title(f"get_video_features memory (vision width {s['vision']['hidden_size']}, {s['vision_layers']} layer)")
    ax.legend(fontsize=8)
    C.save_figure(fig, NAME, args)


if __name__ == "__main__":
    main()
