"""HICom's hybrid-level, instruction-conditioned token compressor.

For one video it turns SigLIP features `F` (values, layer -2), patch embeddings `E` (keys, in SigLIP's joint
text-image space) and the instruction embedding `g` (`instruct_embeds`) into `ceil(T/kt)*ceil(H/ks)*ceil(W/ks)` local tokens plus
`num_global_queries` global tokens. Every variant the authors' code can build is computed here: per level, the
instruction injection (`off`, `direct`, `coarse`, `fine`), the gated adapters and SigLIP-style ("CLIP scale")
attention; either level may be absent. `docs/variants.md` describes each. Every attention's softmax and dot products
run in float32, whatever the weights' dtype, so bf16/fp16 models keep the reference's selection of patches.

Every weight is used inside the `forward` of the module that owns it, so accelerate's hooks (device maps, CPU and disk
offload) load it there. A video's frames may arrive a chunk at a time (the model compresses each chunk as soon as the
vision tower has encoded it): each call then carries a `HicomCompressorState`. docs/architecture.md derives the maths.
"""

import functools
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import nn
from transformers.activations import ACT2FN


def window_starts(length: int, kernel: int) -> tuple[list[int], int]:
    """Start positions and size of the local windows along one axis of `length` positions.

    Reproduces the reference's balanced split: `G = ceil(n/k)` windows of `k` positions where windows of nominal size
    `k-1` start one position earlier (so neighbours overlap by one). Where that split is not well defined (the
    reference crashes, e.g. 5, 6 or 9 frames with k = 4) the G windows are spread evenly instead.
    """
    if length <= kernel:
        return [0], length
    num = -(-length // kernel)
    if length % kernel == 0:
        return [i * kernel for i in range(num)], kernel
    full = length % num or num
    if num * (kernel - 1) + full == length:
        starts, position = [], 0
        for i in range(num):
            size = kernel if i < full else kernel - 1
            starts.append(position if size == kernel else position - 1)
            position += size
        return starts, kernel
    return [round(i * (length - kernel) / (num - 1)) for i in range(num)], kernel


def window_index(num_frames: int, height: int, width: int, temporal_kernel: int, spatial_kernel: int) -> torch.Tensor:
    """Flat positions (into the `T*H*W` grid) of every local window: a long tensor `(T', H', W', kt*ks*ks)`."""
    axes = []
    for length, kernel in ((num_frames, temporal_kernel), (height, spatial_kernel), (width, spatial_kernel)):
        starts, size = window_starts(length, kernel)
        axes.append(torch.tensor(starts)[:, None] + torch.arange(size)[None, :])
    t, h, w = axes
    index = (t[:, None, None, :, None, None] * height + h[None, :, None, None, :, None]) * width
    index = index + w[None, None, :, None, None, :]
    return index.flatten(3)


def linear_taps(in_size: int, out_size: int) -> tuple[list[int], list[int], list[float]]:
    """Source positions `i0`, `i1` and weight `l1` of `align_corners=False` linear interpolation along one axis.

    The same taps as `torch.nn.functional.interpolate(..., mode="(bi|tri)linear", align_corners=False)` with an
    explicit `size`: output `o` is `(1 - l1) * x[i0] + l1 * x[i1]`. Lets the local level build the trilinear queries of
    a few output frames from only the input frames they read (frames arrive a chunk at a time).
    """
    # In float32 like PyTorch's kernel (`scale = in / out`, `source = scale * (o + 0.5) - 0.5`, clamped at 0).
    scale = torch.tensor(in_size, dtype=torch.float32) / out_size
    sources = (scale * (torch.arange(out_size, dtype=torch.float32) + 0.5) - 0.5).clamp(min=0)
    low, high, weight = [], [], []
    for source in sources.tolist():
        index = min(int(source), in_size - 1)
        low.append(index)
        high.append(index + 1 if index < in_size - 1 else index)
        weight.append(min(max(source - index, 0.0), 1.0))
    return low, high, weight


@functools.lru_cache(maxsize=16)
def sincos_embedding_1d(positions: int, dim: int) -> torch.Tensor:
    """`(positions, dim)` float32: sin on even channels, cos on odd ones, angle `pos / 10000^(2*(i//2)/dim)`.

    Cached (videos mostly share their grid; callers never modify the table)."""
    channel = torch.arange(dim, dtype=torch.float32)
    inverse_frequency = 1.0 / (10000 ** (2 * torch.div(channel, 2, rounding_mode="floor") / dim))
    angle = torch.arange(positions, dtype=torch.float32)[:, None] * inverse_frequency[None, :]
    return torch.where(channel.long() % 2 == 0, angle.sin(), angle.cos())


class HicomMLP(nn.Module):
    """Linear -> activation -> Linear, the shape of every small network of the compressor."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int, hidden_act: str):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, hidden_features)
        self.act = ACT2FN[hidden_act]
        self.linear_2 = nn.Linear(hidden_features, out_features)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(hidden_states)))


class HicomAdapter(nn.Module):
    """Gated residual adapter `(1 - a) * x + a * LN(proj(x))`; the gate starts at 0, i.e. the identity."""

    def __init__(self, proj: nn.Module, dim: int):
        super().__init__()
        self.proj = proj
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate = self.gate.to(hidden_states.dtype)
        return (1 - gate) * hidden_states + gate * self.norm(self.proj(hidden_states))


def _mlp_adapter(enabled: bool, dim: int, hidden_act: str) -> nn.Module:
    """The key, value and instruction adapters: an MLP `proj` (the query adapter's is a bias-free linear)."""
    return HicomAdapter(HicomMLP(dim, dim, dim, hidden_act), dim) if enabled else nn.Identity()


def _l2_normalize(hidden_states: torch.Tensor) -> torch.Tensor:
    return hidden_states / hidden_states.norm(p=2, dim=-1, keepdim=True)


class HicomAttention(nn.Module):
    """Multi-head cross-attention with biased q/k/v/out projections and scale `head_dim^-0.5`, softmax in float32.

    The attention of fine injection (over the instruction's tokens). The global level's attention has the same
    weights and maths, computed another way (`HicomGlobalAttention`).
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, queries: torch.Tensor, keys_values: torch.Tensor) -> torch.Tensor:
        """`queries (Q, D)` attend over `keys_values (N, D)` (no mask) -> `(Q, D)`."""
        heads, head_dim = self.num_heads, self.head_dim
        q = self.q_proj(queries).float().view(-1, heads, head_dim).transpose(0, 1)
        k = self.k_proj(keys_values).float().view(-1, heads, head_dim).transpose(0, 1)
        v = self.v_proj(keys_values).float().view(-1, heads, head_dim).transpose(0, 1)
        weights = (q @ k.transpose(1, 2) * head_dim**-0.5).softmax(dim=-1)
        attended = (weights @ v).transpose(0, 1).reshape(queries.shape[0], -1)
        return self.out_proj(attended.to(queries.dtype))


class HicomInjection(nn.Module):
    """Builds one level's queries from the instruction embedding `g` (`instruct_embeds`).

    `g' = adapter(text2qk(g))`, then `direct`: the query is `g'`; `coarse`: FiLM of the unconditional query,
    `LN(q0 * (1 + scale) + shift)` with `scale, shift = MLP(g')`; `fine`: `LN(q0 + MHA(q0, g', g'))`, `g` one row per
    instruction token; `off`: the unconditional query alone (then `g` is not needed).
    """

    def __init__(self, mode: str, instruct_dim: int, dim: int, adapt_instruct: bool, hidden_act: str, num_heads: int):
        super().__init__()
        self.mode = mode
        if mode == "off":
            return
        self.text2qk = HicomMLP(instruct_dim, dim, dim, hidden_act) if instruct_dim != dim else nn.Identity()
        self.instruct_adapter = _mlp_adapter(adapt_instruct, dim, hidden_act)
        if mode == "coarse":
            self.film = HicomMLP(dim, 2 * dim, 2 * dim, hidden_act)
            self.norm = nn.LayerNorm(dim, eps=1e-6)
        elif mode == "fine":
            self.attn = HicomAttention(dim, num_heads)
            self.norm = nn.LayerNorm(dim, eps=1e-6)

    @property
    def needs_base_query(self) -> bool:
        return self.mode != "direct"

    def forward(self, instruct_embeds: torch.Tensor | None, base_query: torch.Tensor | None) -> torch.Tensor:
        """`instruct_embeds`: `(instruct_dim,)`, or `(tokens, instruct_dim)` for fine; `base_query (..., dim)` ->
        queries `(..., dim)` (`(1, dim)` for direct)."""
        if self.mode == "off":
            return base_query
        if instruct_embeds is None:
            raise ValueError(
                f"The `{self.mode}` instruction injection needs the instruction: pass `instruct_input_ids` "
                "(the processor returns them)."
            )
        expected = 2 if self.mode == "fine" else 1
        if instruct_embeds.ndim != expected:
            form = "one row per instruction token" if self.mode == "fine" else "the pooled instruction embedding"
            raise ValueError(
                f"`{self.mode}` injection needs {form}: a {expected}-D `instruct_embeds`, got shape "
                f"{tuple(instruct_embeds.shape)}."
            )
        instruct = self.instruct_adapter(self.text2qk(instruct_embeds))
        if self.mode == "direct":
            return instruct[None]
        if self.mode == "coarse":
            scale, shift = self.film(instruct).chunk(2, dim=-1)
            return self.norm(base_query * (1 + scale) + shift)
        # Every query attends over all instruction rows, padding included: the reference passes no mask.
        attended = self.attn(base_query.reshape(-1, base_query.shape[-1]), instruct).view_as(base_query)
        return self.norm(base_query + attended)


# Half-precision rows converted to float32 at once (see `float32_scores`): bounds scratch memory, not results.
FLOAT32_ROWS = 512


def float32_scores(rows: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Dot products `rows (N, D) @ queries (M, D).T -> (N, M)` in float32. Half-precision rows are converted a block
    of `FLOAT32_ROWS` at a time, so no float32 copy of a whole clip's features exists."""
    queries = queries.float().T
    if rows.dtype == torch.float32:
        return rows @ queries
    return torch.cat([block.float() @ queries for block in rows.split(FLOAT32_ROWS)])


def float32_weighted_sum(weights: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`weights (N, M).T @ rows (N, D) -> (M, D)` in float32: per column of weights, the weighted sum of the rows."""
    if rows.dtype == torch.float32:
        return weights.T @ rows
    return sum(part.T @ block.float() for part, block in zip(weights.split(FLOAT32_ROWS), rows.split(FLOAT32_ROWS)))


class CompressorOutput(NamedTuple):
    """One video's compressed tokens `(N, C)` (local tokens in `(t, h, w)` order, then global tokens) and, when asked
    for, the local weights `(T', H', W', window)` of each cell over its window (positions from `window_index`) and the
    global weights `(heads, num_global_queries, T*H*W)`; None for an absent level."""

    tokens: torch.Tensor
    local_attentions: torch.Tensor | None = None
    global_attentions: torch.Tensor | None = None


@dataclass
class LocalPlan:
    """Where one video's local cells read, from its `(T, H, W)` grid alone.

    Temporal cell `t` covers frames `window_start[t] ... + window_size`; `bias (H*W, H'*W')` is 0 where a patch lies
    in a spatial cell's window and -inf elsewhere (added to the scores, it limits each cell's softmax to its window);
    `index (T', H', W', window)` holds every window's flat positions in the `T*H*W` grid (the layout of the weights
    returned). Cell `t` is computed once frames `[first_frame[t], end_frame[t])` have arrived: its window and, with a
    non-direct injection, the two frames its trilinear query interpolates (`taps = linear_taps(T, T')`).
    """

    window_start: list[int]
    window_size: int
    bias: torch.Tensor
    index: torch.Tensor
    first_frame: list[int]
    end_frame: list[int]
    taps: tuple[list[int], list[int], list[float]]

    @property
    def spatial_cells(self) -> int:
        """Local tokens per temporal cell, `H' * W'`."""
        return self.bias.shape[1]


@functools.lru_cache(maxsize=16)
def local_plan(
    num_frames: int, height: int, width: int, temporal_kernel: int, spatial_kernel: int, reads_taps: bool
) -> LocalPlan:
    """The `LocalPlan` of a `(T, H, W)` grid; `reads_taps`: cells also read their trilinear query's frames. Cached
    (videos mostly share their grid; the plan is never modified)."""
    temporal_kernel = 1 if num_frames == 1 else temporal_kernel
    starts, size = window_starts(num_frames, temporal_kernel)
    inside = []  # per spatial axis, (length, cells): whether a position lies in a cell's window
    for length in (height, width):
        axis_starts, axis_size = window_starts(length, spatial_kernel)
        offset = torch.arange(length)[:, None] - torch.tensor(axis_starts)[None, :]
        inside.append((offset >= 0) & (offset < axis_size))
    inside = (inside[0][:, None, :, None] & inside[1][None, :, None, :]).flatten(2).flatten(0, 1)
    bias = torch.zeros(inside.shape).masked_fill(~inside, float("-inf"))
    taps = linear_taps(num_frames, len(starts))
    first, end = list(starts), [s + size for s in starts]
    if reads_taps:
        first = [min(f, t) for f, t in zip(first, taps[0])]
        end = [max(e, t + 1) for e, t in zip(end, taps[1])]
    index = window_index(num_frames, height, width, temporal_kernel, spatial_kernel)
    return LocalPlan(list(starts), size, bias, index, first, end, taps)


@dataclass
class LocalLevelState:
    """The local level's progress through a video: the next temporal cell to compute, the frames pending cells
    still read (`buffer = (features, patch_embeds)`, from frame `buffer_start`), where the tokens go."""

    plan: LocalPlan
    tokens: torch.Tensor
    next_cell: int = 0
    buffer_start: int = 0
    buffer: tuple[torch.Tensor, torch.Tensor] | None = None
    attentions: list = field(default_factory=list)


class HicomLocalCompressor(nn.Module):
    """One token per space-time window: the instruction-conditioned query attends over its window's patches."""

    # Tokens read out (MLP to the LLM width) at once: bounds the readout's activations, not results.
    readout_block = 256

    def __init__(self, config, instruct_dim: int):
        super().__init__()
        dim, act = config.vision_config.hidden_size, config.projector_hidden_act
        self.temporal_kernel = config.local_temporal_kernel
        self.spatial_kernel = config.local_spatial_kernel
        self.injection = HicomInjection(
            config.local_injection, instruct_dim, dim, config.local_adapt_instruct, act, config.num_global_heads
        )
        self.query_adapter = (
            HicomAdapter(nn.Linear(dim, dim, bias=False), dim) if config.local_adapt_query else nn.Identity()
        )
        self.key_adapter = _mlp_adapter(config.local_adapt_key, dim, act)
        self.value_adapter = _mlp_adapter(config.local_adapt_value, dim, act)
        # The reference keys on the patch embeddings only when it encodes an instruction; otherwise on the features.
        self.keys_are_patch_embeds = config.instruct_embedding != "none"
        self.clip_scale = config.local_clip_scale
        if self.clip_scale:
            self.logit_scale = nn.Parameter(torch.zeros(1))
            self.logit_bias = nn.Parameter(torch.zeros(1))
        self.readout = HicomMLP(dim, config.text_config.hidden_size, config.text_config.hidden_size, act)

    def plan(self, num_frames: int, height: int, width: int) -> LocalPlan:
        return local_plan(
            num_frames, height, width, self.temporal_kernel, self.spatial_kernel, self.injection.needs_base_query
        )

    def forward(self, features, patch_embeds, instruct_embeds, state: LocalLevelState, output_attentions=False):
        """Add the video's next frames, `features` and `patch_embeds` `(n, H, W, D)`, and write the tokens of every
        temporal cell whose frames have now all arrived into `state.tokens`."""
        plan = state.plan
        if state.buffer is not None:
            features = torch.cat([state.buffer[0], features])
            patch_embeds = torch.cat([state.buffer[1], patch_embeds])
        frames_seen = state.buffer_start + features.shape[0]
        ready = state.next_cell
        while ready < len(plan.end_frame) and plan.end_frame[ready] <= frames_seen:
            ready += 1
        if ready > state.next_cell:
            cells = range(state.next_cell, ready)
            pooled = self.attend(features, patch_embeds, instruct_embeds, plan, cells, state, output_attentions)
            first = state.next_cell * plan.spatial_cells
            for start in range(0, pooled.shape[0], self.readout_block):
                block = pooled[start : start + self.readout_block]
                state.tokens[first + start : first + start + block.shape[0]] = self.readout(block)
            state.next_cell = ready
        # Keep only the frames a pending cell reads, copied so that the chunk they came from can be freed.
        keep = plan.first_frame[ready] if ready < len(plan.first_frame) else frames_seen
        state.buffer = None
        if keep < frames_seen:
            offset = keep - state.buffer_start
            state.buffer = (features[offset:].clone(), patch_embeds[offset:].clone())
        state.buffer_start = keep

    def attend(self, features, patch_embeds, instruct_embeds, plan, cells, state, output_attentions):
        """Attention-pooled values `(len(cells) * H' * W', D)` of temporal cells `cells`, from the frames
        `state.buffer_start ...` of the video in `features`, `patch_embeds`.

        One temporal cell at a time, all its spatial cells at once: every patch of the cell's frames is scored against
        every spatial cell's query in one product, the window bias leaves each cell only its own patches, a softmax
        over positions gives the weights and one more product the weighted sums of values. The products also run over
        the patches outside each window (at zero weight): more arithmetic than a per-window gather, but a few large
        operations per temporal cell, with no copy of the patches.
        """
        dim = features.shape[-1]
        keys = patch_embeds if self.keys_are_patch_embeds else features
        # SigLIP's similarity is between unit vectors: the reference normalizes E and g before anything else.
        unit_vectors = self.clip_scale and self.keys_are_patch_embeds
        if unit_vectors and instruct_embeds is not None:
            instruct_embeds = _l2_normalize(instruct_embeds)
        queries = self.cell_queries(features, instruct_embeds, plan, cells, state.buffer_start)
        bias = plan.bias.to(features.device)
        per_cell = plan.spatial_cells
        pooled = features.new_empty(len(cells) * per_cell, dim)
        for i, cell in enumerate(cells):
            start = plan.window_start[cell] - state.buffer_start
            window_keys = keys[start : start + plan.window_size]
            if unit_vectors:
                window_keys = _l2_normalize(window_keys)
            window_keys = self.key_adapter(window_keys).flatten(0, 2)
            window_values = self.value_adapter(features[start : start + plan.window_size]).flatten(0, 2)
            cell_queries = queries[0] if queries.shape[0] == 1 else queries[i]
            logits = self.scale_scores(float32_scores(window_keys, cell_queries), dim)
            weights = (logits.view(plan.window_size, bias.shape[0], -1) + bias).flatten(0, 1).softmax(dim=0)
            pooled[i * per_cell : (i + 1) * per_cell] = float32_weighted_sum(weights, window_values)
            if output_attentions:
                # Each cell's weights at its window's positions, in `plan.index` order.
                index = plan.index[cell].flatten(0, 1).to(weights.device) - plan.window_start[cell] * bias.shape[0]
                state.attentions.append(weights.T.gather(1, index).view(1, *plan.index.shape[1:]))
        return pooled

    def cell_queries(self, features, instruct_embeds, plan, cells, frame_offset) -> torch.Tensor:
        """Queries `(1, 1, D)` (direct injection: the same for every cell) or `(len(cells), H' * W', D)`."""
        base_query = None
        if self.injection.needs_base_query:
            # Trilinear downsampling of the features gives each cell an unconditional query: linear along time over
            # the two frames it reads, then bilinear in space (separable, as `interpolate(mode="trilinear")`).
            low, high, weight = (taps[cells.start : cells.stop] for taps in plan.taps)
            weight = torch.tensor(weight, dtype=torch.float32, device=features.device)[:, None, None, None]
            low = torch.tensor(low, device=features.device) - frame_offset
            high = torch.tensor(high, device=features.device) - frame_offset
            frames = (1 - weight) * features[low].float() + weight * features[high].float()
            base_query = nn.functional.interpolate(
                frames.permute(0, 3, 1, 2), size=plan.index.shape[1:3], mode="bilinear", align_corners=False
            ).permute(0, 2, 3, 1)
            base_query = self.query_adapter(base_query.to(features.dtype))
        queries = self.injection(instruct_embeds, base_query)
        return queries[None] if queries.ndim == 2 else queries.flatten(1, 2)

    def scale_scores(self, scores: torch.Tensor, dim: int) -> torch.Tensor:
        """float32 dot products -> logits: `/ sqrt(D)`, or SigLIP's learned temperature and bias with CLIP scale."""
        if self.clip_scale:
            return scores * self.logit_scale.float().exp() + self.logit_bias.float()
        return scores / math.sqrt(dim)


class HicomKeyProjection(nn.Linear):
    """The global attention's key projection `W_k x + b_k`. With `transposed=True` it maps back through `W_k^T`
    instead (in float32, no bias): the reassociated attention scores positions with `W_k^T q` (see
    `HicomGlobalAttention`)."""

    def forward(self, hidden_states: torch.Tensor, transposed: bool = False) -> torch.Tensor:
        if transposed:
            # `x @ W` in float32, a half-precision weight converted a block of rows at a time.
            return float32_weighted_sum(hidden_states.float().T, self.weight)
        return super().forward(hidden_states)


@dataclass
class GlobalAttentionState:
    """`HicomGlobalAttention`'s running state over a clip whose frames arrive a chunk at a time (online softmax).

    `tables`: the per-axis sin-cos position tables `(T|H|W, D)`. `u (Q*heads, D)`: each (query, head)'s pre-scaled
    `W_k^T q` (with CLIP scale: `(Q, heads, head_dim)`, the normalized, scaled projected queries);
    `position_scores`: per axis, `table @ u.T`. With `peak` the largest score so far, `rows`, `columns`, `pooled` are
    sums of `exp(score - peak)` per row / per column / times the features; `frames` holds per-frame sums, each with
    the peak it was taken against. `scores` keeps every score when the weights are asked for.
    """

    num_frames: int
    tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    scores: list | None
    frames_seen: int = 0
    u: torch.Tensor | None = None
    position_scores: tuple | None = None
    peak: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    columns: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    frames: list = field(default_factory=list)


class HicomGlobalAttention(nn.Module):
    """Multi-head attention of the global queries over every position of the clip (keys and values `F + P`, `P` the
    3D sin-cos positions), with `HicomAttention`'s weights and maths, computed in an exactly reassociated form.

    With few queries, projecting all `T*H*W` positions by `W_k` and `W_v` would dominate the cost; instead positions
    are scored with `W_k^T q` (the key bias adds a per-query constant, which softmax ignores), `P` enters through
    per-axis tables (`P[t, h, w] = pt[t] + ph[h] + pw[w]` is never built), and `W_v` is applied once to the
    attention-weighted sum of positions (the weights sum to 1). The softmax is accumulated chunk by chunk, so the
    clip's features need not be kept.

    With CLIP scale (SigLIP-style attention) the projected queries and keys are L2-normalized over the full width and
    scores are `q_h . k_h * exp(logit_scale) + logit_bias`; a key's normalization follows its projection, so each
    position's key is projected (scores are not reassociated); the value side still is.
    """

    # Scores (positions x query heads, or positions x width with CLIP scale) computed at once: bounds scratch memory.
    score_block = 2**19

    def __init__(self, dim: int, num_heads: int, clip_scale: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = HicomKeyProjection(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.clip_scale = clip_scale
        if clip_scale:
            self.logit_scale = nn.Parameter(torch.zeros(1))
            self.logit_bias = nn.Parameter(torch.zeros(1))

    def new_state(self, grid, device, output_attentions=False) -> GlobalAttentionState:
        """An empty state for a clip of `grid = (T, H, W)` positions."""
        dim = self.num_heads * self.head_dim
        tables = tuple(sincos_embedding_1d(n, dim).to(device) for n in grid)
        return GlobalAttentionState(grid[0], tables, [] if output_attentions else None)

    def forward(self, queries: torch.Tensor, features: torch.Tensor, state: GlobalAttentionState):
        """Add the clip's next frames `features (n, H, W, D)` to `state`. Once every frame has arrived, returns the
        attended values `(Q, D)` for `queries (Q, D)` and, if the state keeps scores, the weights `(heads, Q, T*H*W)`;
        before that, None."""
        if state.u is None:
            self.score_queries(queries, state)
        height, width = features.shape[1:3]
        # Per position, a score for each (query, head); with CLIP scale also its projected key (the width).
        per_position = features.shape[-1] if self.clip_scale else state.u.shape[0]
        for block in features.split(max(1, self.score_block // (height * width * per_position))):
            self.accumulate(block, state)
        if state.frames_seen < state.num_frames:
            return None
        return self.attended(queries, state)

    def score_queries(self, queries: torch.Tensor, state: GlobalAttentionState) -> None:
        num_queries = queries.shape[0]
        q = self.q_proj(queries).float()
        if self.clip_scale:
            q = _l2_normalize(q) * self.logit_scale.float().exp()
            state.u = q.view(num_queries, self.num_heads, self.head_dim)
            return
        # Row (q, h) holds q_h in head h's slots and zeros elsewhere: through W_k^T it becomes W_k,h^T q_h.
        eye = torch.eye(self.num_heads, device=q.device)
        per_head = q.view(num_queries, 1, self.num_heads, self.head_dim) * eye[None, :, :, None]
        u = self.k_proj(per_head.flatten(2).flatten(0, 1), transposed=True) * self.head_dim**-0.5
        state.u = u
        state.position_scores = tuple(table @ u.T for table in state.tables)

    def accumulate(self, block: torch.Tensor, state: GlobalAttentionState) -> None:
        """Add frames `block (n, H, W, D)`: their scores, and the sums `attended` needs, against a running peak."""
        first, (count, height, width) = state.frames_seen, block.shape[:3]
        state.frames_seen += count
        rows = block.flatten(0, 2)
        if self.clip_scale:
            table_t, table_h, table_w = state.tables
            positions = table_t[first : first + count, None, None] + table_h[None, :, None] + table_w[None, None, :]
            keys = _l2_normalize(self.k_proj((block.float() + positions).to(block.dtype)).float())
            scores = torch.einsum("pnd,qnd->pqn", keys.view(-1, self.num_heads, self.head_dim), state.u)
            scores = scores.flatten(1).view(count, height, width, -1) + self.logit_bias.float()
        else:
            position_t, position_h, position_w = state.position_scores
            scores = float32_scores(rows, state.u).view(count, height, width, -1)
            scores = scores + position_t[first : first + count, None, None] + position_h[:, None] + position_w
        if state.scores is not None:
            state.scores.append(scores.flatten(0, 2))
        peak = scores.flatten(0, 2).amax(dim=0)  # (Q*heads,)
        if state.peak is not None:
            peak = torch.maximum(peak, state.peak)
        numerators = (scores - peak).exp()
        state.frames.append((peak, numerators.sum((1, 2))))
        # Every sum keeps (query, head) last: rows (H, Qh), columns (W, Qh), pooled features (D, Qh).
        sums = (
            numerators.sum((0, 2)), numerators.sum((0, 1)), float32_weighted_sum(numerators.flatten(0, 2), rows).T
        )
        if state.peak is not None:
            rescale = (state.peak - peak).exp()  # earlier sums were taken against the older, smaller peak
            sums = tuple(new + old * rescale for new, old in zip(sums, (state.rows, state.columns, state.pooled)))
        state.rows, state.columns, state.pooled = sums
        state.peak = peak

    def attended(self, queries: torch.Tensor, state: GlobalAttentionState):
        num_queries, dim = queries.shape
        table_t, table_h, table_w = state.tables
        frames = torch.cat([per_frame * (peak - state.peak).exp() for peak, per_frame in state.frames])
        # Positions: sum_p w_p P_p = sum_t (sum_hw w) pt[t] + sum_h (...) ph[h] + sum_w (...) pw[w].
        pooled = state.pooled.T + frames.T @ table_t + state.rows.T @ table_h + state.columns.T @ table_w
        pooled = pooled / frames.sum(0)[:, None]  # (Q*heads, D): each (query, head)'s weighted mean of F + P
        # W_v on every (query, head) row gives all heads' values; head h's row keeps head h's.
        values = self.v_proj(pooled.view(num_queries, self.num_heads, dim).to(queries.dtype))
        values = values.view(num_queries, self.num_heads, self.num_heads, self.head_dim).diagonal(dim1=1, dim2=2)
        output = self.out_proj(values.transpose(1, 2).reshape(num_queries, dim))
        attentions = None
        if state.scores is not None:
            weights = torch.cat(state.scores).softmax(dim=0)  # (T*H*W, Q*heads)
            attentions = weights.T.view(num_queries, self.num_heads, -1).transpose(0, 1)
        return output, attentions


@dataclass
class GlobalLevelState:
    """The global level's progress: its queries (from the first chunk on) and its attention's state."""

    attention: GlobalAttentionState
    queries: torch.Tensor | None = None


class HicomGlobalCompressor(nn.Module):
    """`num_global_queries` tokens that attend over the whole clip (with 3D sin-cos positions)."""

    def __init__(self, config, instruct_dim: int):
        super().__init__()
        dim, act = config.vision_config.hidden_size, config.projector_hidden_act
        self.num_queries = config.num_global_queries
        self.query = nn.Parameter(torch.zeros(config.num_global_queries, dim))
        self.injection = HicomInjection(
            config.global_injection, instruct_dim, dim, config.global_adapt_instruct, act, config.num_global_heads
        )
        self.attn = HicomGlobalAttention(dim, config.num_global_heads, clip_scale=config.global_clip_scale)
        self.readout = HicomMLP(dim, config.text_config.hidden_size, config.text_config.hidden_size, act)

    def forward(self, features, instruct_embeds, state: GlobalLevelState):
        """Add the clip's next frames `features (n, H, W, D)`; once all have arrived, returns the tokens
        `(num_global_queries, C)` and the attention weights (or None), else None."""
        if state.queries is None:
            # Direct injection gives every global query the same vector: one is computed, and repeated at the end.
            base_query = self.query if self.injection.needs_base_query else None
            state.queries = self.injection(instruct_embeds, base_query).to(features.dtype)
        result = self.attn(state.queries, features, state.attention)
        if result is None:
            return None
        attended, attentions = result
        tokens = self.readout(state.queries + attended)
        if tokens.shape[0] != self.num_queries:
            tokens = tokens.expand(self.num_queries, -1)
            attentions = attentions.expand(-1, self.num_queries, -1) if attentions is not None else None
        return tokens, attentions


@dataclass
class HicomCompressorState:
    """One video's compression while its frames arrive a chunk at a time: create it with the video's `(T, H, W)`
    patch grid and pass it to every `HicomCompressor` call for that video."""

    grid: tuple[int, int, int]
    output_attentions: bool | None = None
    frames_seen: int = 0
    tokens: torch.Tensor | None = None
    local_level: LocalLevelState | None = None
    global_level: GlobalLevelState | None = None


class HicomCompressor(nn.Module):
    """Local tokens (in `t, h, w` order) followed by global tokens, one video at a time. Either level may be absent
    (`use_local_level=False`, `num_global_queries=0`)."""

    def __init__(self, config):
        super().__init__()
        instruct_dim = config.instruct_config.projection_size
        self.local_level = HicomLocalCompressor(config, instruct_dim) if config.use_local_level else None
        self.global_level = HicomGlobalCompressor(config, instruct_dim) if config.num_global_queries > 0 else None

    @property
    def needs_instruct(self) -> bool:
        levels = [level for level in (self.local_level, self.global_level) if level is not None]
        return any(level.injection.mode != "off" for level in levels)

    def forward(self, features, patch_embeds, instruct_embeds=None, output_attentions=False, state=None):
        """Compress one video.

        Args:
            features, patch_embeds: `(T, H, W, D)` SigLIP features (layer -2) and patch embeddings of the whole clip;
                with `state`, of its next `n` frames.
            instruct_embeds: `(instruct_dim,)`, the pooled instruction embedding, or `(tokens, instruct_dim)`, one
                row per instruction token (fine injection), or None (a model that injects no instruction).
            output_attentions: also return the attention weights (see `CompressorOutput`).
            state: a `HicomCompressorState` to feed the video a chunk at a time: local cells are computed as soon as
                their frames have arrived, keeping at most a chunk plus `kt - 1` frames, and the global level
                accumulates its softmax, so memory never holds the clip's features. Same results as one call.

        Returns:
            `CompressorOutput` once every frame of the video has arrived; None after an earlier chunk.
        """
        if state is None:
            state = HicomCompressorState(tuple(features.shape[:3]))
        num_frames, height, width = state.grid
        count = features.shape[0]
        if tuple(features.shape[1:3]) != (height, width) or patch_embeds.shape != features.shape:
            raise ValueError(
                f"Expected `features` and `patch_embeds` of the same shape, frames of a {height}x{width} grid; got "
                f"{tuple(features.shape)} and {tuple(patch_embeds.shape)}."
            )
        if state.frames_seen + count > num_frames:
            raise ValueError(f"The video has {num_frames} frames; got {state.frames_seen + count}.")
        if state.frames_seen == 0:
            self.start(state, features, output_attentions)
        elif output_attentions != state.output_attentions:
            raise ValueError("`output_attentions` must be the same in every call for a video.")
        state.frames_seen += count
        if self.local_level is not None:
            self.local_level(features, patch_embeds, instruct_embeds, state.local_level, output_attentions)
        global_output = None
        if self.global_level is not None:
            global_output = self.global_level(features, instruct_embeds, state.global_level)
        if state.frames_seen < num_frames:
            return None
        tokens, local_attentions, global_attentions = state.tokens, None, None
        if self.local_level is not None and output_attentions:
            local_attentions = torch.cat(state.local_level.attentions).view(*state.local_level.plan.index.shape)
        if global_output is not None:
            global_tokens, global_attentions = global_output
            if tokens is None:
                tokens = global_tokens
            else:
                tokens[-self.global_level.num_queries :] = global_tokens
        return CompressorOutput(tokens, local_attentions, global_attentions)

    def start(self, state: HicomCompressorState, features: torch.Tensor, output_attentions: bool) -> None:
        """Plan the video's compression and allocate its tokens (local ones are written as their cells complete)."""
        state.output_attentions = output_attentions
        if self.local_level is not None:
            plan = self.local_level.plan(*state.grid)
            num_tokens = plan.index.shape[:3].numel()
            if self.global_level is not None:
                num_tokens += self.global_level.num_queries
            weight = self.local_level.readout.linear_2.weight  # its dtype and width (no data is read)
            state.tokens = features.new_empty(num_tokens, weight.shape[0], dtype=weight.dtype)
            state.local_level = LocalLevelState(plan, state.tokens)
        if self.global_level is not None:
            attention = self.global_level.attn.new_state(state.grid, features.device, output_attentions)
            state.global_level = GlobalLevelState(attention)


__all__ = [
    "CompressorOutput",
    "HicomCompressor",
    "HicomCompressorState",
    "linear_taps",
    "window_index",
    "window_starts",
    "sincos_embedding_1d",
]
