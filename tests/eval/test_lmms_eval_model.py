"""The `hicom` lmms-eval model: its arguments, per-request errors, and the real `lmms-eval` CLI end to end on the
offline task. The tiny model's weights are random, so its answers are noise: what is checked is that every request
reached the model as video and came back answered, and that lmms-eval wrote samples and results (it exits 0 even when
the evaluation failed, so the exit code proves nothing).

lmms-eval lives in its own venv (`.ci/lmms_eval.sh`); without it these tests are skipped.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lmms_eval", reason="lmms-eval is installed in its own venv: see .ci/lmms_eval.sh")

from loguru import logger  # noqa: E402  (lmms-eval's logger)
from lmms_eval.api.instance import Instance  # noqa: E402
from transformers import AutoProcessor  # noqa: E402

from hicom_transformers.conversion.convert_hicom_original_to_hf import convert  # noqa: E402
from lmms_eval_hicom import TASKS_DIR  # noqa: E402
from lmms_eval_hicom.model import Hicom, cut_at_stops, generate_kwargs  # noqa: E402
from lmms_eval_hicom.offline_task import TASK_DIR, docs  # noqa: E402

FIXTURE = Path(__file__).parents[1] / "fixtures" / "hicom-tiny-reference"
CLIP = str(TASK_DIR / "clips" / "red_square.mp4")
VISUAL_TOKENS = re.compile(r"frames per video \[([\d, ]*)\], visual tokens per request \[([\d, ]*)\]")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny reference checkpoint converted by the real converter, as a user's folder would be."""
    return convert(
        FIXTURE / "original_checkpoint", FIXTURE / "siglip-so400m-patch14-384", tmp_path_factory.mktemp("hub") / "hicom"
    )


@pytest.fixture
def log_lines():
    lines = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO")
    yield lines
    logger.remove(sink)


@pytest.mark.parametrize(
    "arguments, name",
    [
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": "many"}, "num_frames"),
        ({"num_frames": 2.5}, "num_frames"),
        ({"batch_size": "auto"}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"dtype": "int8"}, "dtype"),
    ],
)
def test_bad_model_arguments_are_refused_before_loading(arguments, name):
    """The folder does not exist: an error naming the argument shows it was checked first."""
    with pytest.raises(ValueError, match=f"`{name}`"):
        Hicom(pretrained="/nonexistent/hicom", **arguments)


def test_generation_arguments():
    videomme = {"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False}
    assert generate_kwargs(videomme) == {"max_new_tokens": 16, "num_beams": 1, "do_sample": False}
    assert generate_kwargs(videomme, max_new_tokens=4)["max_new_tokens"] == 4
    assert generate_kwargs({"temperature": 0.7, "top_p": 0.9}) == {"top_p": 0.9, "do_sample": True, "temperature": 0.7}
    assert cut_at_stops("B. red\n\nThe square", ["\n\n"]) == "B. red"
    assert cut_at_stops("B. red", None) == "B. red"


def test_model_args_win_over_command_line_defaults(model_dir):
    """lmms-eval always passes `--batch_size` (default 1); a `batch_size` model argument must not collide with it."""
    lm = Hicom.create_from_arg_string(
        f"pretrained={model_dir},batch_size=3,num_frames=4", {"batch_size": 1, "max_batch_size": None, "device": None}
    )
    assert (lm.batch_size, lm.num_frames, lm.pipe.device.type) == (3, 4, "cpu")


def test_a_bad_request_is_left_unanswered_and_the_others_are_answered(model_dir, log_lines):
    """A missing video and an image block fail their own requests only, with an error naming the cause."""
    lm = Hicom(pretrained=str(model_dir), num_frames=4, dtype="float32", batch_size=2)
    task_docs = [{"video": CLIP}, {"video": "/nonexistent/clip.mp4"}, {"image": CLIP}, {"video": CLIP}]
    lm.task_dict = {"t": {"test": task_docs}}

    def doc_to_messages(doc):
        media = {"type": "video", "url": doc["video"]} if "video" in doc else {"type": "image", "url": doc["image"]}
        return [{"role": "user", "content": [media, {"type": "text", "text": "What colour is the square?"}]}]

    gen_kwargs = {"max_new_tokens": 3, "temperature": 0}
    requests = [
        Instance("generate_until", ("", doc_to_messages, gen_kwargs, doc_id, "t", "test"), 0,
                 {"task": "t", "doc_id": doc_id, "repeats": 1})
        for doc_id in range(4)
    ]
    answers = lm.generate_until(requests)

    alone = lm.pipe(text=[doc_to_messages({"video": CLIP})], num_frames=4, return_full_text=False,
                    **generate_kwargs(gen_kwargs))[0][0]["generated_text"]
    assert answers == [alone, "", "", alone]
    errors = [line for line in log_lines if "left unanswered" in line]
    assert len(errors) == 2
    assert "t doc 1" in errors[0] and "/nonexistent/clip.mp4" in errors[0]
    assert "t doc 2" in errors[1] and "image block" in errors[1]
    reported = [VISUAL_TOKENS.search(line) for line in log_lines if VISUAL_TOKENS.search(line)]
    tokens = [int(n) for match in reported for n in match.group(2).split(",")]
    # doc 0, doc 0 again for `alone`, and doc 3 (doc 1 is answered with an error, doc 2 has no video): 4 frames each.
    assert tokens == [lm.pipe.processor.num_video_tokens(4)] * 3


def test_a_generated_placeholder_token_does_not_lose_the_answer(model_dir, log_lines):
    """`<video>` is input-only: the model refuses one without pixels, so generation must never produce it (a model
    whose weights favour it, as random weights may, would otherwise fail at the second generated token)."""
    lm = Hicom(pretrained=str(model_dir), num_frames=4, dtype="float32")
    video_token_id = lm.pipe.model.config.video_token_id

    def favour_the_video_token(module, inputs, logits):
        return logits.index_add(-1, torch.tensor([video_token_id]), torch.full((*logits.shape[:-1], 1), 1e4))

    lm.pipe.model.get_output_embeddings().register_forward_hook(favour_the_video_token)
    lm.task_dict = {"t": {"test": [{"video": CLIP}]}}
    messages = [{"role": "user", "content": [{"type": "video", "url": CLIP}, {"type": "text", "text": "Colour?"}]}]
    request = Instance("generate_until", ("", lambda doc: messages, {"max_new_tokens": 3}, 0, "t", "test"), 0,
                       {"task": "t", "doc_id": 0, "repeats": 1})
    assert lm.generate_until([request]) != [""]
    assert not [line for line in log_lines if "left unanswered" in line]


def test_lmms_eval_cli_runs_the_offline_task(model_dir, tmp_path):
    """`lmms-eval eval --model hicom --model_args pretrained=FOLDER` alone, on CPU, offline; then `hicom-eval-table`."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    command = [
        str(bin_dir / "lmms-eval"), "eval", "--model", "hicom", "--model_args", f"pretrained={model_dir}",
        "--tasks", "hicom_offline", "--include_path", str(TASKS_DIR), "--batch_size", "2",
        "--output_path", str(tmp_path / "logs"), "--log_samples",
    ]  # fmt: skip
    run = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert "left unanswered" not in log and "Error during evaluation" not in log, log[-3000:]

    (results_file,) = (tmp_path / "logs").rglob("*_results.json")
    results = json.loads(results_file.read_text())
    assert results["n-samples"]["hicom_offline"]["effective"] == len(docs())
    assert 0 <= results["results"]["hicom_offline"]["accuracy,none"] <= 1
    (samples_file,) = (tmp_path / "logs").rglob("*_samples_hicom_offline.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert [s["doc_id"] for s in samples] == list(range(len(docs())))
    assert [s["target"] for s in samples] == [doc["answer"] for doc in docs()]
    assert all(isinstance(s["filtered_resps"], str) for s in samples)

    # Every request reached the model with its 32 frames (the default), as the processor's token budget for them.
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    reported = [match for match in VISUAL_TOKENS.finditer(log)]
    frames = [int(n) for match in reported for n in match.group(1).split(",")]
    tokens = [int(n) for match in reported for n in match.group(2).split(",")]
    assert frames == [32] * len(docs())
    assert tokens == [processor.num_video_tokens(32)] * len(docs())

    plot = tmp_path / "table.png"
    table = subprocess.run(
        [str(bin_dir / "hicom-eval-table"), str(tmp_path / "logs"), "--plot", str(plot)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    accuracy = results["results"]["hicom_offline"]["accuracy,none"]
    assert f"| 32 | — / 58.1 | — / 60.1 | — / 64.1 | — / 60.5 | {accuracy:.4g} |" in table.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
