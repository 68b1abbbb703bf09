"""Write the README's "Performance" section from `benchmarks/results/*.json`, so every number there comes from a
result file and names the command that produced it.

    python benchmarks/report.py            # rewrite the section between the markers in README.md
    python benchmarks/report.py --print    # print it instead
"""

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- performance:start -->", "<!-- performance:end -->"
ORDER = ("compressor", "prefill", "memory", "decode", "e2e", "throughput")


def _number(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _targets(result: dict) -> list[str]:
    rows = []
    for target in result.get("targets", []):
        status = "met" if target["met"] else "**not met**"
        detail = f" ({target['detail']})" if target.get("detail") else ""
        rows.append(f"| {target['name']}{detail} | {_number(target['value'])} | {_number(target['limit'])} | {status} |")
    return rows


def _e2e(result: dict) -> list[str]:
    rows = ["| model | frames | visual tokens | " + " | ".join(result["runs"][0]["stages"]) + " | generate, 1st token |",
            "| --- | --- | --- |" + " --- |" * (len(result["runs"][0]["stages"]) + 1)]
    for run in result["runs"]:
        stages = " | ".join(f"{stage['median_s']:.3f} s" for stage in run["stages"].values())
        first = run.get("generate_first_token_incl_decode")
        first = f"{first['median_s']:.3f} s" if isinstance(first, dict) else _number(first)
        rows.append(f"| {run['model']} | {run['frames']} | {run['visual_tokens']} | {stages} | {first} |")
    return rows


def _throughput(result: dict) -> list[str]:
    workers = [mode for mode in result["runs"][0]["videos_per_s"] if mode.startswith("workers_")]
    rows = ["| model | frames | prepare / video | model / video | limit | sequential | "
            + " | ".join(mode.replace("_", " ") for mode in workers) + " | best / limit | best / sequential |",
            "| --- | --- | --- | --- | --- | --- |" + " --- |" * (len(workers) + 2)]
    for run in result["runs"]:
        rates = run["videos_per_s"]
        rows.append(
            f"| {run['model']} | {run['frames']} | {run['seconds_per_video']['prepare_only']:.3f} s | "
            f"{run['seconds_per_video']['model_only']:.3f} s | {run['limit_videos_per_s']:.2f}/s | "
            f"{rates['sequential']:.2f}/s | " + " | ".join(f"{rates[mode]:.2f}/s" for mode in workers)
            + f" | {run['best_of_limit']:.2f} | {run['best_over_sequential']:.2f} |"
        )
    return rows


def section() -> str:
    lines = [
        "Measured on this project's CI kind of machine (2 CPU cores, no GPU), random weights, ratios taken side by side",
        "in one run; absolute times are noisy here. Regenerate with the command under each heading, then",
        "`python benchmarks/report.py`. Method notes are in `benchmarks/README.md` and in each JSON file.",
    ]
    for name in ORDER:
        path = RESULTS / f"{name}.json"
        if not path.is_file():
            lines += ["", f"### {name}", "", f"No result yet: run `python benchmarks/{name}.py`."]
            continue
        result = json.loads(path.read_text())
        machine = result.get("machine", {})
        lines += [
            "",
            f"### {name}",
            "",
            f"`{result.get('command', f'python benchmarks/{name}.py')}` ({result.get('date_utc', 'date unknown')}, "
            f"torch {machine.get('torch', '?')}, transformers {machine.get('transformers', '?')}, "
            f"{machine.get('torch_threads', '?')} threads); plot: `benchmarks/results/{name}.png`.",
            "",
        ]
        if result.get("targets"):
            lines += ["| target | value | limit | |", "| --- | --- | --- | --- |", *_targets(result)]
        if name == "e2e" and result.get("runs"):
            lines += _e2e(result)
        if name == "throughput" and result.get("runs"):
            lines += ["", *_throughput(result)]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true", help="print the section instead of editing README.md")
    args = parser.parse_args()
    text = section()
    if args.print:
        print(text)
        return
    readme = ROOT / "README.md"
    content = readme.read_text()
    if START not in content or END not in content:
        raise SystemExit(f"README.md has no {START} ... {END} markers")
    head, rest = content.split(START, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(f"{head}{START}\n{text}\n{END}{tail}")
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
