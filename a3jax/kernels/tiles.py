"""Tile helpers shared by the range-attention kernels (forward in range_attention.py, backward in
range_attention_bwd.py): 2-D dot products in float32, the per-row range mask, Triton parameters,
and whether a kernel runs compiled or in interpret mode."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from a3jax.kernels.platform import kernel_platform

MASK_VALUE = -1e30  # finite: a row that has seen no key yet keeps m finite (no inf - inf)


def _is_pow2(x: int) -> bool:
    return x >= 1 and (x & (x - 1)) == 0


def _cdiv(a, b):
    return (a + b - 1) // b


def resolve_interpret(interpret) -> bool:
    """None: compiled Triton when the kernels are built for a GPU (kernels/platform.py), else
    interpret mode."""
    if interpret is None:
        return kernel_platform() != "gpu"
    return bool(interpret)


def compiler_params(interpret: bool, head_dim: int):
    if interpret:
        return None
    from jax.experimental.pallas import triton as plgpu

    cls = getattr(plgpu, "CompilerParams", None) or plgpu.TritonCompilerParams
    return cls(num_warps=4 if head_dim <= 64 else 8, num_stages=2)


def dot_nt(a, b):
    """a [m, d] @ b[n, d]^T -> [m, n] in float32."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def dot_nn(a, b):
    """a [m, k] @ b [k, n] -> [m, n] in float32."""
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def dot_tn(a, b):
    """a [k, m]^T @ b [k, n] -> [m, n] in float32."""
    return lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def range_mask(start, end, first_col, block_k):
    """[rows, block_k] bool: start <= col < end for cols first_col .. first_col + block_k - 1."""
    cols = first_col + jnp.arange(block_k, dtype=jnp.int32)
    return (cols[None, :] >= start[:, None]) & (cols[None, :] < end[:, None])
