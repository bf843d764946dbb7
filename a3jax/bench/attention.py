"""`a3jax bench attention`: two-stream attention fwd and fwd+bwd per backend, with the ratio to
two causal attention calls of the same shape (the mark a block-skipping kernel can reach).

The layout is the paper's setting: one document per row, `random(4)` groups, sorted. The causal
mark uses cuDNN on a GPU and XLA elsewhere (labelled in the table).
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
from a3jax.model.attention import two_stream_attention


def sorted_layout(batch: int, seq_len: int, spec: str, seed: int = 0) -> dict[str, np.ndarray]:
    sampler = orders.parse_sampler(spec)
    rows = []
    for b in range(batch):
        rng = orders.example_rng(seed, b, 0)
        doc = rng.integers(0, 100, size=seq_len - 1)
        rows.append(layout_lib.build_layout([doc], [sampler(doc.size, rng)], seq_len, bos_id=100, pad_id=101))
    return layout_lib.stack_layouts(rows)


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
    for backend in args.backends.split(","):
        if backend == "cudnn" and platform != "gpu":
            rows.append({"backend": backend, "skipped": f"needs a GPU (running on {platform})"})
            continue
        fn = functools.partial(two_stream_attention, segment_ids=layout["segment_ids"],
                               groups=layout["groups"], backend=backend)
        fwd, grad = _fwd_and_grad(lambda qc, qq, k, v, fn=fn: fn(qc, qq, k, v))
        try:
            rows.append({"backend": backend, "fwd_ms": median_ms(fwd, *inputs, repeats=args.repeats),
                         "fwd_bwd_ms": median_ms(grad, *inputs, repeats=args.repeats)})
        except Exception as error:  # report and go on: one broken backend must not hide the others
            rows.append({"backend": backend, "skipped": f"failed: {type(error).__name__}: {error}"[:200]})
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
    parser.add_argument("--backends", default="xla,cudnn,pallas")
    parser.add_argument("--repeats", type=int, default=10)


def main(args) -> int:
    print(format_table(run(args), args))
    return 0
