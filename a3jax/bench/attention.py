"""`a3jax bench attention`: two-stream attention fwd and fwd+bwd per backend, with the ratio to
two causal attention calls of the same shape (the mark a block-skipping kernel can reach).

The layout is the paper's setting: one document per row, `random(4)` groups, sorted. The causal
mark uses cuDNN on a GPU and XLA elsewhere (labelled in the table).

`tokamax` runs tokamax's flash attention (Mosaic GPU) on the sorted layout's key ranges as one
call of 2N rows; `tokamax split` as two calls of N rows; `2x causal (tokamax)` is tokamax's own
plain causal kernel twice (the same mark on tokamax's kernel: the gap between it and the `tokamax`
row is the cost of the ranges, the gap to cuDNN's pair the cost of the kernel). On a GPU,
`tokamax_skip` is tokamax's forward with a3jax's block-skipping Hopper backward
(kernels/hopper_range_bwd.py): its fwd+bwd against `tokamax` is what skipping buys.

`xla chunks=C` / `cudnn chunks=C` run the dense backends with static prefix chunking
(model/prefix_chunks.py): the query stream in C chunks, the content stream one full call. The
`... g=G` rows and `splash g=G` (TPU only) run on a grid-aligned layout instead (BOS at slot G - 1,
then `random(G)` groups filling aligned blocks of G slots), where the content stream is chunked too.
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from a3jax import layout as layout_lib
from a3jax import orders
from a3jax.bench.timing import median_ms
from a3jax.errors import UserError
from a3jax.kernels.tokamax_attention import tokamax_available
from a3jax.model.attention import _cudnn_attention, _masked_attention, two_stream_attention
from a3jax.model.prefix_chunks import prefix_chunked_streams


def sorted_layout(batch: int, seq_len: int, spec: str, seed: int = 0) -> dict[str, np.ndarray]:
    sampler = orders.parse_sampler(spec)
    rows = []
    for b in range(batch):
        rng = orders.example_rng(seed, b, 0)
        doc = rng.integers(0, 100, size=seq_len - 1)
        rows.append(layout_lib.build_layout([doc], [sampler(doc.size, rng)], seq_len, bos_id=100, pad_id=101))
    return layout_lib.stack_layouts(rows)


def aligned_layout(batch: int, seq_len: int, group_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """One document per row, grid aligned to group_size: g - 1 padding slots, BOS at slot g - 1,
    then `random(g)` groups (g tokens each, the last may be short) in the aligned blocks after it."""
    g = group_size
    sampler = orders.parse_sampler(f"random({g})")
    rows = []
    for b in range(batch):
        rng = orders.example_rng(seed, b, 0)
        doc = rng.integers(0, 100, size=seq_len - g)
        row = layout_lib.build_layout([doc], [sampler(doc.size, rng)], seq_len - g + 1, bos_id=100, pad_id=101)
        pad = {name: np.full(g - 1, 101 if name == "tokens" else 0, np.int32) for name in layout_lib.FIELDS}
        rows.append({name: np.concatenate([pad[name], row[name]]) for name in layout_lib.FIELDS})
    return layout_lib.stack_layouts(rows)


def chunked_streams(q_content, q_query, k, v, segment_ids, groups, *, backend, chunks, group_size=None):
    """Both streams through a dense backend with static prefix chunking."""
    dense = _cudnn_attention if backend == "cudnn" else _masked_attention
    out = prefix_chunked_streams(dense, (True, True), jnp.concatenate([q_content, q_query], 1), k, v,
                                 segment_ids, groups, chunks=chunks, group_size=group_size)
    n = k.shape[1]
    return out[:, :n], out[:, n:]


def _inputs(args, dtype):
    keys = jax.random.split(jax.random.key(0), 4)
    b, n, h, kv, d = args.batch, args.seq_len, args.heads, args.kv_heads, args.head_dim
    q_content = jax.random.normal(keys[0], (b, n, h, d), dtype)
    q_query = jax.random.normal(keys[1], (b, n, h, d), dtype)
    k = jax.random.normal(keys[2], (b, n, kv, d), dtype)
    v = jax.random.normal(keys[3], (b, n, kv, d), dtype)
    return q_content, q_query, k, v


def _fwd_and_grad(fn):
    def loss(*xs):
        return sum(jnp.sum(o.astype(jnp.float32)) for o in fn(*xs) if o is not None)

    return jax.jit(fn), jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))


def causal_pair(q_content, q_query, k, v, implementation):
    """Two causal attention calls (one per stream), the reference cost."""
    call = functools.partial(jax.nn.dot_product_attention, is_causal=True, implementation=implementation)
    return call(q_content, k, v), call(q_query, k, v)


def tokamax_causal_pair(q_content, q_query, k, v):
    """tokamax's Mosaic GPU kernel with its plain causal mask, once per stream."""
    from a3jax.kernels.tokamax_attention import causal_call

    return causal_call(q_content, k, v), causal_call(q_query, k, v)


def run(args) -> list[dict]:
    dtype = jnp.dtype(args.dtype)
    platform = jax.default_backend()
    inputs = _inputs(args, dtype)
    layout = {k: jnp.asarray(v) for k, v in sorted_layout(args.batch, args.seq_len, args.order).items()}
    causal_impl = "cudnn" if platform == "gpu" else "xla"
    rows = []
    fwd, grad = _fwd_and_grad(functools.partial(causal_pair, implementation=causal_impl))
    mark = {"backend": f"2x causal ({causal_impl})", "fwd_ms": median_ms(fwd, *inputs, repeats=args.repeats),
            "fwd_bwd_ms": median_ms(grad, *inputs, repeats=args.repeats)}
    rows.append(mark)
    aligned = {k: jnp.asarray(v) for k, v in aligned_layout(args.batch, args.seq_len, args.group_size).items()}
    g = args.group_size

    def timed_pair(name, pair):
        fwd, grad = _fwd_and_grad(pair)
        try:
            rows.append({"backend": name, "fwd_ms": median_ms(fwd, *inputs, repeats=args.repeats),
                         "fwd_bwd_ms": median_ms(grad, *inputs, repeats=args.repeats)})
        except Exception as error:  # report and go on
            rows.append({"backend": name, "skipped": f"failed: {type(error).__name__}: {error}"[:200]})

    def timed(name, fn, on):
        fwd, grad = _fwd_and_grad(lambda qc, qq, k, v: fn(qc, qq, k, v, on["segment_ids"], on["groups"]))
        try:
            rows.append({"backend": name, "fwd_ms": median_ms(fwd, *inputs, repeats=args.repeats),
                         "fwd_bwd_ms": median_ms(grad, *inputs, repeats=args.repeats)})
        except Exception as error:  # report and go on: one broken backend must not hide the others
            rows.append({"backend": name, "skipped": f"failed: {type(error).__name__}: {error}"[:200]})

    for backend in args.backends.split(","):
        variants = [(backend, functools.partial(two_stream_attention, backend=backend), layout)]
        if backend == "tokamax":
            if not tokamax_available():
                rows.append({"backend": "tokamax", "skipped": "tokamax is not installed (the gpu extra)"})
                continue
            variants += [("tokamax split", functools.partial(two_stream_attention, backend=backend,
                                                             tokamax_fused=False), layout)]
            if platform == "gpu":
                timed_pair("2x causal (tokamax)", tokamax_causal_pair)
                variants += [("tokamax_skip", functools.partial(two_stream_attention,
                                                                backend="tokamax_skip"), layout)]
        if backend in ("xla", "cudnn") and args.chunks > 1:
            chunked = functools.partial(chunked_streams, backend=backend, chunks=args.chunks)
            variants += [(f"{backend} chunks={args.chunks}", chunked, layout),
                         (f"{backend} chunks={args.chunks} g={g}", functools.partial(chunked, group_size=g), aligned)]
        for name, fn, on in variants:
            if backend == "cudnn" and platform != "gpu":
                rows.append({"backend": name, "skipped": f"needs a GPU (running on {platform})"})
            else:
                timed(name, fn, on)
    if platform == "tpu":  # splash attention: a static block-causal mask, exact on the aligned layout
        timed(f"splash g={g}", functools.partial(two_stream_attention, backend="splash", group_size=g), aligned)
    else:
        rows.append({"backend": f"splash g={g}", "skipped": f"needs a TPU (running on {platform})"})
    for row in rows:
        if "fwd_bwd_ms" in row:
            row["x_causal_fwd_bwd"] = row["fwd_bwd_ms"] / mark["fwd_bwd_ms"]
    return rows


def format_table(rows: list[dict], args) -> str:
    head = (f"two-stream attention on {jax.devices()[0].device_kind} (jax {jax.__version__}): "
            f"B={args.batch} N={args.seq_len} Hq={args.heads} Hkv={args.kv_heads} D={args.head_dim} "
            f"{args.dtype}, order {args.order}, median of {args.repeats}")
    lines = [head, f"{'backend':<22}{'fwd ms':>10}{'fwd+bwd ms':>12}{'x 2 causal':>12}"]
    for row in rows:
        if "skipped" in row:
            lines.append(f"{row['backend']:<22}  skipped: {row['skipped']}")
        else:
            lines.append(f"{row['backend']:<22}{row['fwd_ms']:>10.2f}{row['fwd_bwd_ms']:>12.2f}"
                         f"{row['x_causal_fwd_bwd']:>12.2f}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--order", default="random(4)", help="group sampler of the layout")
    parser.add_argument("--backends", default="xla,cudnn,pallas,tokamax")
    parser.add_argument("--chunks", type=int, default=4,
                        help="static prefix chunks for the extra xla/cudnn rows (1 = no such rows)")
    parser.add_argument("--group-size", type=int, default=4,
                        help="group size g of the grid-aligned layout (the 'g=' and splash rows)")
    parser.add_argument("--repeats", type=int, default=10)


def backward_block_pairs(segment_ids, groups, block: int = 64) -> dict[str, int]:
    """(q tile, key tile) pairs per head that each backward pass (dq, or dk/dv) visits for both
    streams as one call of 2N rows: every pair (tokamax's backward under key ranges), the
    skipping kernels' (`tokamax_skip`, `pallas`), and two causal calls of N rows (the mark)."""
    from a3jax.kernels.range_attention import _row_block_bounds
    from a3jax.kernels.range_attention_bwd import _key_block_lists
    from a3jax.kernels.tokamax_attention import _safe_ranges

    batch, n = segment_ids.shape
    n_blocks = -(-n // block)
    key_start, content_end, query_end = layout_lib.key_ranges(segment_ids, groups)
    safe = [_safe_ranges(key_start, end, segment_ids > 0) for end in (content_end, query_end)]
    pad = ((0, 0), (0, n_blocks * block - n))
    start = jnp.concatenate([jnp.pad(r[0], pad) for r in safe], 1)
    end = jnp.concatenate([jnp.pad(r[1], pad) for r in safe], 1)
    lo, hi = _row_block_bounds(start, end, block, block)
    count, _ = _key_block_lists(start, end, block, block, n_blocks)
    causal = sum(min(n_blocks, i + 1) for i in range(n_blocks))
    return {"every pair": batch * 2 * n_blocks * n_blocks, "skipping dq": int(jnp.maximum(hi - lo, 0).sum()),
            "skipping dk/dv": int(count.sum()), "two causal calls": batch * 2 * causal}


def main(args, overrides=()) -> int:
    if overrides:
        raise UserError(f"a3jax bench attention takes no --config overrides (got {list(overrides)})")
    print(format_table(run(args), args))
    layout = sorted_layout(args.batch, args.seq_len, args.order)
    pairs = backward_block_pairs(jnp.asarray(layout["segment_ids"]), jnp.asarray(layout["groups"]))
    print("backward block pairs per head (64x64 tiles): "
          + ", ".join(f"{name} {count:,} ({count / pairs['every pair']:.2f})" for name, count in pairs.items()))
    return 0
