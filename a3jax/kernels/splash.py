"""TPU splash attention for grid-aligned layouts: both streams under one STATIC mask.

With one group size g per batch and every document's groups aligned to the grid of g slots
(`data.align_groups`, a3jax.layout grid alignment), visibility inside a row no longer depends on
the data except through segment ids:

  content row i sees key j  iff  j // g <= i // g  and  segment(j) == segment(i)
  query   row i sees key j  iff  j // g <  i // g  and  segment(j) == segment(i)

So the 2N query rows (content rows, then query rows) against the N keys are one static
block-causal mask, which splash attention turns into a static block-sparsity table at trace time
(blocks fully outside the mask are skipped), with the segment ids applied inside the kernel.
`TwoStreamBlockMask` computes the mask from indices (it is never materialised).

Rows that see no key (the query rows of BOS, padding) are zeroed by the caller
(model/attention.py) with `where`: splash leaves NaN in q blocks whose every key block is skipped,
and its backward pass never visits those blocks, so their gradients are exactly zero.
The kernel compiles with Mosaic when built for a TPU (kernels/platform.py); elsewhere it runs in
Pallas interpret mode (tests).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask

from a3jax.errors import UserError
from a3jax.kernels.platform import kernel_platform

LANES = 128  # splash's key block must be a multiple of the TPU lane count


class TwoStreamBlockMask(splash_mask._ComputableMask):
    """The (n_streams * n, n) static mask: block-causal (inclusive) for the content rows, strictly
    block-causal for the query rows, block size `group_size`."""

    def __init__(self, n: int, group_size: int, streams: tuple[bool, bool]):
        self.n, self.group_size, self.streams = n, group_size, tuple(streams)
        both = all(streams)
        query_only = streams == (False, True)

        def mask_function(q_ids, kv_ids):
            # numpy views at trace time and traced arrays in the kernel: only ops both support.
            row_block = (q_ids % n) // group_size
            key_block = kv_ids // group_size
            inclusive = key_block <= row_block
            strict = key_block < row_block
            if both:
                visible = ((q_ids < n) & inclusive) | ((q_ids >= n) & strict)
            else:
                visible = strict if query_only else inclusive
            return visible

        super().__init__((n * sum(streams), n), mask_function)

    def _key(self):
        return (type(self), self.n, self.group_size, self.streams)

    def __eq__(self, other: object):
        return isinstance(other, TwoStreamBlockMask) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())


def block_size(n: int) -> int:
    """The query and key block: 512 where the (padded) length allows, else 256 or 128."""
    return next(b for b in (512, 256, LANES) if n % b == 0)


@functools.lru_cache(maxsize=64)
def _kernel(n: int, group_size: int, streams: tuple[bool, bool], n_heads: int, interpret: bool):
    mask = TwoStreamBlockMask(n, group_size, streams)
    b = block_size(n)
    sizes = splash.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b,
                              block_kv_dkv=b, block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    with jax.ensure_compile_time_eval():  # concrete mask tables even when first built under jit
        return splash.make_splash_mha(splash_mask.MultiHeadMask([mask] * n_heads), block_sizes=sizes,
                                      head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_two_stream(q, k, v, segment_ids, *, group_size: int, streams: tuple[bool, bool],
                      interpret: bool | None = None):
    """Attention of q [B, S, H, D] (S = N per used stream: content rows, then query rows) over
    k, v [B, N, Hkv, D] for a GRID-ALIGNED layout with group size `group_size` (unchecked here;
    see a3jax.layout.grid_violations). segment_ids int32 [B, N], 0 = padding. Returns [B, S, H, D]."""
    b, s, n_heads, head_dim = q.shape
    n = k.shape[1]
    if s != n * sum(streams):
        raise UserError(f"q has {s} rows but streams={streams} over {n} keys need {n * sum(streams)}")
    if interpret is None:
        interpret = kernel_platform() != "tpu"
    # Splash needs query and key blocks of 128k: each stream's rows and the keys are padded to a
    # multiple of 128. Padded keys (segment -1) are never seen; padded rows (segment -2) see
    # nothing and are cut off.
    n_pad = -(-n // LANES) * LANES
    n_streams = sum(streams)
    kernel = _kernel(n_pad, int(group_size), tuple(streams), n_heads, bool(interpret))
    pad = ((0, 0), (0, n_pad - n), (0, 0), (0, 0))
    q_p = jnp.concatenate([jnp.pad(q[:, i * n:(i + 1) * n], pad) for i in range(n_streams)], axis=1)
    k_p, v_p = jnp.pad(k, pad), jnp.pad(v, pad)
    row_segments = jnp.pad(segment_ids, ((0, 0), (0, n_pad - n)), constant_values=-2)
    row_segments = jnp.concatenate([row_segments] * n_streams, axis=1)
    key_segments = jnp.pad(segment_ids, ((0, 0), (0, n_pad - n)), constant_values=-1)
    scale = jnp.asarray(1.0 / np.sqrt(head_dim), q.dtype)

    def one(q_SxHxD, k_NxKxD, v_NxKxD, rows_S, keys_N):
        out = kernel(jnp.swapaxes(q_SxHxD * scale, 0, 1), jnp.swapaxes(k_NxKxD, 0, 1),
                     jnp.swapaxes(v_NxKxD, 0, 1), splash.SegmentIds(q=rows_S, kv=keys_N))
        return jnp.swapaxes(out, 0, 1)

    out = jax.vmap(one)(q_p, k_p, v_p, row_segments, key_segments)
    return jnp.concatenate([out[:, i * n_pad:i * n_pad + n] for i in range(n_streams)], axis=1)
