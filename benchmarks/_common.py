"""Shared helpers of the benchmark scripts: arguments, timing, peak memory, machine info, JSON results, plots.

Not a benchmark itself (`make bench-quick` runs every `benchmarks/*.py` with `--quick`; this one then does nothing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from processing_hicom import num_video_tokens  # noqa: E402

MB = 2**20
# Large allocations by mmap, returned to the OS when freed: resident memory then tracks live tensors, so peaks
# measured in worker processes are those of the computation, not of the allocator's cache.
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def parse_args(description: str, configure=None) -> argparse.Namespace:
    """`--quick` (tiny shapes, seconds: CI smoke, results go to a temporary folder unless `--out`), `--out DIR`,
    `--threads N`, plus `--worker JSON` used internally to run one measurement in a fresh process."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, a few seconds (CI smoke run)")
    parser.add_argument(
        "--out", type=Path, default=None, help="results folder (default: benchmarks/results; --quick: a temp folder)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    if configure is not None:
        configure(parser)
    args = parser.parse_args()
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "hicom-bench-quick" if args.quick else RESULTS
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def machine_info() -> dict:
    import torch
    import transformers

    cpu = platform.processor() or ""
    try:
        cpu = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text()).group(1).strip()
    except (OSError, AttributeError):
        pass
    memory_gb = None
    try:
        memory_gb = round(int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) / 2**20, 1)
    except (OSError, AttributeError):
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "memory_gb": memory_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.cuda.is_available(),
    }


def time_call(fn, repeats: int = 3, warmup: int = 1) -> dict:
    """Median wall time of `fn()` over `repeats` runs after `warmup` untimed ones; all times are kept."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "times_s": times, "repeats": repeats, "warmup": warmup}


# --- memory ---------------------------------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
    except (OSError, AttributeError):
        return None


def rss_mb() -> float:
    kb = _status_kb("VmRSS")
    if kb is None:
        import psutil

        return psutil.Process().memory_info().rss / MB
    return kb / 1024


def peak_rss_mb() -> float:
    """Peak resident memory of this process (since the last `reset_peak_rss`, where supported)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return kb / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0: `echo 5 > /proc/self/clear_refs`); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_extra_memory(fn):
    """`(result, extra_mb, exact)`: peak resident memory during `fn()` above the resident memory before it.

    `exact` is False when the peak mark could not be reset (then the peak is the process's lifetime peak)."""
    import gc

    gc.collect()
    exact = reset_peak_rss()
    before = rss_mb()
    result = fn()
    return result, max(0.0, peak_rss_mb() - before), exact


def run_worker(script: str | Path, settings: dict, timeout: float = 1800, in_process=None) -> dict:
    """Run `script --worker JSON(settings)` in a fresh process (so peaks never mix) and parse its last stdout line.

    `in_process`: a function to call with the settings here instead (quick smoke runs: no interpreter start-up per
    measurement; peaks are still reset before each call but the allocator's cache may hide some)."""
    if in_process is not None:
        return json.loads(json.dumps(in_process(json.loads(json.dumps(settings)))))
    env = dict(os.environ, **WORKER_ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, str(script), "--worker", json.dumps(settings)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"worker {settings} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker_reply(payload: dict) -> None:
    print(json.dumps(payload), flush=True)


def parameter_mb(module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / MB


# --- configs --------------------------------------------------------------------------------------------------------

SO400M_VISION = dict(hidden_size=1152, intermediate_size=4304, num_attention_heads=16, image_size=384, patch_size=14)
QWEN2_05B = dict(
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
    num_key_value_heads=2, max_position_embeddings=32768, rope_parameters={"rope_type": "default", "rope_theta": 1e6},
    tie_word_embeddings=True, rms_norm_eps=1e-6,
)


def hicom_tokens(frames: int, side: int = 27, temporal: int = 4, spatial: int = 3, global_queries: int = 32) -> int:
    """Compressed tokens of a `frames`-frame video at `side x side` patches, released settings by default: the
    processor's own count (`processing_hicom.num_video_tokens`)."""
    return num_video_tokens(frames, (side, side), local_temporal_kernel=temporal, local_spatial_kernel=spatial,
                            num_global_queries=global_queries, use_local_level=True)


# --- results --------------------------------------------------------------------------------------------------------


def target(name: str, value, limit, met: bool, detail: str = "") -> dict:
    return {"name": name, "value": value, "limit": limit, "met": bool(met), "detail": detail}


def write_results(name: str, args, payload: dict) -> Path:
    """`<out>/<name>.json` with machine info, settings and the run's data."""
    args.out.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "mode": "quick" if args.quick else "full",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "machine": machine_info(),
        **payload,
    }
    path = args.out / f"{name}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {path}")
    targets = payload.get("targets", [])
    for item in targets:
        print(f"  [{'met' if item['met'] else 'NOT met'}] {item['name']}: {item['value']} (limit {item['limit']})")
    return path


def figure(ncols: int = 1, width: float = 6.0, height: float = 4.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def save_figure(fig, name: str, args) -> Path:
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")
    return path


def bar_labels(ax, bars, fmt="{:.3g}", fontsize=8):
    for bar in bars:
        ax.annotate(
            fmt.format(bar.get_height()), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center", va="bottom", fontsize=fontsize,
        )


if __name__ == "__main__":
    print("benchmarks/_common.py holds shared helpers; run compressor.py, prefill.py, memory.py or e2e.py.")
