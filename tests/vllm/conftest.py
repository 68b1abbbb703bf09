"""A converted tiny HICom folder and one vLLM engine on it, shared by the vLLM tests (run in the vLLM venv, see
`.ci/vllm.sh`; in a venv without vLLM these tests are skipped)."""

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Before vLLM is imported: a small CPU KV cache, the engine in this process (starts in seconds, and lets tests reach
# the model with `LLM.apply_model`), and vLLM's caches in a temporary folder rather than the home directory.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # `apply_model` sends a function to the worker
os.environ.setdefault("VLLM_CACHE_ROOT", tempfile.mkdtemp(prefix="vllm-cache-"))

FIXTURE = Path(__file__).parents[1] / "fixtures" / "hicom-tiny-reference"
SERVED_NUM_FRAMES = 8


def convert_tiny_fixture(output: Path) -> Path:
    """`hicom-convert` output for the tiny reference checkpoint with its LM's 4 heads / 2 KV heads of 16 channels
    regrouped as 2 heads / 1 KV head of 32 (the same weight shapes): vLLM's CPU attention needs head_dim >= 32."""
    from hicom_transformers.conversion.convert_hicom_original_to_hf import convert

    original = output.parent / "original_checkpoint"
    shutil.copytree(FIXTURE / "original_checkpoint", original)
    config_path = original / "config.json"
    os.chmod(config_path, 0o644)
    config = json.loads(config_path.read_text())
    config.update(num_attention_heads=2, num_key_value_heads=1)
    config_path.write_text(json.dumps(config))
    return convert(original, FIXTURE / "siglip-so400m-patch14-384", output, dtype="float32")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return convert_tiny_fixture(tmp_path_factory.mktemp("hicom") / "converted")


@pytest.fixture(scope="session")
def served_num_frames() -> int:
    return SERVED_NUM_FRAMES


@pytest.fixture(scope="session")
def llm(model_dir):
    from vllm import LLM

    return LLM(
        model=str(model_dir),
        dtype="float32",
        enforce_eager=True,
        max_model_len=2048,
        allowed_local_media_path="/",
        media_io_kwargs={"video": {"num_frames": SERVED_NUM_FRAMES}},
        limit_mm_per_prompt={"video": 2},
        seed=0,
    )
