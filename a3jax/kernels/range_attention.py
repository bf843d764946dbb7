"""Range-mask flash attention in Pallas: every query row attends one contiguous key range.

Row i of q attends keys j with key_start[i] <= j < key_end[i] (softmax over exactly those keys,
scale 1/sqrt(D)); a row with an empty range returns exactly 0 with finite zero gradients.
GQA: query head h reads kv head h // (Hq // Hkv).

Block skipping (work scales with the visited blocks, not with S * N):
  forward, dq  grid (q block, batch, q head); the key loop runs over key blocks
               [lo, hi) of that q block only, where lo = min start // block_k and
               hi = max ceil(end / block_k) over the block's non-empty rows. The bounds are
               computed in JAX from the ranges and read by the kernel as two scalars.
  dk/dv        grid (key block, batch, kv head); the kernel loops over the query heads of its
               group and over a compact list of the query blocks with at least one row whose
               range touches the key block (list + count computed in JAX, see
               `_key_block_lists`). Untouched pairs are never loaded or computed.
Inside a visited block a per-row mask (start <= col < end) handles the partial edges.
S and N are padded to block multiples (padded rows get empty ranges; padded keys lie outside
every range) and D to a power of two >= 16 (zeros); outputs are sliced back.

The kernels use only standard Pallas (refs, pl.ds, lax.fori_loop, lax.dot_general on 2-D tiles)
so the same code runs in interpret mode on CPU and compiled by the Triton backend on GPU.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from a3jax.errors import UserError
from a3jax.kernels.range_attention_bwd import backward
from a3jax.kernels.tiles import (  # noqa: F401
    MASK_VALUE,
    _cdiv,
    _is_pow2,
    compiler_params,
    dot_nn,
    dot_nt,
    range_mask,
    resolve_interpret,
)


def _row_block_bounds(key_start, key_end, block_q, block_k):
    """Per q block key-block loop bounds lo, hi: int32 [B, S // block_q] (hi - lo >= 0)."""
    b, s = key_start.shape
    nonempty = key_end > key_start
    big = jnp.int32(np.iinfo(np.int32).max)
    lo = jnp.where(nonempty, key_start // block_k, big).reshape(b, s // block_q, block_q).min(-1)
    hi = jnp.where(nonempty, _cdiv(key_end, block_k), 0).reshape(b, s // block_q, block_q).max(-1)
    return jnp.minimum(lo, hi).astype(jnp.int32), hi.astype(jnp.int32)


# ----------------------------------------------------------------------------- forward

def _forward_kernel(lo_ref, hi_ref, start_ref, end_ref, q_ref, k_ref, v_ref,
                    o_ref, lse_ref, *visits_ref, scale, block_k):
    block_q, head_dim = q_ref.shape
    q = q_ref[...]
    start = start_ref[...]
    end = end_ref[...]

    def body(j, carry):
        acc, m_prev, l_prev, visits = carry
        first = pl.multiple_of(j * block_k, block_k)
        k = k_ref[pl.ds(first, block_k), :]
        v = v_ref[pl.ds(first, block_k), :]
        s = dot_nt(q, k) * scale
        mask = range_mask(start, end, first, block_k)
        m_next = jnp.maximum(m_prev, jnp.max(jnp.where(mask, s, MASK_VALUE), axis=1))
        correction = jnp.exp(m_prev - m_next)
        p = jnp.where(mask, jnp.exp(s - m_next[:, None]), 0.0)
        l_next = l_prev * correction + jnp.sum(p, axis=1)
        acc = acc * correction[:, None] + dot_nn(p.astype(v.dtype), v)
        return acc, m_next, l_next, visits + 1

    init = (jnp.zeros((block_q, head_dim), jnp.float32),
            jnp.full((block_q,), MASK_VALUE, jnp.float32),
            jnp.zeros((block_q,), jnp.float32),
            jnp.int32(0))
    acc, m, l, visits = lax.fori_loop(lo_ref[()], hi_ref[()], body, init)
    seen = l > 0.0
    l_safe = jnp.where(seen, l, 1.0)
    o_ref[...] = (acc / l_safe[:, None]).astype(o_ref.dtype)  # empty rows: 0 / 1 = 0
    lse_ref[...] = jnp.where(seen, m + jnp.log(l_safe), 0.0)
    if visits_ref:
        visits_ref[0][()] = visits


def _forward(q, k, v, key_start, key_end, lo, hi, *, scale, block_q, block_k, interpret,
             return_visits=False):
    """Padded inputs: q [B, S, Hq, D], k/v [B, N, Hkv, D], S % block_q == N % block_k == 0."""
    batch, seq, n_heads, head_dim = q.shape
    n_keys, n_kv = k.shape[1], k.shape[2]
    group = n_heads // n_kv
    n_qblocks = seq // block_q
    kernel = functools.partial(_forward_kernel, scale=scale, block_k=block_k)
    in_specs = [
        pl.BlockSpec((None, None), lambda i, b, h: (b, i)),  # lo
        pl.BlockSpec((None, None), lambda i, b, h: (b, i)),  # hi
        pl.BlockSpec((None, block_q), lambda i, b, h: (b, i)),  # key_start
        pl.BlockSpec((None, block_q), lambda i, b, h: (b, i)),  # key_end
        pl.BlockSpec((None, block_q, None, head_dim), lambda i, b, h: (b, i, h, 0)),
        pl.BlockSpec((None, n_keys, None, head_dim), lambda i, b, h: (b, 0, lax.div(h, group), 0)),
        pl.BlockSpec((None, n_keys, None, head_dim), lambda i, b, h: (b, 0, lax.div(h, group), 0)),
    ]
    out_specs = [
        pl.BlockSpec((None, block_q, None, head_dim), lambda i, b, h: (b, i, h, 0)),
        pl.BlockSpec((None, None, block_q), lambda i, b, h: (b, h, i)),
    ]
    out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((batch, n_heads, seq), jnp.float32)]
    if return_visits:
        out_specs.append(pl.BlockSpec((None, None, None), lambda i, b, h: (b, h, i)))
        out_shape.append(jax.ShapeDtypeStruct((batch, n_heads, n_qblocks), jnp.int32))
    return pl.pallas_call(
        kernel,
        grid=(n_qblocks, batch, n_heads),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=compiler_params(interpret, head_dim),
        interpret=interpret,
        name="range_attention_fwd",
    )(lo, hi, key_start, key_end, q, k, v)


# ----------------------------------------------------------------------------- custom vjp

@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10))
def _range_attention_padded(q, k, v, key_start, key_end, lo, hi, scale, block_q, block_k,
                            interpret):
    out, _ = _forward(q, k, v, key_start, key_end, lo, hi, scale=scale, block_q=block_q,
                      block_k=block_k, interpret=interpret)
    return out


def _vjp_fwd(q, k, v, key_start, key_end, lo, hi, scale, block_q, block_k, interpret):
    out, lse = _forward(q, k, v, key_start, key_end, lo, hi, scale=scale, block_q=block_q,
                        block_k=block_k, interpret=interpret)
    return out, (q, k, v, key_start, key_end, lo, hi, out, lse)


def _vjp_bwd(scale, block_q, block_k, interpret, residuals, d_out):

    q, k, v, key_start, key_end, lo, hi, out, lse = residuals
    dq, dk, dv = backward(q, k, v, key_start, key_end, lo, hi, out, lse, d_out, scale=scale,
                          block_q=block_q, block_k=block_k, interpret=interpret)
    return dq, dk, dv, None, None, None, None


_range_attention_padded.defvjp(_vjp_fwd, _vjp_bwd)


# ----------------------------------------------------------------------------- public API

def _check_block(name, value):
    if not isinstance(value, int) or not _is_pow2(value) or value < 16:
        raise UserError(f"{name}={value!r} must be a power of two >= 16 (a GPU tile size)")


def _prepare(q, k, v, key_start, key_end, block_q, block_k):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise UserError(f"expected q [B, S, Hq, D] and k, v [B, N, Hkv, D], got shapes "
                         f"{q.shape}, {k.shape}, {v.shape}")
    batch, seq, n_heads, head_dim = q.shape
    _, n_keys, n_kv, _ = k.shape
    if k.shape != v.shape or k.shape[0] != batch or k.shape[3] != head_dim:
        raise UserError(f"k {k.shape} and v {v.shape} must both be [B={batch}, N, Hkv, D={head_dim}]")
    if n_heads % n_kv:
        raise UserError(f"{n_heads} query heads are not a multiple of {n_kv} kv heads")
    if key_start.shape != (batch, seq) or key_end.shape != (batch, seq):
        raise UserError(f"key_start {key_start.shape} and key_end {key_end.shape} must be "
                         f"[B, S] = {(batch, seq)}")
    _check_block("block_q", block_q)
    _check_block("block_k", block_k)
    seq_pad = _cdiv(seq, block_q) * block_q
    keys_pad = _cdiv(n_keys, block_k) * block_k
    dim_pad = max(16, pl.next_power_of_2(head_dim))
    dpad = (0, dim_pad - head_dim)
    q = jnp.pad(q, ((0, 0), (0, seq_pad - seq), (0, 0), dpad))
    k = jnp.pad(k, ((0, 0), (0, keys_pad - n_keys), (0, 0), dpad))
    v = jnp.pad(v, ((0, 0), (0, keys_pad - n_keys), (0, 0), dpad))
    start = jnp.clip(jnp.asarray(key_start, jnp.int32), 0, n_keys)
    end = jnp.clip(jnp.asarray(key_end, jnp.int32), 0, n_keys)
    end = jnp.maximum(end, start)
    start = jnp.pad(start, ((0, 0), (0, seq_pad - seq)))  # padded rows: [0, 0), empty
    end = jnp.pad(end, ((0, 0), (0, seq_pad - seq)))
    lo, hi = _row_block_bounds(start, end, block_q, block_k)
    return q, k, v, start, end, lo, hi, 1.0 / math.sqrt(head_dim)


def range_attention(q, k, v, key_start, key_end, *, block_q=64, block_k=64, interpret=None,
                    return_visits=False):
    """Flash attention where row i attends keys [key_start[i], key_end[i]).

    q: [B, S, Hq, D]; k, v: [B, N, Hkv, D] (Hq % Hkv == 0; query head h uses kv head
    h // (Hq // Hkv)); key_start, key_end: int32 [B, S]. Softmax over exactly the keys of the
    range with scale 1/sqrt(D); a row with an empty range outputs exactly 0 and gets finite zero
    gradients. Returns [B, S, Hq, D] in q.dtype. Differentiable w.r.t. q, k, v (custom_vjp with
    Pallas backward kernels for dq and for dk/dv). interpret=None: interpret mode on CPU,
    compiled (Triton) elsewhere.

    return_visits=True (debug, not differentiable) also returns int32 [B, Hq, ceil(S/block_q)]:
    the number of key blocks the forward kernel actually visited for each q block and head.
    """
    batch, seq, n_heads, head_dim = q.shape
    interpret = resolve_interpret(interpret)
    qp, kp, vp, start, end, lo, hi, scale = _prepare(q, k, v, key_start, key_end, block_q, block_k)
    if return_visits:
        out, _, visits = _forward(qp, kp, vp, start, end, lo, hi, scale=scale, block_q=block_q,
                                  block_k=block_k, interpret=interpret, return_visits=True)
        return out[:, :seq, :, :head_dim], visits
    out = _range_attention_padded(qp, kp, vp, start, end, lo, hi, scale, block_q, block_k,
                                  interpret)
    return out[:, :seq, :, :head_dim]


def _np_bounds(key_start, key_end, block_q, block_k, n_keys):
    start = np.clip(np.asarray(key_start, np.int64), 0, n_keys)
    end = np.clip(np.asarray(key_end, np.int64), 0, n_keys)
    if start.ndim == 1:
        start, end = start[None], end[None]
    batch, seq = start.shape
    n_qblocks = -(-seq // block_q)
    lo = np.full((batch, n_qblocks), np.iinfo(np.int64).max)
    hi = np.zeros((batch, n_qblocks), np.int64)
    for b in range(batch):
        for row in np.flatnonzero(end[b] > start[b]):
            i = row // block_q
            lo[b, i] = min(lo[b, i], start[b, row] // block_k)
            hi[b, i] = max(hi[b, i], -(-end[b, row] // block_k))
    return lo, hi, n_qblocks


def block_visits(key_start, key_end, block_q, block_k, n_keys) -> int:
    """Analytic number of (q block, key block) pairs the forward kernel visits, summed over the
    batch, for ONE query head (the kernel's grid is per head: multiply by Hq for its total).
    Inputs [B, S] or [S] (numpy or jax arrays, concrete)."""
    lo, hi, _ = _np_bounds(key_start, key_end, block_q, block_k, n_keys)
    return int(np.maximum(hi - lo, 0).sum())


def dense_block_count(key_start, key_end, block_q, block_k, n_keys) -> int:
    """Pairs a kernel without skipping would visit: B * ceil(S/block_q) * ceil(N/block_k), per
    query head (same convention as `block_visits`)."""
    shape = np.shape(key_start)
    batch, seq = (1, shape[0]) if len(shape) == 1 else shape
    return int(batch * -(-seq // block_q) * -(-n_keys // block_k))
