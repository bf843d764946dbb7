"""The one two-stream attention API and its dense XLA reference backend.

Visibility inside one row (see layout.py):
  content row i sees key j  iff  segment(j) == segment(i) and group(j) <= group(i)
  query   row i sees key j  iff  segment(j) == segment(i) and group(j) <  group(i)
Keys and values always come from the content stream. A row that sees no key (the query stream
of a context row, padding) returns exactly 0 with finite, zero gradients.
"""

from __future__ import annotations

import functools
import logging
import math

import jax
import jax.numpy as jnp

from a3jax.errors import UserError
from a3jax.kernels.platform import kernel_platform
from a3jax.layout import key_ranges
from a3jax.model.config import ATTENTION_BACKENDS as BACKENDS
from a3jax.model.dense_attention import _cudnn_attention, _masked_attention, visibility_masks  # noqa: F401
from a3jax.model.prefix_chunks import prefix_chunked_streams
from a3jax.model.sharding import batch_axes, logical_to_mesh

_log = logging.getLogger("a3jax")


# The kernels are imported where a backend is first used: tokamax is an optional dependency (its
# import takes 0.9 s), and the Pallas splash module alone takes 0.17 s of every CLI start.
HALF_PRECISION_ONLY = ("cudnn", "tokamax", "tokamax_skip")  # their GPU kernels: bf16/f16 inputs only
TOKAMAX_BACKENDS = ("tokamax", "tokamax_skip")


@functools.cache
def resolve_backend(name: str, platform: str, static_groups: bool = False, dtype: str = "bfloat16") -> str:
    """The backend that `name` means on `platform`; `auto` picks per platform and logs it.

    static_groups: the call has a static group size over a grid-aligned layout (`group_size=`),
    which `splash` needs; without one `splash` (and `auto` on TPU) computes with `xla`.
    dtype: the compute dtype. On a GPU, cuDNN's and tokamax's kernels take only bfloat16/float16
    (measured on an H200: cuDNN "Unsupported dtype", tokamax "Unsupported precision TF32"), so
    `auto` computes float32 with `xla` there, and asking for them with float32 is an error.
    """
    if platform == "gpu" and dtype == "float32":
        if name in HALF_PRECISION_ONLY:
            raise UserError(f"model.attention={name!r} runs bfloat16/float16 kernels on a GPU, but "
                             "model.dtype='float32'; set --config.model.dtype=bfloat16, or use "
                             "model.attention='xla' or 'pallas' for float32")
        if name == "auto":
            _log.info("attention backend auto -> xla on gpu for float32 (cudnn and tokamax take "
                      "bfloat16/float16 only)")
            return "xla"
    if name not in BACKENDS:
        raise UserError(f"model.attention={name!r} is not one of {BACKENDS}")
    if name == "cudnn" and platform != "gpu":
        raise UserError(f"model.attention='cudnn' needs a GPU, but JAX runs on {platform}; "
                         "use 'auto', 'xla' or 'pallas'")
    if name == "splash" and platform == "gpu":
        raise UserError("model.attention='splash' is the TPU kernel (Pallas Mosaic); on a GPU use "
                         "'auto', 'tokamax', 'cudnn' or 'pallas'")
    if name in TOKAMAX_BACKENDS:
        from a3jax.kernels.tokamax_attention import require_tokamax

        require_tokamax()  # a clear error now rather than inside a traced step
        if platform != "gpu":
            _log.info("attention backend %s on %s runs tokamax's XLA reference implementation "
                      "(the Mosaic GPU kernel needs an sm80+ NVIDIA GPU)%s", name, platform,
                      "; its backward kernels run in Mosaic GPU's interpret mode (slow: for tests)"
                      if name == "tokamax_skip" else "")
        if name == "tokamax_skip" and platform == "gpu" and jax.default_backend() == "gpu":
            major = _compute_capability_major()
            if major != 9:
                raise UserError(f"model.attention='tokamax_skip' runs a Hopper (sm90) backward kernel, "
                                 f"but this GPU has compute capability {major}.x; use 'tokamax'")
    if name == "auto":
        if platform == "gpu":
            chosen = "tokamax" if _tokamax_fits_gpu() else "cudnn"
        else:
            chosen = {"tpu": "splash" if static_groups else "xla"}.get(platform, "xla")
        _log.info("attention backend auto -> %s on %s", chosen, platform)
        return chosen
    if name == "splash" and not static_groups:
        _log.info("attention backend splash needs one group size per batch over grid-aligned rows "
                  "(data.align_groups); calls without one (eval, scoring) use xla")
        return "xla"
    return name


def _compute_capability_major() -> int:
    capability = str(getattr(jax.devices()[0], "compute_capability", "0"))
    return int(capability.split(".")[0]) if capability.split(".")[0].isdigit() else 0


def _tokamax_fits_gpu() -> bool:
    """auto picks tokamax on Hopper/Blackwell GPUs (compute capability 9.x/10.x) when tokamax
    imports; otherwise cuDNN."""
    from a3jax.kernels.tokamax_attention import tokamax_available

    if _compute_capability_major() not in (9, 10):
        return False
    if not tokamax_available():
        _log.info("attention backend auto: tokamax is not installed (pip install 'a3jax[gpu]'); "
                  "using cudnn")
        return False
    return True


def _dense_streams(streams, backend, q, k, v, segment_ids, groups, chunks=1, group_size=None):
    dense_fn = _cudnn_attention if backend == "cudnn" else _masked_attention
    if chunks > 1:
        return prefix_chunked_streams(dense_fn, streams, q, k, v, segment_ids, groups,
                                      chunks=chunks, group_size=group_size)
    content_mask, query_mask = visibility_masks(segment_ids, groups)
    masks = [m for m, used in zip((content_mask, query_mask), streams) if used]
    mask = jnp.concatenate(masks, 1) if len(masks) > 1 else masks[0]
    return dense_fn(q, k, v, mask)


def _pallas_streams(streams, q, k, v, segment_ids, groups):
    from a3jax.kernels.range_attention import range_attention

    key_start, content_end, query_end = key_ranges(segment_ids, groups)
    ends = [e for e, used in zip((content_end, query_end), streams) if used]
    starts = [key_start] * len(ends)
    return range_attention(q, k, v, jnp.concatenate(starts, 1), jnp.concatenate(ends, 1))


def _tokamax_streams(streams, q, k, v, segment_ids, groups, fused=True, causal=False,
                     backward="tokamax"):
    from a3jax.kernels import tokamax_attention

    key_start, content_end, query_end = key_ranges(segment_ids, groups)
    implementation = "mosaic" if kernel_platform() == "gpu" else "xla"
    if causal:  # content row i sees [document start, i]: tokamax's causal mask with k_start
        return tokamax_attention.causal_call(q, k, v, key_start=key_start, real_BxN=segment_ids > 0,
                                             implementation=implementation)
    ends = [e for e, used in zip((content_end, query_end), streams) if used]
    return tokamax_attention.range_streams(q, k, v, [key_start] * len(ends), ends, segment_ids > 0,
                                           fused=fused, implementation=implementation,
                                           backward=backward)


def _splash_streams(streams, group_size, q, k, v, segment_ids, groups):
    from a3jax.kernels.splash import splash_two_stream

    out = splash_two_stream(q, k, v, segment_ids, group_size=group_size, streams=streams)
    # Rows that see no key: padding, and the query rows of a document's context group.
    real = segment_ids > 0
    sees = [r for r, used in zip((real, real & (groups > 0)), streams) if used]
    sees_any = jnp.concatenate(sees, 1)[:, :, None, None]
    return jnp.where(sees_any, out, jnp.zeros((), out.dtype))


def _over_mesh(fn, q, k, v, segment_ids, groups):
    """Runs fn per shard under the current mesh (jax.set_mesh): batch over the 'batch' rule's
    axes, heads over the 'kv_heads' rule's (model/sharding.py). Without a mesh (or on a single
    device) fn runs as is."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn(q, k, v, segment_ids, groups)
    from jax.sharding import PartitionSpec as P

    batch = batch_axes(mesh, q.shape[0])
    heads = tuple(a for a in logical_to_mesh("kv_heads") if a in mesh.axis_names and mesh.shape[a] > 1)
    split = math.prod(mesh.shape[a] for a in heads)
    if heads and k.shape[2] % split:
        raise UserError(f"{k.shape[2]} KV heads cannot be split over mesh axes {heads} of size {split}; "
                         "use a tensor degree dividing n_kv_heads")
    heads = (heads[0] if len(heads) == 1 else heads) if heads else None
    heads_spec = P(batch, None, heads, None)
    rows_spec = P(batch, None)
    return jax.shard_map(fn, mesh=mesh, in_specs=(heads_spec, heads_spec, heads_spec, rows_spec, rows_spec),
                         out_specs=heads_spec, check_vma=False)(q, k, v, segment_ids, groups)


def two_stream_attention(q_content, q_query, k, v, segment_ids, groups, *, backend="xla",
                         group_size=None, chunks=1, tokamax_fused=True, causal=False):
    """Attention for both streams: q_* [B, N, Hq, D] (either may be None), k, v [B, N, Hkv, D].

    Returns (out_content, out_query), each [B, N, Hq, D] or None where its input was None.
    Both streams run as one call of 2N rows against the N content keys. `pallas` needs a sorted
    layout (it uses the per-row key ranges); `xla` and `cudnn` use the visibility rule directly,
    or with chunks > 1 static key prefixes per chunk of rows (sorted layouts; prefix_chunks.py).
    group_size (static int): the rows are grid-aligned with this one group size
    (a3jax.layout); `splash` needs it, dense chunking uses it to chunk the content stream too.
    tokamax_fused: `tokamax` runs both streams as one kernel call (else one call per stream).
    `tokamax_skip` is `tokamax` with a3jax's block-skipping backward (kernels/hopper_range_bwd.py;
    Hopper only, not picked by `auto` until the device run has measured it).
    causal (static): the caller promises a left-to-right layout ('ar' groups, content stream only:
    the causal variant, which configs and scoring restrict to 'ar'), where the group rule is plain
    causal attention inside each document; `tokamax` then uses its causal kernel, whose backward
    skips the blocks above the diagonal. Other backends apply the group rule (the same visibility).
    Padding rows' outputs are unspecified (they differ between backends and are never read).
    """
    backend = resolve_backend(backend, kernel_platform(), group_size is not None, jnp.dtype(k.dtype).name)
    rows = [q for q in (q_content, q_query) if q is not None]
    q = jnp.concatenate(rows, 1) if len(rows) > 1 else rows[0]
    streams = (q_content is not None, q_query is not None)
    if backend == "pallas":  # a custom kernel: XLA cannot partition it, so shard_map it
        out = _over_mesh(functools.partial(_pallas_streams, streams), q, k, v, segment_ids, groups)
    elif backend in TOKAMAX_BACKENDS:
        causal = bool(causal) and streams == (True, False)
        backward = "skip" if backend == "tokamax_skip" else "tokamax"
        out = _over_mesh(functools.partial(_tokamax_streams, streams, fused=tokamax_fused, causal=causal,
                                           backward=backward), q, k, v, segment_ids, groups)
    elif backend == "splash":
        out = _over_mesh(functools.partial(_splash_streams, streams, int(group_size)), q, k, v,
                         segment_ids, groups)
    else:
        out = _dense_streams(streams, backend, q, k, v, segment_ids, groups, chunks, group_size)
    n = k.shape[1]
    if q_content is not None and q_query is not None:
        return out[:, :n], out[:, n:]
    return (out, None) if q_content is not None else (None, out)
