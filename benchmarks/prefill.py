"""Time to first token of the language model: HICom's token count vs 2x2-pooled vs raw SigLIP tokens.

One random Qwen2-0.5B-shaped LM (hidden 896, 14 heads, 2 kv heads, MLP 4864, vocab 151936, sdpa attention) prefills
`text + visual` tokens and picks the first token (`logits_to_keep=1`, argmax), for the visual token counts of
HICom (`ceil(T/4)*81 + 32`), 2x2 pooling (196 per frame, LLaVA-OneVision style) and raw SigLIP (729 per frame) at 8
and 32 frames, all in one process with the same weights. Raw tokens at 32 frames (23,328) take minutes per
24-layer prefill on a small CPU, so `k` decoder layers are run and the 24-layer time is extrapolated from the time
measured inside the decoder layers: `t_24 = t_k + (24/k - 1) * t_layers` (every layer has the same shape).

    python benchmarks/prefill.py            # full (~3 min on 2 cores)
    python benchmarks/prefill.py --quick    # tiny LM, seconds
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import torch  # noqa: E402

NAME = "prefill"
METHODS = ("hicom", "pooled_2x2", "raw")


def settings(quick: bool) -> dict:
    if quick:
        lm = dict(C.QWEN2_05B, vocab_size=512, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2)
        return dict(frames=[2, 4], side=9, text_tokens=16, layers_timed=1, layers_full=2, lm=lm, max_repeats=2,
                    repeat_under_s=5.0)
    return dict(frames=[8, 32], side=27, text_tokens=40, layers_timed=4, layers_full=24, lm=dict(C.QWEN2_05B),
                max_repeats=3, repeat_under_s=5.0)


def visual_tokens(method: str, frames: int, side: int) -> int:
    if method == "hicom":
        return C.hicom_tokens(frames, side)
    if method == "pooled_2x2":
        return frames * math.ceil(side / 2) ** 2
    return frames * side * side


class LayerTimer:
    """Wall time spent inside the decoder layers (forward pre/post hooks)."""

    def __init__(self, layers):
        self.total, self._start = 0.0, None
        for layer in layers:
            layer.register_forward_pre_hook(self._pre)
            layer.register_forward_hook(self._post)

    def _pre(self, *args):
        self._start = time.perf_counter()

    def _post(self, *args):
        self.total += time.perf_counter() - self._start


def main():
    args = C.parse_args(__doc__.splitlines()[0])
    s = settings(args.quick)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(**dict(s["lm"], num_hidden_layers=s["layers_timed"]))
    model = Qwen2ForCausalLM(config).eval()
    timer = LayerTimer(model.model.layers)
    generator = torch.Generator().manual_seed(0)
    scale = s["layers_full"] / s["layers_timed"]

    def first_token(length: int):
        ids = torch.randint(0, config.vocab_size, (1, length), generator=generator)
        with torch.no_grad():
            return model(input_ids=ids, logits_to_keep=1, use_cache=True).logits[:, -1].argmax(-1)

    first_token(64)  # warm-up
    runs = []
    for frames in s["frames"]:
        for method in METHODS:
            visual = visual_tokens(method, frames, s["side"])
            length = visual + s["text_tokens"]
            times, layer_times = [], []
            while len(times) < s["max_repeats"]:
                timer.total = 0.0
                start = time.perf_counter()
                first_token(length)
                times.append(time.perf_counter() - start)
                layer_times.append(timer.total)
                if times[-1] > s["repeat_under_s"]:
                    break  # long prefills run once
            order = sorted(range(len(times)), key=times.__getitem__)
            median = order[len(order) // 2]
            measured, in_layers = times[median], layer_times[median]
            extrapolated = measured + (scale - 1) * in_layers
            runs.append({
                "frames": frames, "method": method, "visual_tokens": visual, "sequence_length": length,
                "times_s": times, "layer_times_s": layer_times,
                f"ttft_{s['layers_timed']}_layers_s": measured, "time_in_layers_s": in_layers,
                f"ttft_{s['layers_full']}_layers_extrapolated_s": extrapolated,
            })
            print(f"{frames:>3} frames {method:>10}: {length:>6} tokens, {measured:.3f}s measured "
                  f"({s['layers_timed']} layers) -> {extrapolated:.2f}s ({s['layers_full']} layers)", flush=True)

    key = f"ttft_{s['layers_full']}_layers_extrapolated_s"
    comparisons, targets = [], []
    for frames in s["frames"]:
        by_method = {r["method"]: r for r in runs if r["frames"] == frames}
        hicom = by_method["hicom"]
        for baseline in ("raw", "pooled_2x2"):
            other = by_method[baseline]
            token_ratio = other["sequence_length"] / hicom["sequence_length"]
            speedup = other[key] / hicom[key]
            comparisons.append({
                "frames": frames, "baseline": baseline, "token_count_ratio": token_ratio,
                "visual_token_ratio": other["visual_tokens"] / hicom["visual_tokens"],
                "ttft_speedup": speedup, "speedup_over_token_ratio": speedup / token_ratio,
            })
            if frames == max(s["frames"]):
                targets.append(C.target(
                    f"prefill speed-up vs {baseline} at {frames} frames / token-count ratio",
                    round(speedup / token_ratio, 3), 0.8, speedup / token_ratio >= 0.8,
                    f"speed-up {speedup:.1f}x for {token_ratio:.1f}x fewer tokens (text tokens included)",
                ))
    notes = [
        f"Sequence = {s['text_tokens']} text tokens + the visual tokens; token-count ratios include the text tokens "
        "(visual-only ratios are listed too).",
        f"{s['layers_timed']} of {s['layers_full']} decoder layers run; {key} extrapolates with the time measured "
        "inside the decoder layers (forward hooks). Embeddings, final norm and the 1-position LM head are measured.",
        "Long prefills are timed once (times_s), short ones up to max_repeats times (median), after a warm-up.",
        "Random weights and token ids: attention cost does not depend on values (sdpa, causal).",
    ]
    if args.quick:
        notes.insert(0, "QUICK MODE (smoke run): tiny LM and token counts; targets only meaningful in full mode.")
    data = {
        "settings": dict(s, torch_threads=torch.get_num_threads(), attn_implementation=config._attn_implementation),
        "runs": runs, "comparisons": comparisons, "targets": targets, "notes": notes,
    }
    C.write_results(NAME, args, data)

    fig, (ax,) = C.figure(1, width=7.5)
    width = 0.27
    for i, method in enumerate(METHODS):
        values = [next(r[key] for r in runs if r["frames"] == f and r["method"] == method) for f in s["frames"]]
        tokens = [next(r["sequence_length"] for r in runs if r["frames"] == f and r["method"] == method)
                  for f in s["frames"]]
        bars = ax.bar([j + (i - 1) * width for j in range(len(values))], values, width, label=method)
        for bar, value, count in zip(bars, values, tokens):
            ax.annotate(f"{value:.2g}s\n{count} tok", (bar.get_x() + bar.get_width() / 2, value), ha="center",
                        va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylim(top=max(r[key] for r in runs) * 4)  # room for the labels
    ax.set_xticks(range(len(s["frames"])), [f"{f} frames" for f in s["frames"]])
    ax.set_ylabel(f"time to first token, s (log; {s['layers_full']} layers)")
    last = [c for c in comparisons if c["frames"] == max(s["frames"])]
    ax.set_title("LM prefill: " + ", ".join(
        f"vs {c['baseline']} {c['ttft_speedup']:.1f}x faster ({c['token_count_ratio']:.1f}x fewer tokens)" for c in last
    ), fontsize=9)
    ax.legend(fontsize=8)
    C.save_figure(fig, NAME, args)


if __name__ == "__main__":
    main()
