"""A key-range attention backward for Hopper that skips the blocks outside each tile's ranges.

Why it exists: tokamax's Mosaic GPU attention takes per-row key ranges (`k_start`, `k_end`). Its
forward visits only the key blocks in [min k_start, max k_end) of each query tile, but its sm90
backward (tokamax 0.0.12 and 0.0.17, checked at upstream HEAD of 2026-08-21) narrows its dq and
dk/dv loops only for a plain causal mask: under key ranges it visits every key block of every
query tile and masks elementwise, so A3's two-stream backward costs twice what it needs to.

What it does: the flash-attention backward of `softmax(scale q k^T) v` where row i sees keys
[start[i], end[i]), given the forward's logsumexp, in two Pallas Mosaic GPU kernels:
  dq     grid (batch, q head, q tile): the key loop runs over the key blocks [lo, hi) of the tile
         (lo = min start // block_k, hi = ceil(max end / block_k) over the tile's rows);
  dk/dv  grid (batch, kv head, key tile): the loop runs over the query heads of the group and, for
         each, over the compact list of query tiles with a row whose range touches the key tile
         (`range_attention_bwd._key_block_lists`); GQA accumulates in float32 inside the kernel.
Inside a visited pair the per-row mask start <= col < end handles the partial edges, so the
result does not depend on the ranges being sorted: skipping only removes pairs whose mask is empty.
K/V (dq) and Q/dO (dk/dv) tiles stream through shared memory with `plgpu.emit_pipeline` (TMA,
double-buffered); the products are WGMMA with float32 accumulators. One warpgroup per program:
small and plain rather than warp-specialised; its speed is for the device run to measure
(`a3jax bench attention`, backend `tokamax` with `tokamax_bwd=skip`).

Dropping it later: the upstream change is the same loop bounds in tokamax's
`pallas_mosaic_gpu_vjp_kernel_sm90.py`: in `kernel_dq`, `lb`/`ub` from the tile's pre-reduced
k_start minimum and k_end maximum (as its forward's `get_kv_ranges` already does); in
`kernel_dkv`, a per-key-tile list of query tiles in place of `range(num_q_tiles)`. Once a
tokamax release does that, `tokamax_bwd=skip` can route to it and this module can go.

CPU: the kernels run under Mosaic GPU's interpret mode (`interpret=True`), which simulates shared
memory, barriers, TMA copies and WGMMA; tests/test_hopper_bwd.py checks them against the dense
XLA gradient there, and tests/test_lowering.py lowers them for `cuda`.
"""

from __future__ import annotations

import functools
import inspect
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from a3jax.kernels.range_attention import _row_block_bounds
from a3jax.kernels.range_attention_bwd import _key_block_lists
from a3jax.kernels.tiles import _cdiv

LOG2E = math.log2(math.e)
BLOCK = 64  # one warpgroup's WGMMA tile: 64 rows; key tiles of 64 keep both kernels' SMEM small


def _plgpu():
    from jax.experimental.pallas import mosaic_gpu as plgpu

    return plgpu


def _layouts():
    plgpu = _plgpu()
    wgmma = plgpu.Layout.WGMMA
    return wgmma, wgmma.reduce(1), wgmma.reduce(0)  # [m, n], per-row [m], per-column [n]


def _smem(shape, dtype):
    """Shared memory for a WGMMA operand: tiled and swizzled as the instruction reads it."""
    plgpu = _plgpu()
    transforms = _transforms(shape, dtype)
    return plgpu.SMEM(shape, dtype, transforms=transforms)


def _transforms(shape, dtype):
    plgpu = _plgpu()
    bits = jnp.dtype(dtype).itemsize * 8
    swizzle = plgpu.find_swizzle(shape[-1] * bits)
    return plgpu.TilingTransform((8, 8 * swizzle // bits)), plgpu.SwizzleTransform(swizzle)


def _interpret_params(interpret: bool):
    if not interpret:
        return None
    plgpu = _plgpu()
    if hasattr(plgpu, "InterpretGPUParams"):  # public from jax 0.12
        return plgpu.InterpretGPUParams()
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams  # jax 0.10/0.11

    return InterpretGPUParams()


def _vector_loader(layout, interpret: bool):
    """Loads a 1-D slice of a GMEM ref in `layout`. Mosaic GPU's interpret mode has no
    `plgpu.load` (jax 0.10-0.12): there the slice is read as a plain ref read, which is the same
    values without a register layout."""
    if interpret:
        return lambda ref, idx: ref[idx]
    load = _plgpu().load
    if "idx" in inspect.signature(load).parameters:  # jax 0.10/0.11: load(ref, idx, ...)
        return functools.partial(load, layout=layout, optimized=False)
    return lambda ref, idx: load(ref.at[idx], layout=layout, optimized=False)  # jax 0.12


def _iota(shape, dim, layout, interpret: bool):
    """int32 indices along `dim` in `layout` (interpret mode: no layouts, as above)."""
    if interpret:
        return lax.broadcasted_iota(jnp.int32, shape, dim)
    return _plgpu().broadcasted_iota(jnp.int32, shape, dim, layout=layout)


class _Matmul:
    """acc += a @ b (or a @ b^T) on WGMMA, or, in interpret mode, as a plain float32 dot.

    Mosaic GPU's interpret mode (jax 0.10-0.12) simulates `wgmma` only for untransposed SMEM
    operands, so there the products read the operands and accumulate in a float32 SMEM buffer:
    the same kernel structure (pipeline, bounds, masks), with the instruction swapped."""

    def __init__(self, interpret: bool):
        self.interpret = interpret

    def accumulator(self, shape):
        plgpu = _plgpu()
        if self.interpret:
            return plgpu.SMEM(shape, jnp.float32)
        return plgpu.ACC(shape, jnp.float32)

    def init(self, acc):
        if self.interpret:
            acc[...] = jnp.zeros(acc.shape, jnp.float32)

    def add(self, acc, a, b, transpose_b=False):
        if self.interpret:
            a = a if isinstance(a, jax.Array) else a[...]
            dims = ((1,), (1,)) if transpose_b else ((1,), (0,))
            acc[...] += lax.dot_general(a, b[...], (dims, ((), ())),
                                        preferred_element_type=jnp.float32)
            return
        _plgpu().wgmma(acc, a, b.T if transpose_b else b)

    def wait(self):
        if not self.interpret:
            _plgpu().wgmma_wait(0)

    def product(self, a, b, shape, transpose_b=False):
        """a @ b (or a @ b^T) into a fresh float32 array."""

        def body(acc):
            self.init(acc)
            self.add(acc, a, b, transpose_b)
            self.wait()
            return acc[...]

        return pl.run_scoped(body, self.accumulator(shape))


def _launch(kernel, out_type, tile, dtype, grid: dict, interpret: bool):
    """Both kernels' launch: `grid` as {axis name: size}; scratch = two WGMMA operand tiles of
    `tile` (q and dO, or k and v: each kernel writes its result through the first ones) and the
    barrier their two TMA loads arrive on."""
    plgpu = _plgpu()
    return plgpu.kernel(kernel, out_type=out_type,
                        scratch_types=[_smem(tile, dtype), _smem(tile, dtype), plgpu.Barrier(num_arrivals=2)],
                        grid=tuple(grid.values()), grid_names=tuple(grid),
                        compiler_params=plgpu.CompilerParams(approx_math=True),
                        interpret=_interpret_params(interpret))


# ----------------------------------------------------------------------------- dq

def _dq_call(q, k, v, d_out, lse, delta, start, end, lo, hi, *, scale, block_q, block_k, interpret):
    plgpu = _plgpu()
    full, row, _ = _layouts()
    mm = _Matmul(interpret)
    batch, seq, n_heads, head_dim = q.shape
    n_kv = k.shape[2]
    group = n_heads // n_kv

    def kernel(q_gmem, k_gmem, v_gmem, do_gmem, lse_gmem, delta_gmem, start_gmem, end_gmem,
               lo_gmem, hi_gmem, dq_gmem, q_smem, do_smem, barrier):
        b, h, tile = lax.axis_index("b"), lax.axis_index("h"), lax.axis_index("q_tiles")
        kv_head = lax.div(h, jnp.int32(group))
        rows = pl.ds(tile * block_q, block_q)
        plgpu.copy_gmem_to_smem(q_gmem.at[b, rows, h], q_smem, barrier)
        plgpu.copy_gmem_to_smem(do_gmem.at[b, rows, h], do_smem, barrier)
        load_row = _vector_loader(row, interpret)
        lse2 = load_row(lse_gmem.at[b, h], (rows,)) * LOG2E
        delta_r = load_row(delta_gmem.at[b, h], (rows,))
        start_r = load_row(start_gmem.at[b], (rows,))
        end_r = load_row(end_gmem.at[b], (rows,))
        first_block = lo_gmem[b, tile]
        last_block = hi_gmem[b, tile]
        plgpu.barrier_wait(barrier)
        by_row = lambda x: lax.broadcast_in_dim(x, (block_q, block_k), [0])  # noqa: E731

        def step(dq_acc, index, k_smem, v_smem):
            first_key = (first_block + index[0]) * block_k
            s = mm.product(q_smem, k_smem, (block_q, block_k), transpose_b=True)
            cols = first_key + _iota(s.shape, 1, full, interpret)
            inside = (cols >= by_row(start_r)) & (cols < by_row(end_r))
            p = jnp.where(inside, jnp.exp2(s * (scale * LOG2E) - by_row(lse2)), 0.0)
            dp = mm.product(do_smem, v_smem, (block_q, block_k), transpose_b=True)
            ds = p * (dp - by_row(delta_r))
            mm.add(dq_acc, ds.astype(k_smem.dtype), k_smem)
            mm.wait()

        def accumulate(dq_acc):
            mm.init(dq_acc)
            spec = plgpu.BlockSpec((block_k, head_dim), lambda j: (first_block + j, 0),
                                   transforms=_transforms((block_k, head_dim), k.dtype))
            plgpu.emit_pipeline(functools.partial(step, dq_acc), grid=(last_block - first_block,),
                                in_specs=[spec, spec], max_concurrent_steps=2)(
                k_gmem.at[b, :, kv_head], v_gmem.at[b, :, kv_head])
            return dq_acc[...]

        dq = pl.run_scoped(accumulate, mm.accumulator((block_q, head_dim)))
        q_smem[...] = (dq * scale).astype(q_smem.dtype)  # q is read: its buffer carries dq out
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(q_smem, dq_gmem.at[b, rows, h])
        plgpu.wait_smem_to_gmem(0)

    return _launch(kernel, jax.ShapeDtypeStruct(q.shape, q.dtype), (block_q, head_dim), q.dtype,
                   {"b": batch, "h": n_heads, "q_tiles": seq // block_q}, interpret)(
        q, k, v, d_out, lse, delta, start, end, lo, hi)


# ----------------------------------------------------------------------------- dk, dv

def _dkdv_call(q, k, v, d_out, lse, delta, start, end, count, blocks, *, scale, block_q, block_k,
               interpret):
    plgpu = _plgpu()
    full, _, col = _layouts()
    mm = _Matmul(interpret)
    batch, seq, n_heads, head_dim = q.shape
    n_keys, n_kv = k.shape[1], k.shape[2]
    group = n_heads // n_kv

    def kernel(q_gmem, k_gmem, v_gmem, do_gmem, lse_gmem, delta_gmem, start_gmem, end_gmem,
               count_gmem, blocks_gmem, dk_gmem, dv_gmem, k_smem, v_smem, barrier):
        b, kv_head, tile = lax.axis_index("b"), lax.axis_index("kv_h"), lax.axis_index("k_tiles")
        keys = pl.ds(tile * block_k, block_k)
        plgpu.copy_gmem_to_smem(k_gmem.at[b, keys, kv_head], k_smem, barrier)
        plgpu.copy_gmem_to_smem(v_gmem.at[b, keys, kv_head], v_smem, barrier)
        n_tiles = count_gmem[b, tile]
        q_tile = lambda t: blocks_gmem[b, tile, t]  # noqa: E731
        plgpu.barrier_wait(barrier)
        by_col = lambda x: lax.broadcast_in_dim(x, (block_k, block_q), [1])  # noqa: E731
        load_col = _vector_loader(col, interpret)

        def step(dk_acc, dv_acc, index, q_smem, do_smem):
            g, t = index
            h = kv_head * group + g
            rows = pl.ds(q_tile(t) * block_q, block_q)
            lse2 = load_col(lse_gmem.at[b, h], (rows,)) * LOG2E
            delta_c = load_col(delta_gmem.at[b, h], (rows,))
            start_c = load_col(start_gmem.at[b], (rows,))
            end_c = load_col(end_gmem.at[b], (rows,))
            s_t = mm.product(k_smem, q_smem, (block_k, block_q), transpose_b=True)  # keys x rows
            key = tile * block_k + _iota(s_t.shape, 0, full, interpret)
            inside = (key >= by_col(start_c)) & (key < by_col(end_c))
            p_t = jnp.where(inside, jnp.exp2(s_t * (scale * LOG2E) - by_col(lse2)), 0.0)
            dp_t = mm.product(v_smem, do_smem, (block_k, block_q), transpose_b=True)
            ds_t = p_t * (dp_t - by_col(delta_c))
            mm.add(dv_acc, p_t.astype(do_smem.dtype), do_smem)
            mm.add(dk_acc, ds_t.astype(q_smem.dtype), q_smem)
            mm.wait()

        def accumulate(dk_acc, dv_acc):
            mm.init(dk_acc)
            mm.init(dv_acc)
            def spec(ref):
                return plgpu.BlockSpec((block_q, None, head_dim),
                                       lambda g, t: (q_tile(t), kv_head * group + g, 0),
                                       transforms=_transforms((block_q, head_dim), ref.dtype))

            plgpu.emit_pipeline(functools.partial(step, dk_acc, dv_acc), grid=(group, n_tiles),
                                in_specs=[spec(q), spec(d_out)], max_concurrent_steps=2)(
                q_gmem.at[b], do_gmem.at[b])
            return dk_acc[...], dv_acc[...]

        acc = mm.accumulator((block_k, head_dim))
        dk, dv = pl.run_scoped(accumulate, acc, acc)
        k_smem[...] = (dk * scale).astype(k_smem.dtype)  # k and v are read: their buffers carry
        v_smem[...] = dv.astype(v_smem.dtype)           # dk and dv out
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(k_smem, dk_gmem.at[b, keys, kv_head])
        plgpu.copy_smem_to_gmem(v_smem, dv_gmem.at[b, keys, kv_head])
        plgpu.wait_smem_to_gmem(0)

    return _launch(kernel, [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype)],
                   (block_k, head_dim), k.dtype, {"b": batch, "kv_h": n_kv, "k_tiles": n_keys // block_k},
                   interpret)(q, k, v, d_out, lse, delta, start, end, count, blocks)


# ----------------------------------------------------------------------------- entry point

def range_attention_bwd(q, k, v, out, lse, d_out, key_start, key_end, *, block_q=BLOCK,
                        block_k=BLOCK, interpret=False):
    """Gradients (dq, dk, dv) of range attention, skipping the blocks outside the ranges.

    q, out, d_out [B, S, Hq, D]; k, v [B, N, Hkv, D] (bfloat16 or float16); lse float32 [B, Hq, S],
    the forward's logsumexp of the scaled logits over each row's range (tokamax's residuals give
    it as m + log(l)); key_start, key_end int32 [B, S]. Rows with an empty range get zero
    gradients. Shapes are padded here to the tiles (rows, keys: multiples of the blocks; D: of 64).
    """
    batch, seq, n_heads, head_dim = q.shape
    n_keys = k.shape[1]
    scale = 1.0 / math.sqrt(head_dim)
    seq_pad = _cdiv(seq, block_q) * block_q
    keys_pad = _cdiv(n_keys, block_k) * block_k
    dim_pad = _cdiv(head_dim, 64) * 64
    rows4 = ((0, 0), (0, seq_pad - seq), (0, 0), (0, dim_pad - head_dim))
    keys4 = ((0, 0), (0, keys_pad - n_keys), (0, 0), (0, dim_pad - head_dim))
    d_out = d_out.astype(q.dtype)
    delta = jnp.einsum("bshd,bshd->bhs", out.astype(jnp.float32), d_out.astype(jnp.float32))
    start = jnp.clip(key_start.astype(jnp.int32), 0, n_keys)
    end = jnp.maximum(jnp.clip(key_end.astype(jnp.int32), 0, n_keys), start)
    start, end = (jnp.pad(x, ((0, 0), (0, seq_pad - seq))) for x in (start, end))  # pads: empty
    stats = ((0, 0), (0, 0), (0, seq_pad - seq))
    lse, delta = jnp.pad(lse.astype(jnp.float32), stats), jnp.pad(delta, stats)
    qp, dop = jnp.pad(q, rows4), jnp.pad(d_out, rows4)
    kp, vp = jnp.pad(k, keys4), jnp.pad(v, keys4)
    lo, hi = _row_block_bounds(start, end, block_q, block_k)
    count, blocks = _key_block_lists(start, end, block_q, block_k, keys_pad // block_k)
    kwargs = dict(scale=scale, block_q=block_q, block_k=block_k, interpret=interpret)
    dq = _dq_call(qp, kp, vp, dop, lse, delta, start, end, lo, hi, **kwargs)
    dk, dv = _dkdv_call(qp, kp, vp, dop, lse, delta, start, end, count, blocks, **kwargs)
    return (dq[:, :seq, :, :head_dim], dk[:, :n_keys, :, :head_dim], dv[:, :n_keys, :, :head_dim])
