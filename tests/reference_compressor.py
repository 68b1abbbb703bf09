"""A plain implementation of HICom's compressor formulas, for every variant: the tests' one reference.

Written from the definitions (docs/variants.md), not from the model's code: plain tensors and `torch.nn.functional`,
a Python loop over local windows, a standard multi-head attention over materialized keys and values. It reads the
weights from the compressor's `state_dict()` by name and the settings from the `HicomConfig`; it shares only
`window_starts` and `sincos_embedding_1d` with the model (each tested against its definition on its own).
"""

import math

import torch
import torch.nn.functional as F

from modeling_hicom.compressor_hicom import sincos_embedding_1d, window_starts


def _linear(weights, name, x):
    return F.linear(x, weights[f"{name}.weight"], weights.get(f"{name}.bias"))


def _mlp(weights, name, x):
    return _linear(weights, f"{name}.linear_2", F.gelu(_linear(weights, f"{name}.linear_1", x)))


def _layer_norm(weights, name, x):
    return F.layer_norm(x, x.shape[-1:], weights[f"{name}.weight"], weights[f"{name}.bias"], eps=1e-6)


def _adapter(weights, name, x, project):
    """`(1 - a) x + a LN(proj(x))` if the adapter exists, else `x`."""
    if f"{name}.gate" not in weights:
        return x
    gate = weights[f"{name}.gate"]
    return (1 - gate) * x + gate * _layer_norm(weights, f"{name}.norm", project(x))


def _normalize(x):
    return x / x.norm(dim=-1, keepdim=True)


def attention(weights, name, queries, keys_values, num_heads, logit_scale=None, logit_bias=None):
    """Standard MHA `(Q, D)` over `(N, D)`; with a `logit_scale`, SigLIP-style (q, k normalized over the width)."""
    q = _linear(weights, f"{name}.q_proj", queries)
    k = _linear(weights, f"{name}.k_proj", keys_values)
    v = _linear(weights, f"{name}.v_proj", keys_values)
    head_dim = q.shape[-1] // num_heads
    if logit_scale is not None:
        q, k, scale, bias = _normalize(q), _normalize(k), logit_scale.exp(), logit_bias
    else:
        scale, bias = head_dim**-0.5, 0.0
    q, k, v = (x.view(x.shape[0], num_heads, head_dim).transpose(0, 1) for x in (q, k, v))
    probabilities = (q @ k.transpose(1, 2) * scale + bias).softmax(dim=-1)
    attended = (probabilities @ v).transpose(0, 1).reshape(queries.shape[0], -1)
    return _linear(weights, f"{name}.out_proj", attended), probabilities


def inject(weights, name, mode, instruct, base_query, num_heads):
    """One level's queries: off / direct / coarse (FiLM) / fine (cross-attention to every instruction row)."""
    if mode == "off":
        return base_query
    if f"{name}.text2qk.linear_1.weight" in weights:
        instruct = _mlp(weights, f"{name}.text2qk", instruct)
    instruct = _adapter(
        weights, f"{name}.instruct_adapter", instruct, lambda x: _mlp(weights, f"{name}.instruct_adapter.proj", x)
    )
    if mode == "direct":
        return instruct[None]
    if mode == "coarse":
        scale, shift = _mlp(weights, f"{name}.film", instruct).chunk(2, dim=-1)
        return _layer_norm(weights, f"{name}.norm", base_query * (1 + scale) + shift)
    flat = base_query.reshape(-1, base_query.shape[-1])
    attended = attention(weights, f"{name}.attn", flat, instruct, num_heads)[0]
    return _layer_norm(weights, f"{name}.norm", flat + attended).view_as(base_query)


def reference_local(config, weights, features, embeds, instruct):
    """Local tokens `(T'*H'*W', C)` in (t, h, w) order, and the per-cell window weights."""
    name = "local_level"
    num_frames, height, width, dim = features.shape
    encodes_instruction = config.instruct_embedding != "none"
    keys = embeds if encodes_instruction else features
    if config.local_clip_scale and encodes_instruction:
        keys, instruct = _normalize(keys), _normalize(instruct)
    keys = _adapter(weights, f"{name}.key_adapter", keys, lambda x: _mlp(weights, f"{name}.key_adapter.proj", x))
    values = _adapter(
        weights, f"{name}.value_adapter", features, lambda x: _mlp(weights, f"{name}.value_adapter.proj", x)
    )
    temporal_kernel = 1 if num_frames == 1 else config.local_temporal_kernel
    spatial_kernel = config.local_spatial_kernel
    t_starts, t_size = window_starts(num_frames, temporal_kernel)
    h_starts, h_size = window_starts(height, spatial_kernel)
    w_starts, w_size = window_starts(width, spatial_kernel)
    base = F.interpolate(
        features.permute(3, 0, 1, 2)[None], size=(len(t_starts), len(h_starts), len(w_starts)), mode="trilinear",
        align_corners=False,
    )[0].permute(1, 2, 3, 0)
    base = _adapter(
        weights, f"{name}.query_adapter", base, lambda x: F.linear(x, weights[f"{name}.query_adapter.proj.weight"])
    )
    query = inject(weights, f"{name}.injection", config.local_injection, instruct, base, config.num_global_heads)
    pooled, cell_weights = [], []
    for i, ts in enumerate(t_starts):
        for j, hs in enumerate(h_starts):
            for k, ws in enumerate(w_starts):
                window_keys = keys[ts : ts + t_size, hs : hs + h_size, ws : ws + w_size].reshape(-1, dim)
                window_values = values[ts : ts + t_size, hs : hs + h_size, ws : ws + w_size].reshape(-1, dim)
                q = query[0] if query.ndim == 2 else query[i, j, k]  # direct: one query for every cell
                scores = window_keys @ q
                if config.local_clip_scale:
                    scores = scores * weights[f"{name}.logit_scale"].exp() + weights[f"{name}.logit_bias"]
                else:
                    scores = scores / math.sqrt(dim)
                probabilities = scores.softmax(0)
                cell_weights.append(probabilities)
                pooled.append(probabilities @ window_values)
    tokens = _mlp(weights, f"{name}.readout", torch.stack(pooled))
    return tokens, torch.stack(cell_weights).view(len(t_starts), len(h_starts), len(w_starts), -1)


def reference_global(config, weights, features, instruct):
    """Global tokens `(num_global_queries, C)` and the attention weights `(heads, Q, T*H*W)`."""
    name = "global_level"
    num_frames, height, width, dim = features.shape
    grid = torch.meshgrid(*(torch.arange(n) for n in (num_frames, height, width)), indexing="ij")
    positions = sum(sincos_embedding_1d(n, dim)[g] for n, g in zip((num_frames, height, width), grid))
    keys_values = (features + positions).reshape(-1, dim)
    queries = inject(
        weights, f"{name}.injection", config.global_injection, instruct, weights[f"{name}.query"],
        config.num_global_heads,
    )
    queries = queries.expand(config.num_global_queries, dim)
    scale = bias = None
    if config.global_clip_scale:
        scale, bias = weights[f"{name}.attn.logit_scale"], weights[f"{name}.attn.logit_bias"]
    attended, probabilities = attention(
        weights, f"{name}.attn", queries, keys_values, config.num_global_heads, scale, bias
    )
    return _mlp(weights, f"{name}.readout", queries + attended), probabilities


def reference_compress(model, features, embeds, instruct):
    """The tokens `(N, C)` of one video, from `features`, `embeds` `(T, H, W, D)` and `instruct` (pooled `(D,)`,
    per-token `(L, D)` or None): local tokens, then global tokens; float64 for a tight comparison."""
    config = model.config
    weights = {key: value.double() for key, value in model.model.compressor.state_dict().items()}
    features, embeds = features.double(), embeds.double()
    instruct = instruct.double() if instruct is not None else None
    tokens = []
    if config.use_local_level:
        tokens.append(reference_local(config, weights, features, embeds, instruct)[0])
    if config.num_global_queries:
        tokens.append(reference_global(config, weights, features, instruct)[0])
    return torch.cat(tokens).float()
