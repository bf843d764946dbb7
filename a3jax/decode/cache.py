"""The exact KV cache of the content stream, and one decoding call against it.

Decoding commits tokens group by group. When group g is committed, its content rows see every
earlier group and each other (content rule: group(j) <= g), so their keys/values at every layer are
final: later groups never change them. They are computed once, appended to the cache, and reused by
every later call. In the same call, the query rows of the next positions to predict see all groups
committed so far (query rule: group(j) < next group), which is exactly the cache after the append.
So one call = (content rows of the committed group + query rows of the next positions) against
the cache. Each slot keeps its group id, so one call may also commit several groups at once (the
prefill of a prompt whose tokens are read left to right): a content row sees the valid slots of
groups <= its own, a query row sees every valid slot.

For the `causal` variant (left-to-right only) a content row sees the cached keys at positions <= its
own, and the prediction for position p is the content row at p - 1.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from a3jax.model import rope
from a3jax.model.attention import _masked_attention
from a3jax.model.config import ModelConfig
from a3jax.model.transformer import LAYER_PARAMS, dense, residual_tail, rms_norm


class KVCache(NamedTuple):
    """Content-stream keys and values of the committed tokens, per layer.

    k, v: [L, B, S, Hkv, Dh] in the compute dtype, RoPE applied at each key's original position.
    positions: [B, S] int32 original positions; groups: [B, S] int32 group ids (increasing over
    calls); valid: [B, S] bool (slot holds a committed token).
    length: int32 scalar, slots used so far (every call appends the same number to every row).
    """

    k: jax.Array
    v: jax.Array
    positions: jax.Array
    groups: jax.Array
    valid: jax.Array
    length: jax.Array


def init_cache(cfg: ModelConfig, batch: int, size: int) -> KVCache:
    shape = (cfg.n_layers, batch, size, cfg.n_kv_heads, cfg.head_dim)
    dtype = jnp.dtype(cfg.dtype)
    return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   positions=jnp.zeros((batch, size), jnp.int32), groups=jnp.zeros((batch, size), jnp.int32),
                   valid=jnp.zeros((batch, size), bool),
                   length=jnp.zeros((), jnp.int32))


def _append(buffer, new, start):
    """Writes new [B, C, ...] into buffer [B, S, ...] at slot `start` (same for every row).

    Every index is an int32 array: dynamic_update_slice wants one integer type, and a Python 0
    would become int64 next to the int32 `start` when jax_enable_x64 is on."""
    start = jnp.asarray(start, jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    index = (zero, start) + (zero,) * (buffer.ndim - 2)
    return jax.lax.dynamic_update_slice(buffer, new.astype(buffer.dtype), index)


def extend(model, cache: KVCache, commit_tokens, commit_positions, commit_valid, query_positions,
           commit_groups=None, query_groups=None):
    """Commits the next group(s) of each row and predicts the next positions, in one call.

    commit_tokens, commit_positions, commit_valid: [B, C] (invalid slots are ignored, never seen);
    commit_groups: [B, C] group ids, larger than every cached one (None: one new group, id
    max cached + 1); query_positions: [B, Q] original positions to predict (a3 only; Q may be 0);
    query_groups: [B, Q] a query row sees the valid slots of groups < its id (None: every valid
    slot, the groups committed in this call included) -- several groups committed in one call
    can then each be verified against exactly the groups before it (speculative decoding).
    Returns (cache, logits): float32 [B, Q, V] query-stream logits for a3; for causal, [B, 1, V]
    from the valid committed row with the largest position (it predicts that position + 1).
    The caller must leave room: cache.length + C <= S.
    """
    cfg: ModelConfig = model.cfg
    dtype = model.compute_dtype
    b, c = commit_tokens.shape
    causal = cfg.variant == "causal"
    q_len = 0 if causal else query_positions.shape[1]
    start = cache.length
    if commit_groups is None:
        newest = jnp.max(jnp.where(cache.valid, cache.groups, -1), axis=1, keepdims=True)
        commit_groups = jnp.broadcast_to(newest + 1, (b, c))
    positions = _append(cache.positions, commit_positions.astype(jnp.int32), start)
    groups = _append(cache.groups, commit_groups.astype(jnp.int32), start)
    valid = _append(cache.valid, commit_valid, start)

    content = model.embed_tokens(commit_tokens)
    row_positions = commit_positions
    if q_len:
        query = jnp.broadcast_to(model.query_embed[...].astype(dtype), (b, q_len, cfg.d_model))
        rows = jnp.concatenate([content, query], axis=1)
        row_positions = jnp.concatenate([commit_positions, query_positions], axis=1)
    else:
        rows = content
    inv_freq = rope.inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    cos, sin = rope.rope_tables(row_positions, inv_freq)
    if causal:
        row_order, key_order = row_positions, positions
    else:  # query rows come after every committed group (or see the groups before their own id)
        query_order = (jnp.full((b, q_len), jnp.iinfo(jnp.int32).max, jnp.int32) if query_groups is None
                       else query_groups.astype(jnp.int32) - 1)
        row_order = jnp.concatenate([commit_groups.astype(jnp.int32), query_order], 1)
        key_order = groups
    mask = valid[:, None, :] & (key_order[:, None, :] <= row_order[:, :, None])
    params = {name: model.layers[name][...].astype(dtype) for name in LAYER_PARAMS}

    def layer(rows, xs):
        p, k_cache, v_cache = xs
        normed = rms_norm(rows, p["attn_norm"], cfg.norm_eps)
        q = dense(normed, p["wq"]).reshape(b, rows.shape[1], cfg.n_heads, cfg.head_dim)
        k = dense(normed[:, :c], p["wk"]).reshape(b, c, cfg.n_kv_heads, cfg.head_dim)
        v = dense(normed[:, :c], p["wv"]).reshape(b, c, cfg.n_kv_heads, cfg.head_dim)
        k_cache = _append(k_cache, rope.apply_rope(k, cos[:, :c], sin[:, :c]), start)
        v_cache = _append(v_cache, v, start)
        attn = _masked_attention(rope.apply_rope(q, cos, sin), k_cache, v_cache, mask)
        return residual_tail(cfg, p, rows, attn), (k_cache, v_cache)

    rows, (k_all, v_all) = jax.lax.scan(layer, rows, (params, cache.k, cache.v))
    cache = KVCache(k=k_all, v=v_all, positions=positions, groups=groups, valid=valid, length=start + c)
    if causal:
        last = jnp.argmax(jnp.where(commit_valid, commit_positions, -1), axis=1)
        rows = jnp.take_along_axis(rows, last[:, None, None], axis=1)
    else:
        rows = rows[:, c:]
    hidden = rms_norm(rows, model.final_norm[...], cfg.norm_eps)
    return cache, model.logits(hidden)
