"""`hicom-eval-table` on results folders in lmms-eval's format (the real CLI's output is read in
test_lmms_eval_model.py)."""

import json
from pathlib import Path

import pytest

from lmms_eval_hicom.table import PAPER, main


def write_run(folder, name, model_args, results, group_subtasks=None):
    """A results file as lmms-eval writes it: `<metric>,<filter>` keys, stderr entries, groups without scores."""
    folder.mkdir(parents=True, exist_ok=True)
    run = {"results": results, "group_subtasks": group_subtasks or {task: [] for task in results},
           "config": {"model": "hicom", "model_args": model_args}}  # fmt: skip
    (folder / f"{name}_results.json").write_text(json.dumps(run))


def score(metric, value):
    return {"alias": "x", f"{metric},none": value, f"{metric}_stderr,none": 0.5}


@pytest.fixture
def results_dir(tmp_path):
    logs = tmp_path / "logs"
    model = logs / "hicom-7b-hf"
    write_run(model, "20260101_100000", "pretrained=hicom-7b-hf",
              {"videomme": score("videomme_perception_score", 57.0)})  # fmt: skip
    mvbench = {"mvbench_action_count": score("mvbench_accuracy", 60.0),
               "mvbench_moving_count": score("mvbench_accuracy", 70.0)}  # fmt: skip
    write_run(model, "20260102_100000", "pretrained=hicom-7b-hf,num_frames=32",
              {"videomme": score("videomme_perception_score", 58.0), "mvbench": {"alias": "mvbench", " ": " "},
               **mvbench, "egoschema_subset": score("score", 0.6)},
              {"mvbench": list(mvbench), **{task: [] for task in mvbench}, "videomme": [], "egoschema_subset": []})
    write_run(logs / "other", "20260103_100000", "pretrained=hicom-7b-hf,num_frames=64,dtype=bfloat16",
              {"videomme_w_subtitle": score("videomme_perception_score", 63.5), "egoschema": score("submission", 62.0)})
    return logs


def test_table_next_to_the_paper(results_dir, tmp_path, capsys):
    output, plot = tmp_path / "table.md", tmp_path / "table.png"
    main([str(results_dir), "--output", str(output), "--plot", str(plot)])
    printed = capsys.readouterr().out
    assert printed == output.read_text()
    lines = printed.splitlines()
    header = [cell.strip() for cell in lines[0].split("|")[2:-1]]
    assert header == [*PAPER[32], "EgoSchema 500-question subset"]
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]] for line in lines[2:4]}

    def cell(frames, name):
        return rows[str(frames)][header.index(name)]

    def compared(ours, frames, name):
        paper = PAPER[frames][name]
        return f"{ours:.1f} / {paper} ({ours - paper:+.1f})"

    # The later 32-frame run replaces the earlier videomme score; MVBench is the mean of its subtasks.
    assert cell(32, "VideoMME w/o subs") == compared(58.0, 32, "VideoMME w/o subs")
    assert cell(32, "MVBench") == compared(65.0, 32, "MVBench")
    assert cell(32, "VideoMME w/ subs") == f"— / {PAPER[32]['VideoMME w/ subs']}"
    assert cell(64, "VideoMME w/ subs") == compared(63.5, 64, "VideoMME w/ subs")
    assert cell(64, "EgoSchema") == compared(62.0, 64, "EgoSchema")
    # The subset's fraction becomes a percentage, with no paper number (the paper's EgoSchema is the full test set).
    assert (cell(32, "EgoSchema 500-question subset"), cell(64, "EgoSchema 500-question subset")) == ("60", "—")
    assert len(lines) == 6  # header, rule, two rows, blank, note
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_readme_quotes_the_numbers_the_table_compares_with():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    guide = readme.split("## Reproduce the paper", 1)[1].split("\n## ", 1)[0]
    header = "| frames | " + " | ".join(PAPER[32]) + " |"
    assert header in guide
    for frames, scores in PAPER.items():
        assert f"| {frames} | " + " | ".join(str(value) for value in scores.values()) + " |" in guide


@pytest.mark.parametrize("content, message", [(None, "no lmms-eval"), ("{not json", "is not an lmms-eval results file"),
                                              ('{"config": {}}', "is not an lmms-eval results file")])
def test_unusable_folders_exit_2_with_one_line(tmp_path, capsys, content, message):
    if content is not None:
        (tmp_path / "x_results.json").write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("hicom-eval-table: error:") and message in error
