"""The memory- and speed-motivated paths compute exactly what the plain ones do.

`get_video_features` compresses each chunk of frames as soon as the vision tower has encoded it (local cells per
temporal window group, the global level by an online softmax), so the clip's features are never kept whole. These
tests hold that streamed path to the whole-clip compressor (`encode_frames` + `HicomCompressor.forward`) and to the
plain implementation of the formulas (`reference_compressor`), for every injection mode and CLIP-scale attention, at
chunk sizes that split windows anywhere, including overlapping temporal windows (T=10, kt=4: frames 0-3, 3-6, 6-9)
and batches whose chunks straddle videos.
"""

import math

import pytest
import torch
from reference_compressor import reference_compress
from tiny_models import random_inputs, tiny_model

from modeling_hicom.compressor_hicom import HicomCompressorState, linear_taps, sincos_embedding_1d, window_index

ATOL = 1e-5
MODES = {
    "direct": {},
    "coarse": dict(local_injection="coarse", global_injection="coarse"),
    "off": dict(local_injection="off", global_injection="off"),
    "coarse-adapters": dict(
        local_injection="coarse", global_injection="direct", local_adapt_key=True, local_adapt_value=True,
        local_adapt_query=True, local_adapt_instruct=True, global_adapt_instruct=True,
    ),
    # Global CLIP scale scores every position plainly (no reassociation); fine injection reads per-token rows.
    "fine-clip-scale": dict(
        local_injection="fine", global_injection="fine", local_clip_scale=True, global_clip_scale=True
    ),
}


@pytest.fixture(scope="module", params=list(MODES))
def mode_model(request):
    return tiny_model(**MODES[request.param])


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def instruct_embeddings(model, ids, mask):
    """One embedding per video, or None per video for a model that injects no instruction (it has no encoder)."""
    return model.model.encode_instructions(ids, mask) if model.model.compressor.needs_instruct else [None] * len(ids)


def whole_clip(model, pixels, num_frames, ids, mask, output_attentions=False):
    """The non-streamed path: every frame's features and patch embeddings kept, then each clip compressed at once."""
    features, embeds = model.model.encode_frames(pixels, vision_batch_size=pixels.shape[0])
    per_video = zip(features.split(num_frames), embeds.split(num_frames), instruct_embeddings(model, ids, mask))
    return [
        model.model.compressor(video_features, video_embeds, instruct, output_attentions=output_attentions)
        for video_features, video_embeds, instruct in per_video
    ]


def assert_same(streamed, reference):
    for a, b in zip(streamed.pooler_output, (out[0] for out in reference), strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


# --- streamed (chunked) path == whole-clip path -------------------------------------------------------------------


@pytest.mark.parametrize("frames", [1, 2, 5, 6, 9, 10, 13, 17])
@pytest.mark.parametrize("chunk", [1, 3, 4, 7, 32])
def test_chunked_equals_whole_clip(mode_model, frames, chunk):
    pixels, num_frames, ids, mask = random_inputs(mode_model, [frames], seed=frames)
    with torch.no_grad():
        streamed = mode_model.get_video_features(pixels, num_frames, ids, mask, vision_batch_size=chunk)
        reference = whole_clip(mode_model, pixels, [frames], ids, mask)
    assert_same(streamed, reference)


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8, 64])
def test_chunks_straddling_videos(mode_model, chunk):
    lengths = [10, 1, 6, 3, 9]
    pixels, num_frames, ids, mask = random_inputs(mode_model, lengths, seed=3)
    with torch.no_grad():
        streamed = mode_model.get_video_features(pixels, num_frames, ids, mask, vision_batch_size=chunk)
        reference = whole_clip(mode_model, pixels, lengths, ids, mask)
    assert_same(streamed, reference)


@pytest.mark.parametrize("chunk", [1, 3, 10])
def test_attention_weights_do_not_depend_on_chunks(mode_model, chunk):
    pixels, num_frames, ids, mask = random_inputs(mode_model, [10], seed=4)
    with torch.no_grad():
        streamed = mode_model.get_video_features(
            pixels, num_frames, ids, mask, vision_batch_size=chunk, output_attentions=True
        )
        (_, local, global_), = whole_clip(mode_model, pixels, [10], ids, mask, output_attentions=True)
    torch.testing.assert_close(streamed.local_attentions[0], local, atol=ATOL, rtol=0)
    torch.testing.assert_close(streamed.global_attentions[0], global_, atol=1e-7, rtol=0)
    assert streamed.local_attentions[0].shape == (3, 2, 2, 4 * 3 * 3)  # T=10, kt=4: windows 0-3, 3-6, 6-9


@pytest.mark.parametrize("feed", [[1] * 10, [3, 3, 3, 1], [4, 6], [2, 5, 3], [10]])
def test_stream_accepts_any_feeding(mode_model, feed):
    """Feed the compressor directly, in uneven pieces; weights included."""
    pixels, _, ids, mask = random_inputs(mode_model, [10], seed=5)
    compressor = mode_model.model.compressor
    with torch.no_grad():
        features, embeds = mode_model.model.encode_frames(pixels)
        instruct = instruct_embeddings(mode_model, ids, mask)[0]
        reference = compressor(features, embeds, instruct, output_attentions=True)
        state = HicomCompressorState(tuple(features.shape[:3]))
        outputs = [
            compressor(piece_features, piece_embeds, instruct, output_attentions=True, state=state)
            for piece_features, piece_embeds in zip(features.split(feed), embeds.split(feed))
        ]
    assert all(output is None for output in outputs[:-1])
    for a, b in zip(outputs[-1], reference, strict=True):
        if b is not None:
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_stream_keeps_only_the_frames_pending_windows_need(model):
    """The point of streaming: at most a chunk plus `kt - 1` frames are ever buffered, whatever the clip length."""
    compressor = model.model.compressor
    frames, chunk = 41, 4
    pixels, _, ids, mask = random_inputs(model, [frames], seed=6)
    with torch.no_grad():
        instruct = model.model.encode_instructions(ids, mask)[0]
        state = HicomCompressorState((frames, 5, 5))
        largest = 0
        for features, embeds in model.model.iter_encode_frames(pixels, chunk):
            output = compressor(features, embeds, instruct, state=state)
            buffer = state.local_level.buffer
            largest = max(largest, buffer[0].shape[0] if buffer is not None else 0)
        tokens = output.tokens
    assert largest <= chunk + 4 - 1
    assert tokens.shape[0] == math.ceil(frames / 4) * 2 * 2 + 4


@pytest.mark.parametrize("mode", ["direct", "fine-clip-scale", "coarse-adapters"])
def test_offloaded_compressor_gives_same_results(mode):
    """accelerate's CPU offload hooks every module that holds weights and loads them only around that module's own
    `forward`: the compressor must use each weight there (its weights are on the meta device otherwise)."""
    from accelerate import cpu_offload

    model = tiny_model(**MODES[mode])
    inputs = random_inputs(model, [7, 3], seed=7)
    with torch.no_grad():
        expected = model.get_video_features(*inputs, vision_batch_size=2, output_attentions=True)
        cpu_offload(model.model.compressor, execution_device=torch.device("cpu"))
        assert model.model.compressor.global_level.attn.k_proj.weight.device.type == "meta"
        offloaded = model.get_video_features(*inputs, vision_batch_size=2, output_attentions=True)
    for name in ("pooler_output", "local_attentions", "global_attentions"):
        for a, b in zip(getattr(offloaded, name), getattr(expected, name), strict=True):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_gradients_flow_through_the_streamed_path():
    model = tiny_model(local_injection="coarse", global_injection="coarse")
    pixels, num_frames, ids, mask = random_inputs(model, [6], seed=8)
    streamed = model.get_video_features(pixels, num_frames, ids, mask, vision_batch_size=2).pooler_output[0]
    reference = whole_clip(model, pixels, [6], ids, mask)[0][0]
    torch.testing.assert_close(streamed, reference, atol=ATOL, rtol=0)
    parameters = [
        model.model.compressor.global_level.attn.k_proj.weight,
        model.model.vision_tower.embeddings.patch_embedding.weight,
    ]
    grads_streamed = torch.autograd.grad(streamed.square().sum(), parameters)
    grads_reference = torch.autograd.grad(reference.square().sum(), parameters)
    for a, b in zip(grads_streamed, grads_reference):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_state_rejects_wrong_frame_counts(model):
    compressor = model.model.compressor
    features = torch.zeros(3, 5, 5, 64)
    with pytest.raises(ValueError, match="2 frames"):
        compressor(features, features, torch.zeros(64), state=HicomCompressorState((2, 5, 5)))
    state = HicomCompressorState((4, 5, 5))
    assert compressor(features, features, torch.zeros(64), state=state) is None  # 3 of 4 frames: not done
    with pytest.raises(ValueError, match="4x5 grid"):
        compressor(features[:1, :4, :4], features[:1, :4, :4], torch.zeros(64), state=HicomCompressorState((4, 4, 5)))


# --- pieces of the optimized maths against their plain definitions ----------------------------------------------


@pytest.mark.parametrize("in_size", [1, 2, 5, 9, 10, 27, 33, 128])
@pytest.mark.parametrize("out_size", [1, 2, 3, 9, 32])
def test_linear_taps_are_interpolates(in_size, out_size):
    """`linear_taps` reproduces `interpolate(mode="linear", align_corners=False)` weights (one-hot inputs)."""
    basis = torch.eye(in_size)[None]  # channels = input positions
    expected = torch.nn.functional.interpolate(basis, size=out_size, mode="linear", align_corners=False)[0]
    low, high, weight = linear_taps(in_size, out_size)
    actual = torch.zeros(in_size, out_size)
    for out, (i0, i1, w) in enumerate(zip(low, high, weight)):
        actual[i0, out] += 1 - w
        actual[i1, out] += w
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=0)


def test_online_softmax_survives_large_score_ranges(model):
    """Later chunks with far larger scores rescale earlier sums: compare with a float64 softmax."""
    attn = model.model.compressor.global_level.attn
    generator = torch.Generator().manual_seed(9)
    features = torch.randn(12, 5, 5, 64, generator=generator) * torch.linspace(1, 60, 12)[:, None, None, None]
    queries = torch.randn(4, 64, generator=generator)
    tables = [sincos_embedding_1d(n, 64) for n in (12, 5, 5)]
    with torch.no_grad():
        state = attn.new_state((12, 5, 5), features.device)
        results = [attn(queries, piece, state) for piece in features.split(5)]
        actual = results[-1][0]
        attn64 = attn.double()
        try:
            grid = torch.meshgrid(*(torch.arange(n) for n in (12, 5, 5)), indexing="ij")
            kv = (features.double() + sum(t.double()[g] for t, g in zip(tables, grid))).reshape(-1, 64)
            heads, head_dim = attn.num_heads, attn.head_dim
            q = attn64.q_proj(queries.double()).view(4, heads, head_dim).transpose(0, 1)
            k = attn64.k_proj(kv).view(-1, heads, head_dim).transpose(0, 1)
            v = attn64.v_proj(kv).view(-1, heads, head_dim).transpose(0, 1)
            weights = ((q @ k.transpose(1, 2)) * head_dim**-0.5).softmax(-1)
            expected = attn64.out_proj((weights @ v).transpose(0, 1).reshape(4, 64))
        finally:
            attn.float()
    torch.testing.assert_close(actual.double(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("frames, chunk", [(1, 1), (5, 2), (10, 3), (10, 4), (13, 5)])
def test_streamed_path_equals_literal_definition(mode_model, frames, chunk):
    pixels, num_frames, ids, mask = random_inputs(mode_model, [frames], seed=10 + frames)
    with torch.no_grad():
        features, embeds = mode_model.model.encode_frames(pixels)
        instruct = instruct_embeddings(mode_model, ids, mask)[0]
        expected = reference_compress(mode_model, features, embeds, instruct)
        actual = mode_model.get_video_features(pixels, num_frames, ids, mask, vision_batch_size=chunk).pooler_output[0]
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=1e-5)


def test_window_index_matches_windows_for_overlapping_temporal_split():
    index = window_index(10, 5, 5, 4, 3)
    frames = (index // 25)[:, 0, 0]
    assert [sorted(set(row.tolist())) for row in frames] == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]


def test_half_precision_rows_are_converted_in_blocks_with_float32_results(monkeypatch):
    """Half-precision features are converted to float32 a block of rows at a time (bounded scratch memory); the
    products equal those of the whole float32 copy."""
    from modeling_hicom import compressor_hicom

    generator = torch.Generator().manual_seed(11)
    rows = torch.randn(50, 16, generator=generator).bfloat16()
    queries, weights = torch.randn(3, 16, generator=generator), torch.rand(50, 3, generator=generator)
    monkeypatch.setattr(compressor_hicom, "FLOAT32_ROWS", 7)
    scores = compressor_hicom.float32_scores(rows, queries)
    pooled = compressor_hicom.float32_weighted_sum(weights, rows)
    assert scores.dtype == pooled.dtype == torch.float32
    torch.testing.assert_close(scores, rows.float() @ queries.T, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, weights.T @ rows.float(), atol=1e-5, rtol=1e-5)
