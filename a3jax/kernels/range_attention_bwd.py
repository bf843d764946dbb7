"""Backward kernels of range_attention: dq (per q block) and dk/dv (per key block).

Standard flash backward with the forward's logsumexp:
  P = exp(S - lse) inside the range, 0 outside;  delta_i = rowsum(dO * O)
  dV = P^T dO;  dP = dO V^T;  dS = P * (dP - delta);  dQ = scale dS K;  dK = scale dS^T Q
Rows with an empty range have P = 0 everywhere, hence zero (finite) gradients.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from a3jax.kernels.tiles import (
    compiler_params,
    dot_nn,
    dot_nt,
    dot_tn,
    range_mask,
)

# ----------------------------------------------------------------------------- dq

def _dq_kernel(lo_ref, hi_ref, start_ref, end_ref, q_ref, do_ref, lse_ref, delta_ref, k_ref,
               v_ref, dq_ref, *, scale, block_k):
    block_q, head_dim = q_ref.shape
    q = q_ref[...]
    do = do_ref[...]
    lse = lse_ref[...]
    delta = delta_ref[...]
    start = start_ref[...]
    end = end_ref[...]

    def body(j, dq):
        first = pl.multiple_of(j * block_k, block_k)
        k = k_ref[pl.ds(first, block_k), :]
        v = v_ref[pl.ds(first, block_k), :]
        mask = range_mask(start, end, first, block_k)
        p = jnp.where(mask, jnp.exp(dot_nt(q, k) * scale - lse[:, None]), 0.0)
        dp = dot_nt(do, v)
        ds = p * (dp - delta[:, None])
        return dq + dot_nn(ds.astype(k.dtype), k)

    dq = lax.fori_loop(lo_ref[()], hi_ref[()], body,
                       jnp.zeros((block_q, head_dim), jnp.float32))
    dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dq(q, k, v, key_start, key_end, lo, hi, d_out, lse, delta, *, scale, block_q, block_k,
        interpret):
    batch, seq, n_heads, head_dim = q.shape
    n_keys, n_kv = k.shape[1], k.shape[2]
    group = n_heads // n_kv
    row_block = pl.BlockSpec((None, block_q, None, head_dim), lambda i, b, h: (b, i, h, 0))
    kv_full = pl.BlockSpec((None, n_keys, None, head_dim),
                           lambda i, b, h: (b, 0, lax.div(h, group), 0))
    return pl.pallas_call(
        functools.partial(_dq_kernel, scale=scale, block_k=block_k),
        grid=(seq // block_q, batch, n_heads),
        in_specs=[
            pl.BlockSpec((None, None), lambda i, b, h: (b, i)),  # lo
            pl.BlockSpec((None, None), lambda i, b, h: (b, i)),  # hi
            pl.BlockSpec((None, block_q), lambda i, b, h: (b, i)),  # key_start
            pl.BlockSpec((None, block_q), lambda i, b, h: (b, i)),  # key_end
            row_block,  # q
            row_block,  # d_out
            pl.BlockSpec((None, None, block_q), lambda i, b, h: (b, h, i)),  # lse
            pl.BlockSpec((None, None, block_q), lambda i, b, h: (b, h, i)),  # delta
            kv_full,  # k
            kv_full,  # v
        ],
        out_specs=row_block,
        out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
        compiler_params=compiler_params(interpret, head_dim),
        interpret=interpret,
        name="range_attention_dq",
    )(lo, hi, key_start, key_end, q, d_out, lse, delta, k, v)


# ----------------------------------------------------------------------------- dk, dv

def _key_block_lists(key_start, key_end, block_q, block_k, n_kblocks):
    """For each key block, the q blocks with a row whose range touches it.

    Returns count int32 [B, nK] and blocks int32 [B, nK, nQ] (the first count entries, ascending,
    are the touched q blocks). Built with a difference array: O(S + nQ * nK).
    """
    batch, seq = key_start.shape
    n_qblocks = seq // block_q
    nonempty = key_end > key_start
    first = jnp.where(nonempty, key_start // block_k, n_kblocks)
    last = jnp.where(nonempty, (key_end + block_k - 1) // block_k, n_kblocks)
    b_idx = jnp.arange(batch)[:, None]
    i_idx = (jnp.arange(seq) // block_q)[None, :]
    diff = jnp.zeros((batch, n_qblocks, n_kblocks + 1), jnp.int32)
    diff = diff.at[b_idx, i_idx, first].add(1).at[b_idx, i_idx, last].add(-1)
    touched = (jnp.cumsum(diff, axis=-1)[..., :n_kblocks] > 0).transpose(0, 2, 1)  # [B, nK, nQ]
    order = jnp.argsort(jnp.logical_not(touched).astype(jnp.int32), axis=-1, stable=True)
    return touched.sum(-1).astype(jnp.int32), order.astype(jnp.int32)


def _dkdv_kernel(count_ref, blocks_ref, start_ref, end_ref, q_ref, do_ref, lse_ref, delta_ref,
                 k_ref, v_ref, dk_ref, dv_ref, *, scale, block_q, group):
    block_k, head_dim = k_ref.shape
    k = k_ref[...]
    v = v_ref[...]
    first_key = pl.program_id(0) * block_k
    count = count_ref[()]

    def head_body(g, carry):
        def block_body(t, carry):
            dk, dv = carry
            first = pl.multiple_of(blocks_ref[t] * block_q, block_q)
            rows = pl.ds(first, block_q)
            q = q_ref[rows, g, :]
            do = do_ref[rows, g, :]
            lse = lse_ref[g, rows]
            delta = delta_ref[g, rows]
            mask = range_mask(start_ref[rows], end_ref[rows], first_key, block_k)
            p = jnp.where(mask, jnp.exp(dot_nt(q, k) * scale - lse[:, None]), 0.0)
            dv = dv + dot_tn(p.astype(do.dtype), do)
            ds = p * (dot_nt(do, v) - delta[:, None])
            dk = dk + dot_tn(ds.astype(q.dtype), q)
            return dk, dv

        return lax.fori_loop(0, count, block_body, carry)

    zeros = jnp.zeros((block_k, head_dim), jnp.float32)
    dk, dv = lax.fori_loop(0, group, head_body, (zeros, zeros))
    dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


def _dkdv(q, k, v, key_start, key_end, d_out, lse, delta, *, scale, block_q, block_k,
          interpret):
    batch, seq, n_heads, head_dim = q.shape
    n_keys, n_kv = k.shape[1], k.shape[2]
    group = n_heads // n_kv
    n_kblocks = n_keys // block_k
    count, blocks = _key_block_lists(key_start, key_end, block_q, block_k, n_kblocks)
    rows_full = pl.BlockSpec((None, seq, group, head_dim), lambda j, b, h: (b, 0, h, 0))
    stats_full = pl.BlockSpec((None, group, seq), lambda j, b, h: (b, h, 0))
    key_block = pl.BlockSpec((None, block_k, None, head_dim), lambda j, b, h: (b, j, h, 0))
    return pl.pallas_call(
        functools.partial(_dkdv_kernel, scale=scale, block_q=block_q, group=group),
        grid=(n_kblocks, batch, n_kv),
        in_specs=[
            pl.BlockSpec((None, None), lambda j, b, h: (b, j)),  # count
            pl.BlockSpec((None, None, seq // block_q), lambda j, b, h: (b, j, 0)),  # q blocks
            pl.BlockSpec((None, seq), lambda j, b, h: (b, 0)),  # key_start
            pl.BlockSpec((None, seq), lambda j, b, h: (b, 0)),  # key_end
            rows_full,  # q (the group's heads)
            rows_full,  # d_out
            stats_full,  # lse
            stats_full,  # delta
            key_block,  # k
            key_block,  # v
        ],
        out_specs=[key_block, key_block],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
        compiler_params=compiler_params(interpret, head_dim),
        interpret=interpret,
        name="range_attention_dkdv",
    )(count, blocks, key_start, key_end, q, d_out, lse, delta, k, v)


def backward(q, k, v, key_start, key_end, lo, hi, out, lse, d_out, *, scale, block_q, block_k,
             interpret):
    """Gradients (dq, dk, dv) of the padded forward; all arrays padded as in the forward."""
    d_out = d_out.astype(q.dtype)
    delta = jnp.sum(out.astype(jnp.float32) * d_out.astype(jnp.float32), axis=-1)
    delta = delta.transpose(0, 2, 1)  # [B, Hq, S] like lse
    kwargs = dict(scale=scale, block_q=block_q, block_k=block_k, interpret=interpret)
    dq = _dq(q, k, v, key_start, key_end, lo, hi, d_out, lse, delta, **kwargs)
    dk, dv = _dkdv(q, k, v, key_start, key_end, d_out, lse, delta, **kwargs)
    return dq, dk, dv
