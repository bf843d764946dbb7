"""The one two-stream attention API and its dense XLA reference backend.

Visibility inside one row (see layout.py):
  content row i sees key j  iff  segment(j) == segment(i) and group(j) <= group(i)
  query   row i sees key j  iff  segment(j) == segment(i) and group(j) <  group(i)
Keys and values always come from the content stream. A row that sees no key (the query stream
of a context row, padding) returns exactly 0 with finite, zero gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BACKENDS = ("xla",)


def visibility_masks(segment_ids_BxN, groups_BxN):
    """Boolean masks [B, N, N] (rows, keys) for the content and the query stream."""
    same_segment = segment_ids_BxN[:, :, None] == segment_ids_BxN[:, None, :]
    row_group = groups_BxN[:, :, None]
    key_group = groups_BxN[:, None, :]
    return same_segment & (key_group <= row_group), same_segment & (key_group < row_group)


def _masked_attention(q_BxSxHxD, k_BxNxKxD, v_BxNxKxD, mask_BxSxN):
    """Dense softmax attention with GQA; fully masked rows give 0. Scores in float32."""
    b, s, n_heads, head_dim = q_BxSxHxD.shape
    n_kv = k_BxNxKxD.shape[2]
    q_BxSxKxGxD = q_BxSxHxD.reshape(b, s, n_kv, n_heads // n_kv, head_dim)
    scores = jnp.einsum(
        "bskgd,bnkd->bkgsn", q_BxSxKxGxD, k_BxNxKxD, preferred_element_type=jnp.float32
    ) / jnp.sqrt(jnp.float32(head_dim))
    mask = mask_BxSxN[:, None, None, :, :]
    # Masked scores get a large finite negative (not -inf) so a fully masked row stays finite;
    # its output is zeroed below, which also zeroes its gradients.
    probs = jax.nn.softmax(jnp.where(mask, scores, -1e30), axis=-1)
    out = jnp.einsum("bkgsn,bnkd->bskgd", probs.astype(v_BxNxKxD.dtype), v_BxNxKxD,
                     preferred_element_type=jnp.float32)
    sees_any_key = jnp.any(mask_BxSxN, axis=-1)[:, :, None, None]
    out = out.reshape(b, s, n_heads, head_dim) * sees_any_key
    return out.astype(q_BxSxHxD.dtype)


def two_stream_attention(q_content, q_query, k, v, segment_ids, groups, *, backend="xla"):
    """Attention for both streams: q_* [B, N, Hq, D] (either may be None), k, v [B, N, Hkv, D].

    Returns (out_content, out_query), each [B, N, Hq, D] or None where its input was None.
    Both streams run as one call of 2N rows against the N content keys.
    """
    if backend not in BACKENDS:
        raise ValueError(f"attention backend {backend!r} is not available; choose one of {BACKENDS}")
    content_mask, query_mask = visibility_masks(segment_ids, groups)
    rows, masks = [], []
    if q_content is not None:
        rows.append(q_content)
        masks.append(content_mask)
    if q_query is not None:
        rows.append(q_query)
        masks.append(query_mask)
    out = _masked_attention(jnp.concatenate(rows, 1), k, v, jnp.concatenate(masks, 1))
    n = k.shape[1]
    if q_content is not None and q_query is not None:
        return out[:, :n], out[:, n:]
    return (out, None) if q_content is not None else (None, out)
