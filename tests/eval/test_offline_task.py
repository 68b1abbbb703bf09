"""The shipped offline task `hicom_offline`: each clip shows its answer, the JSON is the generator's, and the scoring
reads the option letter. (The task running through lmms-eval is in test_lmms_eval_model.py.)"""

import importlib.util
import json

import av
import numpy as np
import pytest

from lmms_eval_hicom.offline_task import BACKGROUND, CLIPS, COLOURS, DIRECTIONS, LETTERS, SIZE, TASK_DIR, docs


def decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def seen(frames: np.ndarray) -> dict[str, str]:
    """What the decoded frames show: the squares' colour, how many there are, and which way they move."""
    foreground = np.abs(frames.astype(int) - BACKGROUND).sum(-1) > 60  # (T, H, W); H.264 blurs the edges a little
    mean = frames[foreground].mean(0)
    colour = min(COLOURS, key=lambda name: np.abs(mean - COLOURS[name]).sum())
    first, last = (np.argwhere(foreground[t]).mean(0) for t in (0, -1))  # (y, x) centroids
    row = foreground[0, round(first[0])]  # squares stand side by side: count the runs across their middle
    count = int(row[0]) + int(np.count_nonzero(row[1:] & ~row[:-1]))
    dy, dx = last - first
    direction = max(DIRECTIONS, key=lambda name: DIRECTIONS[name][0] * dx + DIRECTIONS[name][1] * dy)
    return {"colour": colour, "count": str(count), "direction": direction if max(abs(dx), abs(dy)) > SIZE / 4 else None}


def test_the_shipped_json_is_the_generators():
    assert json.loads((TASK_DIR / "hicom_offline.json").read_text()) == docs()


@pytest.mark.parametrize("clip, doc", list(zip(CLIPS, docs())), ids=[clip.name for clip in CLIPS])
def test_each_clip_shows_its_answer(clip, doc):
    shown = seen(decode(TASK_DIR / doc["video"]))
    assert shown == {"colour": clip.colour, "count": str(clip.count), "direction": clip.direction}
    answer = doc["options"][LETTERS.index(doc["answer"])].split(". ", 1)[1]
    assert answer == shown[clip.asks]


def test_scoring_reads_the_option_letter():
    spec = importlib.util.spec_from_file_location("hicom_offline_utils", TASK_DIR / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    doc = docs()[1]  # blue square: C
    answers = ("C", "(C) blue", "C.", "A", "", "blue")
    assert [utils.process_results(doc, [answer])["accuracy"] for answer in answers] == [1, 1, 1, 0, 0, 0]
    assert utils.doc_to_visual(doc) == [str(TASK_DIR / "clips" / "blue_square.mp4")]
    assert "\nC. blue\n" in utils.doc_to_text(doc)
