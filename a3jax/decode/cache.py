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

For a next-token variant (causal: left to right only) a content row sees the cached keys at
positions <= its own, and the prediction for position p is the content row at p - 1.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from a3jax.model import transformer
from a3jax.model.config import ModelConfig
from a3jax.model.dense_attention import _masked_attention
from a3jax.model.transformer import rope_for


class KVCache(NamedTuple):
    """Content-stream keys and values of the committed tokens, per layer.

    k: [L, B, Hkv, S, Dh] and v: [L, B, Hkv, Dh, S] in the compute dtype, RoPE applied at each
      key's original position: the layouts the attention's batched matmuls read, so that no call
      transposes or copies the cache (XLA:GPU chose them itself when the cache was [L, B, S, Hkv,
      Dh], transposing all of it in and out of every call; XLA:CPU cannot run a bfloat16 dot
      from v as [L, B, Hkv, S, Dh]).
    tokens: [B, S] int32 committed tokens (the shifted query stream reads the previous one);
    positions: [B, S] int32 original positions; groups: [B, S] int32 group ids (increasing over
    calls); valid: [B, S] bool (slot holds a committed token).
    length: int32, slots used so far: a scalar (every call appends the same number to every row),
    or [B] per row (init_cache(per_row=True): a speculative driver moves each row's length back
    over its rejected drafts, and the next call overwrites them).
    """

    k: jax.Array
    v: jax.Array
    tokens: jax.Array
    positions: jax.Array
    groups: jax.Array
    valid: jax.Array
    length: jax.Array


class DecodeWeights(NamedTuple):
    """The weights every decoding call reads: `params`, the model's params in the compute dtype
    (transformer.compute_params) with the stacked layer weights replaced by zero-size
    placeholders, and `layers`, the same layer weights one dict of arrays per layer (extend's
    `layers`), so that a call reads each layer's weights where they lie instead of copying its
    slice out of the stack (XLA:CPU materialises every slice of a scanned or sliced stack).
    Build once per generation (decode_weights): the split is one copy of the layer weights."""

    params: dict
    layers: tuple


def decode_weights(params: dict, cfg: ModelConfig) -> DecodeWeights:
    params = transformer.compute_params(params, cfg.dtype)
    stacked = params["layers"]
    layers = _split_layers(stacked)
    placeholders = {name: jnp.zeros((0,), w.dtype) for name, w in stacked.items()}
    return DecodeWeights({**params, "layers": placeholders}, layers)


@jax.jit
def _split_layers(stacked: dict) -> tuple:
    count = len(next(iter(stacked.values())))
    return tuple({name: w[i] for name, w in stacked.items()} for i in range(count))


def init_cache(cfg: ModelConfig, batch: int, size: int, per_row: bool = False) -> KVCache:
    shape = (cfg.n_layers, batch, cfg.n_kv_heads, size, cfg.head_dim)
    v_shape = (cfg.n_layers, batch, cfg.n_kv_heads, cfg.head_dim, size)
    dtype = jnp.dtype(cfg.dtype)
    slots = lambda dtype=jnp.int32: jnp.zeros((batch, size), dtype)  # noqa: E731  (distinct buffers: donated)
    return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(v_shape, dtype), tokens=slots(), positions=slots(),
                   groups=slots(), valid=slots(bool),
                   length=jnp.zeros((batch,) if per_row else (), jnp.int32))


def _append(buffer, new, start):
    """Writes new [B, C, ...] into buffer [B, S, ...] at slot `start`: a scalar (every row) or [B]
    (each row at its own slot).

    Every index is an int32 array: dynamic_update_slice wants one integer type, and a Python 0
    would become int64 next to the int32 `start` when jax_enable_x64 is on."""
    start = jnp.asarray(start, jnp.int32)
    zero = jnp.zeros((), jnp.int32)
    if start.ndim == 1:
        def row(buffer_row, new_row, start_row):
            index = (start_row,) + (zero,) * (buffer_row.ndim - 1)
            return jax.lax.dynamic_update_slice(buffer_row, new_row.astype(buffer_row.dtype), index)

        return jax.vmap(row)(buffer, new, start)
    index = (zero, start) + (zero,) * (buffer.ndim - 2)
    return jax.lax.dynamic_update_slice(buffer, new.astype(buffer.dtype), index)


def _append_layer(stack, layer, new_BxCxGxK, start, slot_axis: int):
    """Writes the new rows' keys or values [B, C, G, K] into layer `layer` of the stacked cache
    (k: [L, B, G, S, K], slot_axis 3; v: [L, B, G, K, S], slot_axis 4) at slot `start` (scalar
    or [B], as _append), in place. Per-row slots are one scatter over the rows, not a vmap of
    row updates (whose batching made XLA:CPU relayout the whole cache, rows outermost)."""
    start = jnp.asarray(start, jnp.int32)
    layer = jnp.asarray(layer, jnp.int32)
    new_BxCxGxK = new_BxCxGxK.astype(stack.dtype)
    if start.ndim == 1:
        b, c = new_BxCxGxK.shape[:2]
        rows_Bx1 = jnp.arange(b, dtype=jnp.int32)[:, None]
        slots_BxC = start[:, None] + jnp.arange(c, dtype=jnp.int32)[None, :]
        at = (layer, rows_Bx1, slice(None), slots_BxC) if slot_axis == 3 else \
            (layer, rows_Bx1, slice(None), slice(None), slots_BxC)
        return stack.at[at].set(new_BxCxGxK, unique_indices=True)  # indexed as [B, C, G, K]
    zero = jnp.zeros((), jnp.int32)
    index = [layer] + [zero] * (stack.ndim - 1)
    index[slot_axis] = start
    return jax.lax.dynamic_update_slice(stack, jnp.moveaxis(new_BxCxGxK, 1, slot_axis - 1)[None], index)


def extend(model, cache: KVCache, commit_tokens, commit_positions, commit_valid, query_positions,
           commit_groups=None, query_groups=None, query_previous=None, layers=None):
    """Commits the next group(s) of each row and predicts the next positions, in one call.

    commit_tokens, commit_positions, commit_valid: [B, C] (invalid slots are ignored, never seen);
    commit_groups: [B, C] group ids, larger than every cached one (None: one new group, id
    max cached + 1); query_positions: [B, Q] original positions to predict (query-stream variants
    only; Q may be 0); query_groups: [B, Q] a query row sees the valid slots of groups < its id
    (None: every valid slot, the groups committed in this call included) -- several groups
    committed in one call can then each be verified against exactly the groups before it
    (speculative decoding). query_previous: (tokens [B, Q], use [B, Q]): where `use`, the shifted
    query row reads `tokens` as its previous-position token (a speculative driver's guess for a
    position not yet decided, to chain its proposals); elsewhere the exact rule, the cache's
    visible slot at position - 1 (default: the exact rule everywhere).
    Every layer is the model's own (model/transformer.layer) with an
    `attend` that appends the committed rows' keys/values to the cache and reads it.
    Returns (cache, logits): float32 [B, Q, V] query-stream logits; for a next-token model
    (causal), [B, 1, V] from the valid committed row with the largest position (it predicts that
    position + 1). The caller must leave room: cache.length + C <= S (every row).
    layers: the layer weights one dict per layer (DecodeWeights.layers): the layers run as an
    unrolled loop reading each layer's own buffers; None: a scan over the model's stacked weights,
    whose per-layer slices XLA:CPU copies out in every call (about half of a SmolLM2 `ar` step on
    a CPU, BENCHMARKS.md).
    """
    cfg: ModelConfig = model.cfg
    facts = model.facts
    b, c = commit_tokens.shape
    start = cache.length
    if commit_groups is None:
        newest = jnp.max(jnp.where(cache.valid, cache.groups, -1), axis=1, keepdims=True)
        commit_groups = jnp.broadcast_to(newest + 1, (b, c))
    commit_groups = commit_groups.astype(jnp.int32)
    tokens = _append(cache.tokens, commit_tokens.astype(jnp.int32), start)
    positions = _append(cache.positions, commit_positions.astype(jnp.int32), start)
    groups = _append(cache.groups, commit_groups, start)
    valid = _append(cache.valid, commit_valid, start)

    content_BxCxD = model.embed_tokens(commit_tokens)
    rope_content = rope_for(cfg, commit_positions)
    if facts.next_token:  # a content row sees the committed keys at positions <= its own
        content_mask_BxCxS = valid[:, None, :] & (positions[:, None, :] <= commit_positions[:, :, None])
    else:  # ... of groups <= its own
        content_mask_BxCxS = valid[:, None, :] & (groups[:, None, :] <= commit_groups[:, :, None])
    query_BxQxD = rope_query = query_mask_BxQxS = None
    if facts.query_stream:
        q_len = query_positions.shape[1]
        query_mask_BxQxS = valid[:, None, :]
        if query_groups is not None:
            query_mask_BxQxS = query_mask_BxQxS & (groups[:, None, :] < query_groups.astype(jnp.int32)[:, :, None])
        else:
            query_mask_BxQxS = jnp.broadcast_to(query_mask_BxQxS, (b, q_len, valid.shape[1]))
        # the previous position's token, where the query row sees it (the shifted query stream)
        previous_BxQxS = query_mask_BxQxS & (positions[:, None, :] == query_positions[:, :, None] - 1)
        previous_token_BxQ = jnp.sum(jnp.where(previous_BxQxS, tokens[:, None, :], 0), axis=-1)
        previous_known_BxQ = jnp.any(previous_BxQxS, axis=-1)
        if query_previous is not None:
            guess_BxQ, use_BxQ = query_previous
            previous_token_BxQ = jnp.where(use_BxQ, guess_BxQ.astype(previous_token_BxQ.dtype), previous_token_BxQ)
            previous_known_BxQ = previous_known_BxQ | use_BxQ
        query_BxQxD, query_rope_positions = model.query_rows(
            query_positions, model.embed_tokens(previous_token_BxQ), previous_known_BxQ)
        rope_query = rope_for(cfg, query_rope_positions)

    def body(carry, p):
        content_BxCxD, query_BxQxD, stacks, layer = carry

        def attend(q_content, q_query, k_BxCxGxK, v_BxCxGxK):
            nonlocal stacks
            if c:  # only the new rows are written, in place in the stacked cache
                stacks = (_append_layer(stacks[0], layer, k_BxCxGxK, start, slot_axis=3),
                          _append_layer(stacks[1], layer, v_BxCxGxK, start, slot_axis=4))
            k_LxBxGxSxK, v_LxBxGxKxS = stacks if c else (cache.k, cache.v)  # C = 0: read only
            layer_of = lambda stack: jax.lax.dynamic_index_in_dim(stack, layer, keepdims=False)  # noqa: E731
            k_all = jnp.transpose(layer_of(k_LxBxGxSxK), (0, 2, 1, 3))  # [B, S, G, K] views of the layer
            v_all = jnp.transpose(layer_of(v_LxBxGxKxS), (0, 3, 1, 2))
            out_content = _masked_attention(q_content, k_all, v_all, content_mask_BxCxS)
            out_query = None if q_query is None else _masked_attention(q_query, k_all, v_all, query_mask_BxQxS)
            return out_content, out_query

        content_BxCxD, query_BxQxD = transformer.layer(  # the model's own layer
            cfg, p, content_BxCxD, query_BxQxD, rope_content, rope_query, attend, fuse_streams=True)
        return (content_BxCxD, query_BxQxD, stacks, layer + 1), None

    # The stacked cache rides in the carry, so each layer writes its new rows in place (no copy of
    # the cache per layer or per call, no stacked scan output); a call that commits nothing
    # (C = 0: speculative decoding's chained proposals) only reads it.
    stacks = (cache.k, cache.v) if c else ()
    carry = (content_BxCxD, query_BxQxD, stacks, jnp.zeros((), jnp.int32))
    if layers is None:
        carry, _ = jax.lax.scan(body, carry, model.layer_params())
    else:
        for weights in layers:
            carry, _ = body(carry, weights)
    content_BxCxD, query_BxQxD, stacks, _ = carry
    k_all, v_all = stacks if c else (cache.k, cache.v)
    cache = KVCache(k=k_all, v=v_all, tokens=tokens, positions=positions, groups=groups, valid=valid,
                    length=start + c)
    if facts.next_token:
        last = jnp.argmax(jnp.where(commit_valid, commit_positions, -1), axis=1)
        rows_BxRxD = jnp.take_along_axis(content_BxCxD, last[:, None, None], axis=1)
    else:
        rows_BxRxD = query_BxQxD
    return cache, model.logits(model.final_norm_of(rows_BxRxD))
