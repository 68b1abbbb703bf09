"""HICom's hybrid-level, instruction-conditioned token compressor.

For one video it turns SigLIP features `F` (values, layer -2), patch embeddings `E` (keys, in SigLIP's joint
text-image space) and the instruction embedding `g` into `ceil(T/kt)*ceil(H/ks)*ceil(W/ks)` local tokens plus
`num_global_queries` global tokens. Every variant the authors' code can build is computed here: per level, the
instruction injection (`off`, `direct`, `coarse`, `fine`), the gated adapters and SigLIP-style ("CLIP scale")
attention; either level may be absent. `docs/variants.md` describes each. Every attention's softmax and dot products
run in float32, whatever the weights' dtype, so bf16/fp16 models keep the reference's selection of patches.
"""

import math
from dataclasses import dataclass, field

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


def sincos_embedding_1d(positions: int, dim: int) -> torch.Tensor:
    """`(positions, dim)` float32: sin on even channels, cos on odd ones, angle `pos / 10000^(2*(i//2)/dim)`."""
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
    """Builds one level's queries from the instruction embedding `g`.

    `g' = adapter(text2qk(g))`, then `direct`: the query is `g'`; `coarse`: FiLM of the unconditional query,
    `LN(q0 * (1 + scale) + shift)` with `scale, shift = MLP(g')`; `fine`: `LN(q0 + MHA(q0, g', g'))`, `g` one row per
    instruction token; `off`: the unconditional query alone (then `g` is not needed).
    """

    def __init__(self, mode: str, guide_dim: int, dim: int, adapt_guide: bool, hidden_act: str, num_heads: int):
        super().__init__()
        self.mode = mode
        if mode == "off":
            return
        self.text2qk = HicomMLP(guide_dim, dim, dim, hidden_act) if guide_dim != dim else nn.Identity()
        self.guide_adapter = _mlp_adapter(adapt_guide, dim, hidden_act)
        if mode == "coarse":
            self.film = HicomMLP(dim, 2 * dim, 2 * dim, hidden_act)
            self.norm = nn.LayerNorm(dim, eps=1e-6)
        elif mode == "fine":
            self.attn = HicomAttention(dim, num_heads)
            self.norm = nn.LayerNorm(dim, eps=1e-6)

    @property
    def needs_base_query(self) -> bool:
        return self.mode != "direct"

    def forward(self, guide: torch.Tensor | None, base_query: torch.Tensor | None) -> torch.Tensor:
        """`guide`: `(guide_dim,)`, or `(tokens, guide_dim)` for fine; `base_query (..., dim)` -> queries `(..., dim)`
        (`(1, dim)` for direct)."""
        if self.mode == "off":
            return base_query
        if guide is None:
            raise ValueError(
                f"The `{self.mode}` instruction injection needs the instruction: pass `instruct_input_ids` "
                "(the processor returns them)."
            )
        expected = 2 if self.mode == "fine" else 1
        if guide.ndim != expected:
            form = "one row per instruction token" if self.mode == "fine" else "the pooled instruction embedding"
            raise ValueError(
                f"`{self.mode}` injection needs {form}: a {expected}-D `guide`, got shape {tuple(guide.shape)}."
            )
        guide = self.guide_adapter(self.text2qk(guide))
        if self.mode == "direct":
            return guide[None]
        if self.mode == "coarse":
            scale, shift = self.film(guide).chunk(2, dim=-1)
            return self.norm(base_query * (1 + scale) + shift)
        # Every query attends over all instruction rows, padding included: the reference passes no mask.
        attended = self.attn(base_query.reshape(-1, base_query.shape[-1]), guide).view_as(base_query)
        return self.norm(base_query + attended)


@dataclass
class LevelOutput:
    """One level's tokens `(N, C)` and its attention weights (see `HicomCompressor.forward`)."""

    tokens: torch.Tensor
    attentions: torch.Tensor | None = None


@dataclass
class LocalPlan:
    """Where one video's local cells read: `index (T', H', W', window)` flat positions into the `T*H*W` grid, and for
    each temporal cell the frames `[first_frame[t], end_frame[t])` it needs (its window, and with a non-direct
    injection also the two frames its trilinear query interpolates); `taps` are `linear_taps(T, T')`."""

    index: torch.Tensor
    first_frame: list[int]
    end_frame: list[int]
    taps: tuple[list[int], list[int], list[float]]


class HicomLocalCompressor(nn.Module):
    """One token per space-time window: the instruction-conditioned query attends over its window's patches."""

    # Cells attended / read out at once: bound scratch memory (and keep gathers cache-sized), not results.
    attention_block = 128
    readout_block = 256

    def __init__(self, config, guide_dim: int):
        super().__init__()
        dim, act = config.vision_config.hidden_size, config.projector_hidden_act
        self.temporal_kernel = config.local_temporal_kernel
        self.spatial_kernel = config.local_spatial_kernel
        self.injection = HicomInjection(
            config.local_injection, guide_dim, dim, config.local_adapt_guide, act, config.num_global_heads
        )
        self.query_adapter = (
            HicomAdapter(nn.Linear(dim, dim, bias=False), dim) if config.local_adapt_query else nn.Identity()
        )
        self.key_adapter = _mlp_adapter(config.local_adapt_key, dim, act)
        self.value_adapter = _mlp_adapter(config.local_adapt_value, dim, act)
        # The reference keys on the patch embeddings only when it encodes an instruction; otherwise on the features.
        self.keys_are_patch_embeds = config.instruction_embedding != "none"
        self.clip_scale = config.local_clip_scale
        if self.clip_scale:
            self.logit_scale = nn.Parameter(torch.zeros(1))
            self.logit_bias = nn.Parameter(torch.zeros(1))
        self.readout = HicomMLP(dim, config.text_config.hidden_size, config.text_config.hidden_size, act)

    def plan(self, num_frames: int, height: int, width: int) -> LocalPlan:
        temporal_kernel = 1 if num_frames == 1 else self.temporal_kernel
        index = window_index(num_frames, height, width, temporal_kernel, self.spatial_kernel)
        starts, size = window_starts(num_frames, temporal_kernel)
        taps = linear_taps(num_frames, len(starts))
        first, end = list(starts), [s + size for s in starts]
        if self.injection.needs_base_query:
            first = [min(f, t) for f, t in zip(first, taps[0])]
            end = [max(e, t + 1) for e, t in zip(end, taps[1])]
        return LocalPlan(index, first, end, taps)

    def forward(self, features, patch_embeds, guide, output_attentions=False) -> LevelOutput:
        plan = self.plan(*features.shape[:3])
        return self.compress_cells(plan, 0, len(plan.first_frame), features, patch_embeds, 0, guide, output_attentions)

    def compress_cells(
        self, plan, first_cell, end_cell, features, patch_embeds, frame_offset, guide, output_attentions=False, out=None
    ) -> LevelOutput:
        """Tokens of temporal cells `[first_cell, end_cell)` from `features`/`patch_embeds` `(n, H, W, D)`, which
        hold frames `frame_offset ...` of the video (at least every frame those cells need, see `LocalPlan`).
        `out`, if given, is the `(cells, C)` tensor the tokens are written to (and returned as)."""
        _, height, width, dim = features.shape
        keys = patch_embeds if self.keys_are_patch_embeds else features
        if self.clip_scale and self.keys_are_patch_embeds:
            # SigLIP's similarity is between unit vectors: the reference normalizes E and g before anything else.
            keys = _l2_normalize(keys)
            guide = _l2_normalize(guide) if guide is not None else None
        index = plan.index[first_cell:end_cell].to(features.device) - frame_offset * height * width
        grid = plan.index.shape[1:3]

        base_query = None
        if self.injection.needs_base_query:
            # Trilinear downsampling of the features gives each cell an unconditional query: linear along time over
            # the two frames it reads, then bilinear in space (separable, as `interpolate(mode="trilinear")`).
            low, high, weight = (taps[first_cell:end_cell] for taps in plan.taps)
            weight = torch.tensor(weight, dtype=torch.float32, device=features.device)[:, None, None, None]
            low = torch.tensor(low, device=features.device) - frame_offset
            high = torch.tensor(high, device=features.device) - frame_offset
            frames = (1 - weight) * features[low].float() + weight * features[high].float()
            base_query = nn.functional.interpolate(
                frames.permute(0, 3, 1, 2), size=grid, mode="bilinear", align_corners=False
            ).permute(0, 2, 3, 1)
            base_query = self.query_adapter(base_query.to(features.dtype))
        query = self.injection(guide, base_query).float()  # (1, dim) or (cells, H', W', dim)

        keys = self.key_adapter(keys).flatten(0, 2)
        values = self.value_adapter(features).flatten(0, 2)
        cell_grid = index.shape[:3]
        index, query = index.flatten(0, 2), query.flatten(0, -2)
        # Cells go through in blocks, which bound the scratch memory (the readout MLP's activations are the largest
        # tensors); within a block, gather one window offset at a time for a cache-sized sub-block of cells:
        # vectorized over windows, and never a (cells, window, dim) copy.
        tokens, weights = out, []
        for start in range(0, index.shape[0], self.readout_block):
            block = index[start : start + self.readout_block]
            block_query = query if query.shape[0] == 1 else query[start : start + self.readout_block]
            pooled = torch.empty(block.shape[0], dim, device=features.device)
            for sub in range(0, block.shape[0], self.attention_block):
                cells = block[sub : sub + self.attention_block]
                cell_query = block_query if block_query.shape[0] == 1 else block_query[sub : sub + cells.shape[0]]
                scores = torch.stack(
                    [(keys[cells[:, k]].float() * cell_query).sum(-1) for k in range(cells.shape[-1])], dim=-1
                )
                cell_weights = self.scale_scores(scores).softmax(dim=-1)
                pooled[sub : sub + cells.shape[0]] = sum(
                    cell_weights[:, k, None] * values[cells[:, k]].float() for k in range(cells.shape[-1])
                )
                if output_attentions:
                    weights.append(cell_weights)
            pooled = pooled.to(features.dtype)  # frees the float32 copy before the readout's activations exist
            block_tokens = self.readout(pooled)
            del pooled
            if tokens is None and block.shape[0] == index.shape[0]:
                tokens = block_tokens
            else:
                if tokens is None:
                    tokens = block_tokens.new_empty(index.shape[0], block_tokens.shape[-1])
                tokens[start : start + block.shape[0]] = block_tokens
        weights = torch.cat(weights).view(*cell_grid, -1) if output_attentions else None
        return LevelOutput(tokens, weights)

    def scale_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """float32 dot products -> logits: `/ sqrt(D)`, or SigLIP's learned temperature and bias with CLIP scale."""
        if self.clip_scale:
            return scores * self.logit_scale.float().exp() + self.logit_bias.float()
        return scores / math.sqrt(self.readout.linear_1.in_features)


@dataclass
class GlobalAttentionState:
    """Running state of `HicomGlobalAttention` over a clip whose frames arrive a chunk at a time (online softmax).

    `u (Q*heads, D)`: the reassociated, pre-scaled key projection of each (query, head); `position_scores`: per axis,
    `table @ u.T` (with CLIP scale: `u (Q, heads, head_dim)` the normalized, scaled projected queries, and no position
    scores). With `peak` the largest score so far, `total`, `pooled`, `rows`, `columns` are the sums of
    `exp(score - peak)` (over all positions, against the features, per row, per column); `frames` holds per-frame sums
    with the peak they were taken against. `scores` keeps every score only when the weights are asked for.
    """

    u: torch.Tensor
    tables: list
    position_scores: list | None
    scores: list | None
    frames_seen: int = 0
    peak: torch.Tensor | None = None
    total: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    columns: torch.Tensor | None = None
    frames: list = field(default_factory=list)


class HicomGlobalAttention(HicomAttention):
    """`HicomAttention` of the global queries over every position of the clip, keys and values `F + P`.

    Computed in an exactly reassociated form: with few queries, projecting all `T*H*W` positions with `W_k` and `W_v`
    dominates the cost, so positions are scored with `W_k^T q` (the key bias adds a per-query constant that softmax
    ignores) and `W_v` is applied once to the attention-weighted sum of positions (the weights sum to 1). The softmax
    is accumulated chunk by chunk (`begin` / `update` / `finish`), so the clip's features need not be kept.

    With CLIP scale (SigLIP-style attention) the projected queries and keys are L2-normalized over the full width and
    scores are `q_h . k_h * exp(logit_scale) + logit_bias`. A key's normalization follows its projection, so scores
    cannot be reassociated: each position's key is projected (the plain path). The value side stays reassociated,
    which is exact for any weights summing to 1.
    """

    # Positions converted to float32 at once (whole frames per step, frames cut into pieces of this many positions):
    # bounds the scratch memory of half-precision models, not the results.
    position_block = 256

    def __init__(self, dim: int, num_heads: int, clip_scale: bool = False):
        super().__init__(dim, num_heads)
        self.clip_scale = clip_scale
        if clip_scale:
            self.logit_scale = nn.Parameter(torch.zeros(1))
            self.logit_bias = nn.Parameter(torch.zeros(1))

    def forward(self, queries, features, position_embeds, output_attentions=False):
        """`queries (Q, D)`, `features (T, H, W, D)`, `position_embeds`: per-axis sin-cos tables `(T|H|W, D)`.

        Keys/values are `features + P` with `P[t, h, w] = pt[t] + ph[h] + pw[w]`; `P` is never materialized.
        Returns `(Q, D)` and, if asked, the weights `(heads, Q, T*H*W)`.
        """
        state = self.begin(queries, position_embeds, output_attentions)
        self.update(state, features)
        return self.finish(state, queries)

    def begin(self, queries, position_embeds, output_attentions=False) -> GlobalAttentionState:
        num_queries, dim = queries.shape
        heads, head_dim = self.num_heads, self.head_dim
        tables = [table.to(queries.device) for table in position_embeds]
        scores = [] if output_attentions else None
        if self.clip_scale:
            q = _l2_normalize(self.q_proj(queries).float()) * self.logit_scale.float().exp()
            return GlobalAttentionState(q.view(num_queries, heads, head_dim), tables, None, scores)
        q = self.q_proj(queries).float().view(num_queries, heads, head_dim)
        k_weight = self.k_proj.weight.view(heads, head_dim, dim)
        # u[q, h] = W_k,h^T q_h: a position's score is its feature row dotted with u. (One head's weights in float32
        # at a time: no float32 copy of the whole matrix for half-precision models.)
        u = torch.stack([q[:, h] @ k_weight[h].float() for h in range(heads)], dim=1)
        u = u.reshape(num_queries * heads, dim) * head_dim**-0.5
        return GlobalAttentionState(u, tables, [t @ u.T for t in tables], scores)

    def update(self, state: GlobalAttentionState, features: torch.Tensor) -> None:
        """Add the next frames `features (n, H, W, D)` of the clip."""
        _, height, width, dim = features.shape
        for block in features.split(max(1, self.position_block // (height * width))):
            first, count = state.frames_seen, block.shape[0]
            state.frames_seen += count
            pieces = block.reshape(-1, dim).split(self.position_block)  # views: `.float()` copies one piece at a time
            if self.clip_scale:
                scores = self.normalized_scores(state, block, first)
            else:
                pt, ph, pw = state.position_scores
                scores = torch.cat([piece.float() @ state.u.T for piece in pieces]).view(count, height, width, -1)
                scores = scores + pt[first : first + count, None, None] + ph[None, :, None] + pw[None, None, :]
            if state.scores is not None:
                state.scores.append(scores.flatten(0, 2))
            peak = scores.flatten(0, 2).max(dim=0).values  # (Q*heads,)
            if state.peak is not None:
                peak = torch.maximum(peak, state.peak)
            numerators = (scores - peak).exp()
            state.frames.append((peak, numerators.sum((1, 2))))
            weights = numerators.flatten(0, 2).split(self.position_block)
            # Every sum keeps (query, head) last: total (Qh,), pooled (D, Qh), rows (H, Qh), columns (W, Qh).
            parts = (
                numerators.sum((0, 1, 2)),
                sum(part.T @ piece.float() for part, piece in zip(weights, pieces)).T,
                numerators.sum((0, 2)),
                numerators.sum((0, 1)),
            )
            if state.peak is not None:
                rescale = (state.peak - peak).exp()  # earlier sums were taken against the older, smaller peak
                previous = (state.total, state.pooled, state.rows, state.columns)
                parts = tuple(part + old * rescale for part, old in zip(parts, previous))
            state.peak = peak
            state.total, state.pooled, state.rows, state.columns = parts
            del pieces, scores, numerators, weights  # before the next block's are made

    def normalized_scores(self, state: GlobalAttentionState, block: torch.Tensor, first: int) -> torch.Tensor:
        """CLIP-scale scores `(n, H, W, Q*heads)` of frames `first ... first + n` (`block (n, H, W, D)`), plainly:
        keys `normalize(W_k (F + P) + b_k)` per position, against the normalized, scaled queries in `state.u`."""
        table_t, table_h, table_w = state.tables
        count = block.shape[0]
        positions = table_t[first : first + count, None, None] + table_h[None, :, None] + table_w[None, None, :]
        keys = _l2_normalize(self.k_proj((block.float() + positions).to(block.dtype)).float())
        keys = keys.unflatten(-1, (self.num_heads, self.head_dim))
        scores = torch.einsum("thwnd,qnd->thwqn", keys, state.u).flatten(-2)
        return scores + self.logit_bias.float()

    def finish(self, state: GlobalAttentionState, queries: torch.Tensor):
        """`(Q, D)` attended values and, if `begin` was asked for them, the weights `(heads, Q, T*H*W)`."""
        num_queries, dim = queries.shape
        table_t, table_h, table_w = state.tables
        frames = torch.cat([per_frame * (peak - state.peak).exp() for peak, per_frame in state.frames])
        # Positions: sum_p w_p P_p = sum_t (sum_hw w) pt[t] + sum_h (...) ph[h] + sum_w (...) pw[w].
        pooled = state.pooled.T + frames.T @ table_t + state.rows.T @ table_h + state.columns.T @ table_w
        pooled = (pooled / state.total[:, None]).view(num_queries, self.num_heads, dim)
        v_weight = self.v_proj.weight.view(self.num_heads, self.head_dim, dim)
        attended = torch.stack([pooled[:, h] @ v_weight[h].float().T for h in range(self.num_heads)], dim=1)
        attended = attended.reshape(num_queries, dim) + self.v_proj.bias.float()
        output = self.out_proj(attended.to(queries.dtype))
        attentions = None
        if state.scores is not None:
            weights = torch.cat(state.scores).softmax(dim=0)  # (T*H*W, Q*heads)
            attentions = weights.T.view(num_queries, self.num_heads, -1).transpose(0, 1)
        return output, attentions


class HicomGlobalCompressor(nn.Module):
    """`num_global_queries` tokens that attend over the whole clip (with 3D sin-cos positions)."""

    def __init__(self, config, guide_dim: int):
        super().__init__()
        dim, act = config.vision_config.hidden_size, config.projector_hidden_act
        self.num_queries = config.num_global_queries
        self.query = nn.Parameter(torch.zeros(config.num_global_queries, dim))
        self.injection = HicomInjection(
            config.global_injection, guide_dim, dim, config.global_adapt_guide, act, config.num_global_heads
        )
        self.attn = HicomGlobalAttention(dim, config.num_global_heads, clip_scale=config.global_clip_scale)
        self.readout = HicomMLP(dim, config.text_config.hidden_size, config.text_config.hidden_size, act)

    def forward(self, features, guide, output_attentions=False) -> LevelOutput:
        queries, state = self.begin(features.shape[:3], guide, features.dtype, output_attentions)
        self.attn.update(state, features)
        return self.finish(queries, state)

    def begin(self, grid, guide, dtype, output_attentions=False):
        """Queries and the attention's running state for a `(T, H, W)` clip; feed frames with `self.attn.update`."""
        dim = self.query.shape[-1]
        base_query = self.query if self.injection.needs_base_query else None
        # Direct injection gives every global query the same vector: compute one and repeat it.
        queries = self.injection(guide, base_query).to(dtype)
        tables = [sincos_embedding_1d(n, dim) for n in grid]
        return queries, self.attn.begin(queries, tables, output_attentions)

    def finish(self, queries, state) -> LevelOutput:
        attended, attentions = self.attn.finish(state, queries)
        tokens = self.readout(queries + attended)
        if tokens.shape[0] != self.num_queries:
            tokens = tokens.expand(self.num_queries, -1)
            attentions = attentions.expand(-1, self.num_queries, -1) if attentions is not None else None
        return LevelOutput(tokens, attentions)


class HicomCompressor(nn.Module):
    """Local tokens (in `t, h, w` order) followed by global tokens, one video at a time. Either level may be absent
    (`use_local_level=False`, `num_global_queries=0`)."""

    def __init__(self, config):
        super().__init__()
        guide_dim = config.instruct_config.projection_size
        self.local_level = HicomLocalCompressor(config, guide_dim) if config.use_local_level else None
        self.global_level = HicomGlobalCompressor(config, guide_dim) if config.num_global_queries > 0 else None

    @property
    def needs_guide(self) -> bool:
        levels = [level for level in (self.local_level, self.global_level) if level is not None]
        return any(level.injection.mode != "off" for level in levels)

    def forward(self, features, patch_embeds, guide=None, output_attentions=False):
        """`features`, `patch_embeds`: `(T, H, W, D)`; `guide`: `(guide_dim,)` (the pooled instruction embedding),
        `(tokens, guide_dim)` (one row per instruction token, for fine injection) or None (no injection).

        Returns `(tokens (N, C), local_weights, global_weights)`; the weights (only with `output_attentions`, None for
        an absent level) are `(T', H', W', window)` softmax weights of each local cell over its window (positions
        from `window_index`) and `(heads, num_global_queries, T*H*W)`.
        """
        stream = self.stream(features.shape[:3], guide, features.dtype, output_attentions)
        stream.update(features, patch_embeds)
        return stream.finish()

    def stream(self, grid, guide=None, dtype=None, output_attentions=False) -> "HicomCompressionStream":
        """Compress a `grid = (T, H, W)` video whose frames are fed in order, any number at a time (see
        [`HicomCompressionStream`]); same results as `forward` on the whole clip."""
        return HicomCompressionStream(self, tuple(grid), guide, dtype, output_attentions)


class HicomCompressionStream:
    """One video's compression, fed its frames' `(features, patch_embeds)` in order, a chunk at a time.

    Local cells are computed as soon as the frames of their window have arrived; only frames that a pending window
    still needs are kept (at most a chunk plus `kt - 1` frames). The global level accumulates its reassociated
    attention chunk by chunk with an online softmax. So memory holds neither the clip's features nor its patch
    embeddings, whatever its length.
    """

    def __init__(self, compressor: HicomCompressor, grid, guide, dtype, output_attentions):
        self.compressor = compressor
        self.num_frames, self.height, self.width = grid
        self.guide = guide
        self.output_attentions = output_attentions
        self.next_cell, self.frames_seen = 0, 0
        self.buffer_start, self.buffer = 0, []  # kept (features, patch_embeds) chunks, from frame `buffer_start`
        self.output, self.local_attentions = None, []  # output: (local + global tokens, C), filled as cells complete
        self.plan, self.num_local_tokens = None, 0
        if compressor.local_level is not None:
            self.plan = compressor.local_level.plan(*grid)
            self.spatial_cells = self.plan.index.shape[1] * self.plan.index.shape[2]  # local tokens per temporal cell
            self.num_local_tokens = self.spatial_cells * self.plan.index.shape[0]
        self.global_queries = self.global_state = None
        if compressor.global_level is not None:
            dtype = dtype or compressor.global_level.readout.linear_1.weight.dtype
            self.global_queries, self.global_state = compressor.global_level.begin(
                grid, guide, dtype, output_attentions
            )

    def update(self, features: torch.Tensor, patch_embeds: torch.Tensor) -> None:
        """Add the next `n` frames: `features`, `patch_embeds` `(n, H, W, D)`."""
        count = features.shape[0]
        if tuple(features.shape[1:3]) != (self.height, self.width) or patch_embeds.shape != features.shape:
            raise ValueError(f"Expected frames of a {self.height}x{self.width} grid, got {tuple(features.shape)}.")
        if self.frames_seen + count > self.num_frames:
            raise ValueError(f"The video has {self.num_frames} frames; got {self.frames_seen + count}.")
        if self.global_state is not None:
            self.compressor.global_level.attn.update(self.global_state, features)
        self.frames_seen += count
        if self.plan is None:
            return
        self.buffer.append((features, patch_embeds))
        plan, ready = self.plan, self.next_cell
        while ready < len(plan.end_frame) and plan.end_frame[ready] <= self.frames_seen:
            ready += 1
        if ready == self.next_cell:
            return
        buffered_features, buffered_embeds = (
            torch.cat(part) if len(part) > 1 else part[0] for part in zip(*self.buffer)
        )
        # Only the frames these cells read (the buffer may start earlier and end later).
        first = plan.first_frame[self.next_cell] - self.buffer_start
        end = plan.end_frame[ready - 1] - self.buffer_start
        local = self.compressor.local_level
        if self.output is None:
            num_tokens = self.num_local_tokens
            if self.global_state is not None:
                num_tokens += self.compressor.global_level.num_queries
            weight = local.readout.linear_2.weight
            self.output = features.new_empty(num_tokens, weight.shape[0], dtype=weight.dtype)
        cells = self.spatial_cells
        out = local.compress_cells(
            plan, self.next_cell, ready, buffered_features[first:end], buffered_embeds[first:end],
            self.buffer_start + first, self.guide, self.output_attentions,
            out=self.output[self.next_cell * cells : ready * cells],
        )
        self.local_attentions.append(out.attentions)
        self.next_cell = ready
        # Drop the frames no pending cell reads; copy the rest so the chunk they came from can be freed.
        keep = (plan.first_frame[ready] if ready < len(plan.first_frame) else self.frames_seen) - self.buffer_start
        self.buffer = [(buffered_features[keep:].clone(), buffered_embeds[keep:].clone())]
        self.buffer_start += keep

    def finish(self):
        """`(tokens (N, C), local_weights, global_weights)`, as `HicomCompressor.forward`."""
        if self.frames_seen != self.num_frames:
            raise ValueError(f"The video has {self.num_frames} frames but only {self.frames_seen} were fed.")
        local_attentions = None
        if self.output_attentions and self.plan is not None:
            local_attentions = torch.cat(self.local_attentions)
        if self.global_state is None:
            return self.output, local_attentions, None
        global_ = self.compressor.global_level.finish(self.global_queries, self.global_state)
        if self.plan is None:
            return global_.tokens, None, global_.attentions
        self.output[self.num_local_tokens :] = global_.tokens
        return self.output, local_attentions, global_.attentions


__all__ = [
    "HicomCompressor",
    "HicomCompressionStream",
    "linear_taps",
    "window_index",
    "window_starts",
    "sincos_embedding_1d",
]
