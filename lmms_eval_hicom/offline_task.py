"""The offline task `hicom_offline`: generated clips whose answer can be seen (colour, motion direction, count).

It checks the plumbing of an evaluation, not a model: with the tiny random-weight test model the answers are noise,
but every sample must reach the model as video and come back as an answer. `python -m lmms_eval_hicom.offline_task`
rewrites the clips and `hicom_offline.json` in `tasks/hicom_offline/` (they are shipped, so a run needs nothing
but this package).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import TASKS_DIR

TASK_DIR = TASKS_DIR / "hicom_offline"
SIZE, NUM_FRAMES, FPS, SQUARE, MARGIN = 96, 16, 8, 20, 4
BACKGROUND = (128, 128, 128)
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 30)}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
LETTERS = "ABCD"


QUESTIONS = {  # what a clip is asked -> (question, options)
    "colour": ("What colour is the square?", tuple(COLOURS)),
    "direction": ("In which direction does the square move?", tuple(DIRECTIONS)),
    "count": ("How many squares are there?", ("1", "2", "3", "4")),
}


@dataclass(frozen=True)
class Clip:
    """What a clip shows (`count` squares of one colour, still or all moving one way) and what it is asked."""

    name: str
    asks: str
    colour: str = "red"
    count: int = 1
    direction: str | None = None

    @property
    def answer(self) -> str:
        return {"colour": self.colour, "direction": self.direction, "count": str(self.count)}[self.asks]


CLIPS = (
    Clip("red_square", "colour", colour="red"),
    Clip("blue_square", "colour", colour="blue"),
    Clip("moving_right", "direction", direction="right"),
    Clip("moving_up", "direction", colour="green", direction="up"),
    Clip("three_squares", "count", colour="yellow", count=3),
    Clip("two_squares", "count", colour="blue", count=2),
)


def square_origins(clip: Clip, frame_index: int) -> list[tuple[int, int]]:
    """Top-left (x, y) of each square in a frame: side by side on the middle row; a moving square crosses the frame."""
    gap = (SIZE - clip.count * SQUARE) // (clip.count + 1)
    step_x, step_y = DIRECTIONS[clip.direction] if clip.direction else (0, 0)
    travel = (SIZE - SQUARE - 2 * MARGIN) * (frame_index / (NUM_FRAMES - 1) - 0.5)
    return [
        (gap + i * (SQUARE + gap) + round(step_x * travel), (SIZE - SQUARE) // 2 + round(step_y * travel))
        for i in range(clip.count)
    ]


def render(clip: Clip) -> np.ndarray:
    """The clip's frames, (T, H, W, 3) uint8."""
    frames = np.empty((NUM_FRAMES, SIZE, SIZE, 3), np.uint8)
    frames[:] = BACKGROUND
    for t, frame in enumerate(frames):
        for x, y in square_origins(clip, t):
            frame[y : y + SQUARE, x : x + SQUARE] = COLOURS[clip.colour]
    return frames


def write_clip(frames: np.ndarray, path: Path) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def docs() -> list[dict]:
    """The task's rows: the clip (relative to the task folder), question, options and answer letter."""
    rows = []
    for clip in CLIPS:
        question, options = QUESTIONS[clip.asks]
        rows.append({
            "id": clip.name,
            "video": f"clips/{clip.name}.mp4",
            "question": question,
            "options": [f"{letter}. {option}" for letter, option in zip(LETTERS, options)],
            "answer": LETTERS[options.index(clip.answer)],
        })  # fmt: skip
    return rows


def main() -> None:
    (TASK_DIR / "clips").mkdir(parents=True, exist_ok=True)
    for clip in CLIPS:
        write_clip(render(clip), TASK_DIR / "clips" / f"{clip.name}.mp4")
    (TASK_DIR / "hicom_offline.json").write_text(json.dumps(docs(), indent=1) + "\n")


if __name__ == "__main__":
    main()
