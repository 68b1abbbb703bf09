"""HICom's hybrid-level, instruction-conditioned token compressor.

For one video it turns SigLIP features `F` (values, layer -2), patch embeddings `E` (keys, in SigLIP's joint
text-image space) and the instruction embedding `g` into `ceil(T/kt)*ceil(H/ks)*ceil(W/ks)` local tokens plus
`num_global_queries` global tokens. Every attention's softmax and dot products run in float32, whatever the
weights' dtype, so bf16/fp16 models keep the reference's selection of patches.
"""

import math
from dataclasses import dataclass

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
    """Gated residual adapter `(1 - a) * x + a * LN(MLP(x))`; the gate starts at 0, i.e. the identity."""

    def __init__(self, dim: int, hidden_act: str):
        super().__init__()
        self.mlp = HicomMLP(dim, dim, dim, hidden_act)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        gate = self.gate.to(hidden_states.dtype)
        return (1 - gate) * hidden_states + gate * self.norm(self.mlp(hidden_states))


def _maybe_adapter(enabled: bool, dim: int, hidden_act: str) -> nn.Module:
    return HicomAdapter(dim, hidden_act) if enabled else nn.Identity()


class HicomInjection(nn.Module):
    """Builds one level's queries from the instruction embedding `g` (DESIGN.md sec. 4).

    `direct`: the query is `g' = text2qk(g)`; `coarse`: FiLM of the unconditional query by `g'`; `off`: the
    unconditional query alone (then `g` is not needed).
    """

    def __init__(self, mode: str, guide_dim: int, dim: int, adapt_guide: bool, hidden_act: str):
        super().__init__()
        self.mode = mode
        if mode == "off":
            return
        self.text2qk = HicomMLP(guide_dim, dim, dim, hidden_act) if guide_dim != dim else nn.Identity()
        self.guide_adapter = _maybe_adapter(adapt_guide, dim, hidden_act)
        if mode == "coarse":
            self.film = HicomMLP(dim, dim, 2 * dim, hidden_act)
            self.norm = nn.LayerNorm(dim, eps=1e-6)

    @property
    def needs_base_query(self) -> bool:
        return self.mode != "direct"

    def forward(self, guide: torch.Tensor | None, base_query: torch.Tensor | None) -> torch.Tensor:
        """`guide (guide_dim,)`, `base_query (..., dim)` -> queries `(..., dim)` (`(1, dim)` for direct)."""
        if self.mode == "off":
            return base_query
        if guide is None:
            raise ValueError(
                f"The `{self.mode}` instruction injection needs the instruction: pass `instruct_input_ids` "
                "(the processor returns them)."
            )
        guide = self.guide_adapter(self.text2qk(guide))
        if self.mode == "direct":
            return guide[None]
        scale, shift = self.film(guide).chunk(2, dim=-1)
        return self.norm(base_query * (1 + scale) + shift)


@dataclass
class LevelOutput:
    """One level's tokens `(N, C)` and its attention weights (see `HicomCompressor.forward`)."""

    tokens: torch.Tensor
    attentions: torch.Tensor | None = None


class HicomLocalCompressor(nn.Module):
    """One token per space-time window: the instruction-conditioned query attends over its window's patches."""

    def __init__(self, config, guide_dim: int):
        super().__init__()
        dim, act = config.vision_config.hidden_size, config.projector_hidden_act
        self.temporal_kernel = config.local_temporal_kernel
        self.spatial_kernel = config.local_spatial_kernel
        self.injection = HicomInjection(config.local_injection, guide_dim, dim, config.adapt_guide, act)
        self.key_adapter = _maybe_adapter(config.adapt_key, dim, act)
        self.value_adapter = _maybe_adapter(config.adapt_value, dim, act)
        self.query_adapter = _maybe_adapter(config.adapt_query, dim, act)
        self.readout = HicomMLP(dim, config.text_config.hidden_size, config.text_config.hidden_size, act)

    def forward(self, features, patch_embeds, guide, output_attentions=False) -> LevelOutput:
        num_frames, height, width, dim = features.shape
        temporal_kernel = 1 if num_frames == 1 else self.temporal_kernel
        index = window_index(num_frames, height, width, temporal_kernel, self.spatial_kernel).to(features.device)
        grid = index.shape[:3]

        base_query = None
        if self.injection.needs_base_query:
            # Trilinear downsampling of the features gives each cell an unconditional query.
            base_query = nn.functional.interpolate(
                features.permute(3, 0, 1, 2)[None].float(), size=grid, mode="trilinear", align_corners=False
            )[0].permute(1, 2, 3, 0)
            base_query = self.query_adapter(base_query.to(features.dtype))
        query = self.injection(guide, base_query).float()  # (1, dim) or (T', H', W', dim)

        keys = self.key_adapter(patch_embeds).flatten(0, 2)
        values = self.value_adapter(features).flatten(0, 2)
        # Gather one window offset at a time: vectorized over all windows, and never a (cells, window, dim) copy.
        scores = torch.stack(
            [(keys[index[..., k]].float() * query).sum(-1) for k in range(index.shape[-1])], dim=-1
        ) / math.sqrt(dim)
        weights = scores.softmax(dim=-1)
        pooled = sum(weights[..., k, None] * values[index[..., k]].float() for k in range(index.shape[-1]))
        tokens = self.readout(pooled.to(features.dtype)).flatten(0, 2)
        return LevelOutput(tokens, weights if output_attentions else None)


class HicomGlobalAttention(nn.Module):
    """Multi-head cross-attention of the global queries over every position of the clip.

    Computed in an exactly reassociated form: with few queries, projecting all `T*H*W` positions with `W_k` and `W_v`
    dominates the cost, so positions are scored with `W_k^T q` (the key bias adds a per-query constant that softmax
    ignores) and `W_v` is applied once to the attention-weighted sum of positions (the weights sum to 1).
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, queries, features, position_embeds, output_attentions=False):
        """`queries (Q, D)`, `features (T, H, W, D)`, `position_embeds`: per-axis sin-cos tables `(T|H|W, D)`.

        Keys/values are `features + P` with `P[t, h, w] = pt[t] + ph[h] + pw[w]`; `P` is never materialized.
        Returns `(Q, D)` and, if asked, the weights `(heads, Q, T*H*W)`.
        """
        num_queries, dim = queries.shape
        num_frames, height, width, _ = features.shape
        heads, head_dim = self.num_heads, self.head_dim
        q = self.q_proj(queries).float().view(num_queries, heads, head_dim)
        k_weight = self.k_proj.weight.float().view(heads, head_dim, dim)
        # u[q, h] = W_k,h^T q_h: a position's score is its feature row dotted with u.
        u = torch.einsum("qhe,hed->qhd", q, k_weight).reshape(num_queries * heads, dim) * head_dim**-0.5
        pt, ph, pw = (table.to(u.device) @ u.T for table in position_embeds)
        scores = (features.reshape(-1, dim).float() @ u.T).view(num_frames, height, width, -1)
        scores = scores + pt[:, None, None] + ph[None, :, None] + pw[None, None, :]
        weights = scores.flatten(0, 2).softmax(dim=0)  # (T*H*W, Q*heads)
        grid_weights = weights.view(num_frames, height, width, -1)
        pooled = weights.T @ features.reshape(-1, dim).float()
        pooled = pooled + grid_weights.sum((1, 2)).T @ position_embeds[0].to(u.device)
        pooled = pooled + grid_weights.sum((0, 2)).T @ position_embeds[1].to(u.device)
        pooled = pooled + grid_weights.sum((0, 1)).T @ position_embeds[2].to(u.device)
        pooled = pooled.view(num_queries, heads, dim)
        v_weight = self.v_proj.weight.float().view(heads, head_dim, dim)
        attended = torch.einsum("qhd,hed->qhe", pooled, v_weight).reshape(num_queries, dim) + self.v_proj.bias.float()
        output = self.out_proj(attended.to(queries.dtype))
        attentions = weights.T.view(num_queries, heads, -1).transpose(0, 1) if output_attentions else None
        return output, attentions


class HicomGlobalCompressor(nn.Module):
    """`num_global_queries` tokens that attend over the whole clip (with 3D sin-cos positions)."""

    def __init__(self, config, guide_dim: int):
        super().__init__()
        dim, act = config.vision_config.hidden_size, config.projector_hidden_act
        self.num_queries = config.num_global_queries
        self.query = nn.Parameter(torch.zeros(config.num_global_queries, dim))
        self.injection = HicomInjection(config.global_injection, guide_dim, dim, config.adapt_guide, act)
        self.query_adapter = _maybe_adapter(config.adapt_query, dim, act)
        self.attn = HicomGlobalAttention(dim, config.num_global_heads)
        self.readout = HicomMLP(dim, config.text_config.hidden_size, config.text_config.hidden_size, act)

    def forward(self, features, guide, output_attentions=False) -> LevelOutput:
        num_frames, height, width, dim = features.shape
        base_query = self.query_adapter(self.query) if self.injection.needs_base_query else None
        # Direct injection gives every global query the same vector: compute one and repeat it.
        queries = self.injection(guide, base_query).to(features.dtype)
        tables = [sincos_embedding_1d(n, dim) for n in (num_frames, height, width)]
        attended, attentions = self.attn(queries, features, tables, output_attentions)
        tokens = self.readout(queries + attended)
        if tokens.shape[0] != self.num_queries:
            tokens = tokens.expand(self.num_queries, -1)
            attentions = attentions.expand(-1, self.num_queries, -1) if attentions is not None else None
        return LevelOutput(tokens, attentions)


class HicomCompressor(nn.Module):
    """Local tokens (in `t, h, w` order) followed by global tokens, one video at a time."""

    def __init__(self, config):
        super().__init__()
        guide_dim = config.instruct_config.projection_size
        self.local_level = HicomLocalCompressor(config, guide_dim)
        self.global_level = HicomGlobalCompressor(config, guide_dim) if config.num_global_queries > 0 else None

    @property
    def needs_guide(self) -> bool:
        levels = [self.local_level] + ([self.global_level] if self.global_level is not None else [])
        return any(level.injection.mode != "off" for level in levels)

    def forward(self, features, patch_embeds, guide=None, output_attentions=False):
        """`features`, `patch_embeds`: `(T, H, W, D)`; `guide`: `(guide_dim,)` or None.

        Returns `(tokens (N, C), local_weights, global_weights)`; the weights (only with `output_attentions`) are
        `(T', H', W', window)` softmax weights of each local cell over its window (positions from `window_index`)
        and `(heads, num_global_queries, T*H*W)`.
        """
        local = self.local_level(features, patch_embeds, guide, output_attentions)
        if self.global_level is None:
            return local.tokens, local.attentions, None
        global_ = self.global_level(features, guide, output_attentions)
        return torch.cat([local.tokens, global_.tokens], dim=0), local.attentions, global_.attentions


__all__ = ["HicomCompressor", "window_index", "window_starts", "sincos_embedding_1d"]
