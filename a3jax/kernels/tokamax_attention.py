"""Two-stream attention on tokamax's flash attention (Mosaic GPU on Hopper/Blackwell).

tokamax's attention mask takes per-row key ranges, `k_start` (inclusive) and `k_end` (exclusive):
exactly the ranges of the sorted layout (a3jax.layout.key_ranges):
  content row i sees [key_start(i), content_end(i)),  query row i sees [key_start(i), query_end(i)).
Its forward skips the key blocks outside each query tile's [min k_start, max k_end); its backward
applies the ranges elementwise (a dense backward) unless the mask is plain causal.

Rows that see nothing (padding, the query rows of a document's context group) would make the
kernel divide by an empty softmax. They are given one dummy key (their own slot) and their outputs
are zeroed with `where`, so they return exactly 0, and their gradients are finite and exactly 0
(a zero cotangent through a normalised softmax over one key contributes nothing to dq, dk, dv).
Padding rows are treated the same way (their outputs are unspecified by the API and never read),
which keeps them out of the kernel's block ranges.

`fused=True` runs both streams as one call of 2N query rows against the N keys; `fused=False`
runs two calls of N rows. GQA is native (no repeated K/V).

`backward`: "tokamax" differentiates through tokamax's own backward (dense under key ranges);
"skip" keeps tokamax's forward (asked for its softmax residuals) and computes the gradients with
a3jax's block-skipping Hopper kernels (kernels/hopper_range_bwd.py), which visit only the blocks
inside each tile's ranges. On the CPU ("xla" implementation) those kernels run in Mosaic GPU's
interpret mode: exact, slow, for the tests.

`implementation`: "mosaic" is the GPU kernel (sm80/sm90/sm100); "xla" is tokamax's own reference
implementation with the SAME mask object, which runs anywhere (the CPU tests use it).

tokamax is an optional dependency (the `gpu` extra). Its Mask and ops live in `tokamax._src`
(the public `tokamax.dot_product_attention` has no per-row ranges), so the versions are pinned
in pyproject.toml and checked in `require_tokamax`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from a3jax.errors import UserError

IMPLEMENTATIONS = ("mosaic", "xla")
BACKWARDS = ("tokamax", "skip")
TESTED_VERSIONS = ("0.0.12", "0.0.17")  # 0.0.12: the newest for Python 3.11; 0.0.17: Python >= 3.12


class TokamaxUnavailable(UserError, ImportError):
    pass


@functools.cache
def require_tokamax():
    """tokamax's attention base module (Mask, the XLA reference op); a clear error if missing."""
    try:
        import tokamax  # noqa: F401  (its import registers the ops)
        from tokamax._src.ops.attention import base
    except ImportError as error:
        raise TokamaxUnavailable(
            f"model.attention='tokamax' needs the tokamax package ({error}); install the gpu extra "
            "(pip install 'a3jax[gpu]') or use model.attention='auto', 'cudnn' or 'pallas'") from error
    # tokamax reads its options from absl flags and, on first use, parses sys.argv as absl flags
    # unless they are parsed already; our argv (argparse, pytest) is not absl's, so mark them
    # parsed with their defaults.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    return base


def tokamax_available() -> bool:
    try:
        require_tokamax()
    except TokamaxUnavailable:
        return False
    return True


@functools.cache
def _op(implementation: str):
    base = require_tokamax()
    if implementation == "xla":
        return base.DotProductAttention()
    if implementation == "mosaic":
        from tokamax._src.ops.attention import pallas_mosaic_gpu

        return pallas_mosaic_gpu.PallasMosaicGpuFlashAttention()
    raise UserError(f"tokamax implementation={implementation!r} is not one of {IMPLEMENTATIONS}")


def _safe_ranges(key_start_BxS, key_end_BxS, real_BxS):
    """Ranges with one dummy key (the row's own slot) for rows that see nothing or are not real,
    and the mask of rows whose output is kept."""
    n_rows = key_start_BxS.shape[1]
    sees_any = real_BxS & (key_end_BxS > key_start_BxS)
    own_slot = jnp.broadcast_to(jnp.arange(n_rows, dtype=jnp.int32), key_start_BxS.shape)
    start = jnp.where(sees_any, key_start_BxS, own_slot)
    end = jnp.where(sees_any, key_end_BxS, own_slot + 1)
    return start, end, sees_any


def _range_forward(q_BxSxHxD, k_BxNxKxD, v_BxNxKxD, start_BxS, end_BxS, implementation,
                   residuals=False):
    base = require_tokamax()
    mask = base.Mask(k_start=start_BxS[:, None, :], k_end=end_BxS[:, None, :])
    if not residuals:
        return _op(implementation)(q_BxSxHxD, k_BxNxKxD, v_BxNxKxD, mask=mask)
    out, (max_BxHxS, denominator_BxHxS) = _op(implementation)(
        q_BxSxHxD, k_BxNxKxD, v_BxNxKxD, mask=mask, return_residuals=True)
    return out, max_BxHxS + jnp.log(denominator_BxHxS)  # the logsumexp of the scaled logits


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _skipping_call(q_BxSxHxD, k_BxNxKxD, v_BxNxKxD, start_BxS, end_BxS, implementation):
    """tokamax's forward, a3jax's block-skipping backward (kernels/hopper_range_bwd.py)."""
    return _range_forward(q_BxSxHxD, k_BxNxKxD, v_BxNxKxD, start_BxS, end_BxS, implementation)


def _skipping_fwd(q_BxSxHxD, k_BxNxKxD, v_BxNxKxD, start_BxS, end_BxS, implementation):
    out, lse_BxHxS = _range_forward(q_BxSxHxD, k_BxNxKxD, v_BxNxKxD, start_BxS, end_BxS,
                                    implementation, residuals=True)
    return out, (q_BxSxHxD, k_BxNxKxD, v_BxNxKxD, start_BxS, end_BxS, out, lse_BxHxS)


def _skipping_bwd(implementation, residuals, d_out):
    from a3jax.kernels.hopper_range_bwd import range_attention_bwd

    q, k, v, start, end, out, lse = residuals
    dq, dk, dv = range_attention_bwd(q, k, v, out, lse, d_out, start, end,
                                     interpret=implementation != "mosaic")
    return dq, dk, dv, None, None


_skipping_call.defvjp(_skipping_fwd, _skipping_bwd)


def _call(q_BxSxHxD, k_BxNxKxD, v_BxNxKxD, start_BxS, end_BxS, sees_any_BxS, implementation,
          backward="tokamax"):
    if backward not in BACKWARDS:
        raise UserError(f"tokamax backward={backward!r} is not one of {BACKWARDS}")
    if backward == "skip":
        out = _skipping_call(q_BxSxHxD, k_BxNxKxD, v_BxNxKxD, start_BxS, end_BxS, implementation)
    else:
        out = _range_forward(q_BxSxHxD, k_BxNxKxD, v_BxNxKxD, start_BxS, end_BxS, implementation)
    return jnp.where(sees_any_BxS[:, :, None, None], out, jnp.zeros((), out.dtype))


def range_streams(q_BxRxHxD, k_BxNxKxD, v_BxNxKxD, key_starts, key_ends, real_BxN, *,
                  fused: bool = True, implementation: str = "mosaic", backward: str = "tokamax"):
    """Attention of R = len(key_ends) * N query rows (one block of N rows per stream, in order)
    against the N keys: row i of stream s attends [key_starts[s][i], key_ends[s][i]).

    Rows that see nothing, and rows with real_BxN false (padding), return exactly 0.
    fused: one kernel call over all R rows; else one call per stream.
    backward: "tokamax" (its own) or "skip" (a3jax's block-skipping kernels; see the module doc).
    """
    n = k_BxNxKxD.shape[1]
    if q_BxRxHxD.shape[1] != n * len(key_ends):
        raise UserError(f"q has {q_BxRxHxD.shape[1]} rows; expected {len(key_ends)} streams x {n} keys")
    safe = [_safe_ranges(s, e, real_BxN) for s, e in zip(key_starts, key_ends)]
    if fused or len(safe) == 1:
        start, end, sees_any = (jnp.concatenate(x, 1) for x in zip(*safe))
        return _call(q_BxRxHxD, k_BxNxKxD, v_BxNxKxD, start, end, sees_any, implementation, backward)
    outs = [_call(q_BxRxHxD[:, i * n:(i + 1) * n], k_BxNxKxD, v_BxNxKxD, *ranges, implementation,
                  backward) for i, ranges in enumerate(safe)]
    return jnp.concatenate(outs, 1)



def causal_call(q_BxNxHxD, k_BxNxKxD, v_BxNxKxD, *, key_start=None, real_BxN=None,
                implementation: str = "mosaic"):
    """tokamax's causal attention: row i attends [key_start[i], i] (key_start None: [0, i]).

    Only the causal mask with a k_start (no k_end) keeps tokamax's causal kernel path, whose
    backward skips the blocks above the diagonal. Rows with real_BxN false return 0 (padding sees
    its own run of padding keys, so no row here sees nothing).
    """
    base = require_tokamax()
    mask = base.Mask(is_causal=True) if key_start is None else base.Mask(
        k_start=key_start[:, None, :], is_causal=True)
    out = _op(implementation)(q_BxNxHxD, k_BxNxKxD, v_BxNxKxD, mask=mask)
    if real_BxN is None:
        return out
    return jnp.where(real_BxN[:, :, None, None], out, jnp.zeros((), out.dtype))
