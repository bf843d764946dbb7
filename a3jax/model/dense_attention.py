"""The visibility rule as dense masks, and the dense attention backends (`xla`, the reference;
`cudnn`).

Visibility inside one row (see layout.py):
  content row i sees key j  iff  segment(j) == segment(i) and group(j) <= group(i)
  query   row i sees key j  iff  segment(j) == segment(i) and group(j) <  group(i)
In a sorted layout both are one contiguous key range per row (a3jax.layout.key_ranges), what
the block-skipping kernels take. A row that sees no key returns exactly 0 with zero gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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
    acc = jnp.promote_types(q_BxSxHxD.dtype, jnp.float32)  # float64 for float64 models
    scores = jnp.einsum(
        "bskgd,bnkd->bkgsn", q_BxSxKxGxD, k_BxNxKxD, preferred_element_type=acc
    ) / jnp.sqrt(jnp.asarray(head_dim, acc))
    mask = mask_BxSxN[:, None, None, :, :]
    # Masked scores get a large finite negative (not -inf) so a fully masked row stays finite;
    # its output is zeroed below, which also zeroes its gradients.
    probs = jax.nn.softmax(jnp.where(mask, scores, -1e30), axis=-1)
    out = jnp.einsum("bkgsn,bnkd->bskgd", probs.astype(v_BxNxKxD.dtype), v_BxNxKxD,
                     preferred_element_type=acc)
    sees_any_key = jnp.any(mask_BxSxN, axis=-1)[:, :, None, None]
    out = out.reshape(b, s, n_heads, head_dim) * sees_any_key
    return out.astype(q_BxSxHxD.dtype)


def _cudnn_attention(q_BxSxHxD, k, v, mask_BxSxN):
    out = jax.nn.dot_product_attention(q_BxSxHxD, k, v, mask=mask_BxSxN[:, None],
                                       implementation="cudnn")
    return out * jnp.any(mask_BxSxN, axis=-1)[:, :, None, None].astype(out.dtype)
