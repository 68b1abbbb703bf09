"""Compressor cost vs the SigLIP vision tower on the same frames, at the released widths.

Full mode: the released compressor (`HicomConfig()`: D=1152, 27x27 patches, C=3584, kernel 4x3x3, 32 direct global
queries) with random weights on random features of 32 frames, in float32 and bfloat16: median time, the time of each
level, the time when fed in 16-frame chunks (the model's streamed path), the number of ATen operator calls (each a
kernel launch on a GPU) and the extra peak memory (fresh process).
The vision tower is SigLIP so400m-patch14-384 with random weights; all 27 layers on 32 frames take minutes on a small
CPU, so `k` layers are timed (embeddings + k layers + post-layernorm + head MLP, in the model's 16-frame chunks) and
one layer alone, and the 27-layer time is extrapolated as `t_k + (27 - k) * t_layer` (layers are identical in shape).
An ablation times each compressor optimization against the plain computation it replaces.

    python benchmarks/compressor.py            # full (~2 min on 2 cores)
    python benchmarks/compressor.py --quick    # tiny shapes, seconds
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import _common as C  # noqa: E402
import torch  # noqa: E402
from reference_compressor import reference_global, reference_local  # noqa: E402

NAME = "compressor"


def settings(quick: bool) -> dict:
    if quick:
        return dict(
            frames=4, chunk=2, layers_timed=1, layers_full=3, repeats=2, vision_repeats=1,
            vision=dict(hidden_size=64, intermediate_size=96, num_attention_heads=2, image_size=70, patch_size=14),
            text_hidden=96, dtypes=["float32", "bfloat16"],
        )
    return dict(
        frames=32, chunk=16, layers_timed=2, layers_full=27, repeats=7, vision_repeats=3,
        vision=dict(C.SO400M_VISION), text_hidden=3584, dtypes=["float32", "bfloat16"],
    )


def hicom_config(s: dict):
    from modeling_hicom import HicomConfig

    if s["text_hidden"] == 3584:
        return HicomConfig()  # the released shape
    return HicomConfig(
        vision_config=dict(s["vision"], num_hidden_layers=s["layers_timed"]),
        instruct_config=dict(
            s["vision"], num_hidden_layers=1, vocab_size=64, max_position_embeddings=16, pad_token_id=1,
            bos_token_id=None, eos_token_id=1,
        ),
        text_config=dict(hidden_size=s["text_hidden"], intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, vocab_size=64),
        num_global_queries=4,
    )


def compressor_inputs(config, frames: int, dtype):
    from modeling_hicom.compressor_hicom import HicomCompressor

    torch.manual_seed(0)
    compressor = HicomCompressor(config).eval()
    with torch.no_grad():
        compressor.global_level.query.normal_(std=0.05)
    side = config.vision_config.image_size // config.vision_config.patch_size
    dim = config.vision_config.hidden_size
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(frames, side, side, dim, generator=generator)
    embeds = torch.randn(frames, side, side, dim, generator=generator)
    instruct = torch.randn(config.instruct_config.projection_size, generator=generator)
    return compressor.to(dtype), features.to(dtype), embeds.to(dtype), instruct.to(dtype)


# --- measurements ---------------------------------------------------------------------------------------------------


def count_operator_calls(fn) -> dict:
    """ATen operator calls made by `fn()` (views included: every call the dispatcher sees), total and the most
    frequent."""
    import collections

    from torch.utils._python_dispatch import TorchDispatchMode  # PyTorch's documented dispatch-mode hook

    class Counter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.calls = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls[str(func)] += 1
            return func(*args, **(kwargs or {}))

    with Counter() as counter:
        fn()
    return {"total": sum(counter.calls.values()), "most_frequent": dict(counter.calls.most_common(8))}


def level_calls(compressor, features, embeds, instruct):
    """Each level alone on the whole clip, through its own `forward` (fresh states, as `HicomCompressor.forward`)."""
    from modeling_hicom.compressor_hicom import HicomCompressorState

    def start():
        state = HicomCompressorState(tuple(features.shape[:3]))
        compressor.start(state, features, False)
        return state

    return (
        lambda: compressor.local_level(features, embeds, instruct, start().local_level),
        lambda: compressor.global_level(features, instruct, start().global_level),
    )


def time_compressor(s: dict, dtype_name: str, ablation: bool) -> dict:
    from modeling_hicom.compressor_hicom import HicomCompressorState

    dtype = getattr(torch, dtype_name)
    compressor_config = hicom_config(s)
    compressor, features, embeds, instruct = compressor_inputs(compressor_config, s["frames"], dtype)
    repeats = s["repeats"]
    result = {}
    with torch.no_grad():

        def streamed():
            state = HicomCompressorState(tuple(features.shape[:3]))
            for f, e in zip(features.split(s["chunk"]), embeds.split(s["chunk"])):
                output = compressor(f, e, instruct, state=state)
            return output

        local_level, global_level = level_calls(compressor, features, embeds, instruct)
        result["total"] = C.time_call(lambda: compressor(features, embeds, instruct), repeats)
        result["local_level"] = C.time_call(local_level, repeats)
        result["global_level"] = C.time_call(global_level, repeats)
        result[f"streamed_in_chunks_of_{s['chunk']}"] = C.time_call(streamed, repeats)
        # After the timings' warm-up: the per-grid plan and position tables are cached, as for every later video.
        result["operator_calls"] = {
            "whole_clip": count_operator_calls(lambda: compressor(features, embeds, instruct)),
            f"streamed_in_chunks_of_{s['chunk']}": count_operator_calls(streamed),
            "local_level": count_operator_calls(local_level),
            "global_level": count_operator_calls(global_level),
        }
        cells = compressor.local_level.plan(*features.shape[:3]).index.shape[:3].numel()
        readout_input = torch.randn(cells, features.shape[-1]).to(dtype)
        result["local_readout_mlp_only"] = C.time_call(lambda: compressor.local_level.readout(readout_input), repeats)
        if ablation:
            # The plain computations the optimizations replace: the tests' reference implementation (a loop over
            # windows; multi-head attention over materialized keys and values), on the same weights and dtype.
            config, weights = compressor_config, compressor.state_dict()
            plain_repeats = max(1, repeats // 2)
            result["ablation"] = {
                "local: python loop over windows": C.time_call(
                    lambda: reference_local(config, weights, features, embeds, instruct), plain_repeats
                ),
                "local: dense products per temporal cell (ours)": result["local_level"],
                f"global: plain MHA, {config.num_global_queries} queries": C.time_call(
                    lambda: reference_global(config, weights, features, instruct), plain_repeats
                ),
                "global: reassociated, online softmax (ours)": result["global_level"],
            }
            tokens = compressor(features, embeds, instruct).tokens.float()
            local = reference_local(config, weights, features, embeds, instruct)[0].float()
            global_ = reference_global(config, weights, features, instruct)[0].float()
            result["ablation_max_abs_difference"] = {
                "local": (tokens[: local.shape[0]] - local).abs().max().item(),
                "global": (tokens[local.shape[0] :] - global_).abs().max().item(),
            }
    return result


def time_vision(s: dict, dtype_name: str) -> dict:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    config = SiglipVisionConfig(**s["vision"], num_hidden_layers=s["layers_timed"])
    tower = SiglipVisionModel(config).eval().to(dtype)
    pixels = torch.randn(s["frames"], 3, config.image_size, config.image_size).to(dtype)
    repeats = s["vision_repeats"]

    def encode():  # as HicomModel.iter_encode_frames: chunks of vision_batch_size frames
        for frames in pixels.split(s["chunk"]):
            hidden = tower.embeddings(frames)
            for layer in tower.encoder.layers:
                hidden = layer(hidden, None)
            last = tower.post_layernorm(hidden)
            last + tower.head.mlp(tower.head.layernorm(last))

    with torch.no_grad():
        hidden = tower.embeddings(pixels[: s["chunk"]])
        layer = tower.encoder.layers[0]
        per_layer_chunk = C.time_call(lambda: layer(hidden, None), repeats)
        k_layers = C.time_call(encode, 1, warmup=0)
    chunks = math.ceil(s["frames"] / s["chunk"])
    per_layer = per_layer_chunk["median_s"] * chunks
    extrapolated = k_layers["median_s"] + (s["layers_full"] - s["layers_timed"]) * per_layer
    return {
        "layers_timed": s["layers_timed"],
        "layers_extrapolated_to": s["layers_full"],
        "one_layer_one_chunk": per_layer_chunk,
        "one_layer_all_frames_s": per_layer,
        f"{s['layers_timed']}_layer_tower_with_head_all_frames": k_layers,
        "extrapolated_full_tower_s": extrapolated,
        "method": (
            f"t_{s['layers_timed']} (embeddings + {s['layers_timed']} layers + post-layernorm + head MLP, measured, "
            f"chunks of {s['chunk']} frames) + ({s['layers_full']} - {s['layers_timed']}) x t_layer (one layer on one "
            f"{s['chunk']}-frame chunk, median of {repeats}, x {chunks} chunks)"
        ),
    }


def memory_worker(settings_: dict) -> dict:
    s, dtype_name = settings_["s"], settings_["dtype"]
    dtype = getattr(torch, dtype_name)
    compressor, features, embeds, instruct = compressor_inputs(hicom_config(s), s["frames"], dtype)
    with torch.no_grad():
        compressor(features, embeds, instruct)  # warm-up: one-time allocations are not the compressor's working memory
        tokens, extra, exact = C.measure_extra_memory(lambda: compressor(features, embeds, instruct)[0])
    element = features.element_size()
    return {
        "extra_peak_mb": extra,
        "peak_reset_supported": exact,
        "features_F_mb": features.numel() * element / C.MB,
        "features_and_patch_embeds_mb": 2 * features.numel() * element / C.MB,
        "output_tokens_mb": tokens.numel() * tokens.element_size() / C.MB,
        "weights_mb": C.parameter_mb(compressor),
    }


def plot(args, data):
    fig, (ax_ratio, ax_ablation) = C.figure(2, width=6.5)
    labels, vision, compress = [], [], []
    for dtype_name, entry in data["by_dtype"].items():
        labels.append(dtype_name)
        vision.append(entry["vision"]["extrapolated_full_tower_s"])
        compress.append(entry["compressor"]["total"]["median_s"])
    x = range(len(labels))
    label = f"vision tower ({data['settings']['layers_full']} layers, extrapolated)"
    bars_v = ax_ratio.bar([i - 0.2 for i in x], vision, 0.4, label=label)
    bars_c = ax_ratio.bar([i + 0.2 for i in x], compress, 0.4, label="compressor")
    ax_ratio.set_yscale("log")
    ax_ratio.set_ylim(min(compress) / 3, max(vision) * 30)  # room for the labels and the legend
    ax_ratio.set_xticks(list(x), labels)
    ax_ratio.set_ylabel("seconds (log)")
    ax_ratio.set_title(f"{data['settings']['frames']} frames: compressor vs vision tower")
    C.bar_labels(ax_ratio, bars_v, "{:.1f}s")
    for bar, v, c in zip(bars_c, vision, compress):
        ax_ratio.annotate(
            f"{c:.3f}s\n{100 * c / v:.2f}%", (bar.get_x() + bar.get_width() / 2, c), ha="center", va="bottom", fontsize=8
        )
    ax_ratio.legend(fontsize=8, loc="upper right")
    ablation = data["by_dtype"]["float32"]["compressor"].get("ablation", {})
    names = list(ablation)
    values = [ablation[n]["median_s"] for n in names]
    colors = ["tab:green" if "(ours)" in n else ("tab:gray" if "skipped" in n else "tab:red") for n in names]
    bars = ax_ablation.barh(range(len(names)), values, color=colors)
    ax_ablation.set_yticks(range(len(names)), names, fontsize=8)
    ax_ablation.invert_yaxis()
    ax_ablation.set_xlabel("seconds (float32)")
    ax_ablation.set_title("each optimization vs the plain computation")
    for bar, value in zip(bars, values):
        ax_ablation.annotate(f"{value:.3f}s", (value, bar.get_y() + bar.get_height() / 2), va="center", fontsize=8)
    C.save_figure(fig, NAME, args)


def main():
    args = C.parse_args(__doc__.splitlines()[0])
    if args.worker:
        import json

        C.worker_reply(memory_worker(json.loads(args.worker)))
        return
    s = settings(args.quick)
    data = {"settings": dict(s, torch_threads=torch.get_num_threads()), "by_dtype": {}}
    for dtype_name in s["dtypes"]:
        print(f"[{dtype_name}] compressor ...", flush=True)
        compressor = time_compressor(s, dtype_name, ablation=dtype_name == "float32")
        print(f"[{dtype_name}] vision tower ({s['layers_timed']} layers timed) ...", flush=True)
        vision = time_vision(s, dtype_name)
        print(f"[{dtype_name}] memory (fresh process) ...", flush=True)
        job = {"s": s, "dtype": dtype_name}
        memory = C.run_worker(__file__, job, in_process=memory_worker if args.quick else None)
        ratio = compressor["total"]["median_s"] / vision["extrapolated_full_tower_s"]
        memory["scratch_mb"] = memory["extra_peak_mb"] - memory["output_tokens_mb"]
        memory["scratch_over_F"] = memory["scratch_mb"] / memory["features_F_mb"]
        memory["extra_over_F"] = memory["extra_peak_mb"] / memory["features_F_mb"]
        memory["extra_over_F_and_E"] = memory["extra_peak_mb"] / memory["features_and_patch_embeds_mb"]
        data["by_dtype"][dtype_name] = {
            "compressor": compressor, "vision": vision, "memory": memory, "compressor_over_vision": ratio,
        }
        print(f"[{dtype_name}] compressor {compressor['total']['median_s']:.3f}s, vision "
              f"{vision['extrapolated_full_tower_s']:.1f}s -> {100 * ratio:.3f}%; extra memory "
              f"{memory['extra_peak_mb']:.1f} MB (F {memory['features_F_mb']:.0f} MB)", flush=True)
    fp32 = data["by_dtype"]["float32"]
    calls = fp32["compressor"]["operator_calls"]
    streamed_calls = calls[f"streamed_in_chunks_of_{s['chunk']}"]["total"]
    bf16_calls = data["by_dtype"].get("bfloat16", fp32)["compressor"]["operator_calls"]["whole_clip"]["total"]
    data["targets"] = [
        C.target(
            "compressor time / vision tower time (fp32)", round(fp32["compressor_over_vision"], 5), 0.0025,
            fp32["compressor_over_vision"] <= 0.0025,
            "vision tower extrapolated from the layers timed (see vision.method); the authors' implementation "
            "measures ~0.7% on this machine (1.28 s vs ~177 s)",
        ),
        C.target(
            "ATen operator calls per compressor call (fp32, whole clip)", calls["whole_clip"]["total"], 300,
            calls["whole_clip"]["total"] <= 300,
            f"streamed in {s['chunk']}-frame chunks: {streamed_calls}; bfloat16 whole clip: {bf16_calls} "
            "(half-precision features are converted to float32 a block of rows at a time, to bound memory)",
        ),
    ]
    for dtype_name, entry in data["by_dtype"].items():
        memory = entry["memory"]
        data["targets"].append(C.target(
            f"compressor scratch memory (extra peak minus its output tokens) / features F ({dtype_name})",
            round(memory["scratch_over_F"], 4), 0.10, memory["scratch_over_F"] <= 0.10,
            "F = the layer -2 features (T,27,27,1152); output tokens are what the LM consumes",
        ))
        data["targets"].append(C.target(
            f"compressor extra peak memory incl. output tokens / its inputs F + E ({dtype_name})",
            round(memory["extra_over_F_and_E"], 4), 0.10, memory["extra_over_F_and_E"] <= 0.10,
            f"incl. output over F alone: {memory['extra_over_F']:.3f}",
        ))
    data["notes"] = [
        "Random weights and random features: timing does not depend on values (no data-dependent branches).",
        "Vision tower: SiglipVisionModel, so400m shape, sdpa attention; the full 27-layer time is extrapolated from "
        "the layers timed, stated in vision.method.",
        "Memory: fresh process per dtype, peak RSS mark reset (/proc/self/clear_refs) right before one compressor "
        "call (after a warm-up), large allocations by mmap (MALLOC_MMAP_THRESHOLD_) so freed tensors leave RSS.",
        "Ablation (float32): each plain computation gives the same tokens (ablation_max_abs_difference). Both local "
        "rows include the readout MLP; the plain loop runs it as one GEMM, ours in 256-row blocks to bound memory. "
        "The plain loop issues several operator calls per window (thousands per video: see operator_calls for ours), "
        "which on a GPU are as many kernel launches.",
        "Operator calls: counted with a TorchDispatchMode after the warm-up (the per-grid plan and sin-cos tables "
        "are cached from the first video of a grid on).",
    ]
    if args.quick:
        data["notes"].insert(0, "QUICK MODE (smoke run): tiny shapes; the targets are only meaningful in full mode.")
    C.write_results(NAME, args, data)
    plot(args, data)


if __name__ == "__main__":
    main()
