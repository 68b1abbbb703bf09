"""`hicom-eval-table`: lmms-eval results next to the paper's, as a markdown table and a bar plot.

    hicom-eval-table logs/ [--output table.md] [--plot table.png]

Reads every `*_results.json` that lmms-eval wrote under the folder (one per run; a later run of the same task at the
same frame count replaces an earlier one) and takes the frame count from the run's `num_frames` model argument.
"""

import argparse
import json
import re
from pathlib import Path

DEFAULT_NUM_FRAMES = 32
# HICom-7B, Table 2 of the paper (frames -> benchmark -> accuracy, %).
PAPER = {
    32: {"VideoMME w/o subs": 58.1, "VideoMME w/ subs": 60.1, "MVBench": 64.1, "EgoSchema": 60.5},
    64: {"VideoMME w/o subs": 58.9, "VideoMME w/ subs": 63.3, "MVBench": 64.7, "EgoSchema": 62.2},
    128: {"VideoMME w/o subs": 60.3, "VideoMME w/ subs": 64.8, "MVBench": 64.0, "EgoSchema": 62.3},
}
# lmms-eval task -> (benchmark, metric, factor to percent). `egoschema` is scored by its public server (the full test
# set, as in the paper); `egoschema_subset` is the 500 questions whose answers are public, not the paper's set.
BENCHMARKS = {
    "videomme": ("VideoMME w/o subs", "videomme_perception_score", 1),
    "videomme_w_subtitle": ("VideoMME w/ subs", "videomme_perception_score", 1),
    "mvbench": ("MVBench", "mvbench_accuracy", 1),
    "egoschema": ("EgoSchema", "submission", 1),
    "egoschema_subset": ("EgoSchema 500-question subset", "score", 100),
}


def _metrics(entry: dict) -> dict[str, float]:
    """`{"accuracy,none": 0.5, "accuracy_stderr,none": ...}` -> `{"accuracy": 0.5}`."""
    return {
        key.split(",")[0]: value
        for key, value in entry.items()
        if "," in key and "_stderr" not in key and isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def read_run(path: Path) -> tuple[int, dict[str, float]]:
    """One lmms-eval results file -> (frames, {benchmark: score}).

    A group task without a score of its own (lmms-eval's `mvbench`) gets the mean of its subtasks' scores, the way
    MVBench is reported (its 20 subtasks have 200 questions each).
    """
    run = json.loads(path.read_text())
    match = re.search(r"(?:^|,)num_frames=(\d+)", run.get("config", {}).get("model_args") or "")
    frames = int(match.group(1)) if match else DEFAULT_NUM_FRAMES
    results, subtasks = run["results"], run.get("group_subtasks", {})
    scores = {}
    for task, entry in results.items():
        metrics = _metrics(entry)
        if task in BENCHMARKS:
            name, metric, factor = BENCHMARKS[task]
            values = [metrics.get(metric)] if metric in metrics else [
                _metrics(results[sub]).get(metric) for sub in subtasks.get(task, [])
            ]
            if values and None not in values:
                scores[name] = factor * sum(values) / len(values)
        elif not any(task in members for members in subtasks.values()):
            scores.update({f"{task} {metric}": value for metric, value in metrics.items()})
    return frames, scores


def collect(folder: Path) -> dict[int, dict[str, float]]:
    """frames -> benchmark -> score over every run under `folder` (files named by date sort in run order)."""
    table: dict[int, dict[str, float]] = {}
    for path in sorted(folder.rglob("*_results.json"), key=lambda p: p.name):
        try:
            frames, scores = read_run(path)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{path} is not an lmms-eval results file ({type(error).__name__}: {error})") from error
        table.setdefault(frames, {}).update(scores)
    return table


def markdown(table: dict[int, dict[str, float]]) -> str:
    columns = list(PAPER[32]) + sorted({name for scores in table.values() for name in scores} - set(PAPER[32]))
    lines = [
        "| frames | " + " | ".join(columns) + " |",
        "| --- |" + " --- |" * len(columns),
    ]
    for frames in sorted(table):
        cells = []
        for name in columns:
            ours, paper = table[frames].get(name), PAPER.get(frames, {}).get(name)
            cell = "—" if ours is None else f"{ours:.1f}" if name in PAPER[32] else f"{ours:.4g}"
            if paper is not None:
                cell += f" / {paper}" + ("" if ours is None else f" ({ours - paper:+.1f})")
            cells.append(cell)
        lines.append(f"| {frames} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nCells: ours / paper (difference), accuracy in %; paper: HICom-7B, Table 2.\n"


def plot(table: dict[int, dict[str, float]], path: Path) -> None:
    """Bars per benchmark: ours (solid) next to the paper's (hatched), one colour per frame count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(PAPER[32])
    settings = sorted(table)
    width = 0.8 / (2 * len(settings))
    figure, axis = plt.subplots(figsize=(2.2 * len(names) + 2, 4))
    for i, frames in enumerate(settings):
        colour = f"C{i}"
        for j, (label, values, hatch) in enumerate(
            (("ours", table[frames], None), ("paper", PAPER.get(frames, {}), "//"))
        ):
            offsets = [k - 0.4 + width * (2 * i + j + 0.5) for k in range(len(names))]
            heights = [values.get(name, float("nan")) for name in names]  # NaN: no bar
            bars = axis.bar(offsets, heights, width, color=colour, alpha=0.5 if hatch else 1, hatch=hatch,
                            label=f"{frames} frames, {label}")
            axis.bar_label(bars, fmt="%.1f", fontsize=6, rotation=90, padding=2)
    axis.set_xticks(range(len(names)), names)
    axis.set_ylabel("accuracy (%)")
    axis.set_ylim(0, 100)
    axis.legend(fontsize=8, ncols=len(settings), loc="upper center")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, help="lmms-eval --output_path folder")
    parser.add_argument("--output", type=Path, help="also write the markdown table here")
    parser.add_argument("--plot", type=Path, help="write a bar plot (PNG) here")
    args = parser.parse_args(argv)
    try:
        table = collect(args.results)
    except (OSError, ValueError) as error:
        parser.exit(2, f"hicom-eval-table: error: {error}\n")
    if not table:
        parser.exit(2, f"hicom-eval-table: error: no lmms-eval *_results.json under {args.results}\n")
    text = markdown(table)
    print(text, end="")
    if args.output:
        args.output.write_text(text)
    if args.plot:
        plot(table, args.plot)


if __name__ == "__main__":
    main()
