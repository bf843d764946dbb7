"""`a3jax bench parity`: every attention backend this device runs against the dense `xla`
reference, compiled on the device, before any timing: outputs and gradients of both streams.

Inputs: packed rows (1-3 documents each, padding at the end), `random_sizes(1,8)` groups, GQA,
random cotangents on the real rows. The reference is the `xla` backend in float32 on the same
(rounded) inputs. The error of a tensor is ||got - ref|| / ||ref|| over the real rows; a backend
passes when every tensor is finite and under the tolerance of its dtype (bf16 2e-2, f32 2e-3:
GPU kernels may use TF32 or bf16 products for f32 inputs).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from a3jax import layout as layout_lib
from a3jax import orders
from a3jax.errors import UserError
from a3jax.kernels.tokamax_attention import tokamax_available
from a3jax.model.attention import two_stream_attention

TOLERANCE = {"bfloat16": 2e-2, "float32": 2e-3}
TENSORS = ("out_content", "out_query", "dq_content", "dq_query", "dk", "dv")


def packed_layouts(batch: int, seq_len: int, spec: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sampler = orders.parse_sampler(spec)
    rows = []
    for _ in range(batch):
        used = int(seq_len * rng.uniform(0.7, 0.95))
        n_docs = int(rng.integers(1, 4))
        cuts = np.sort(rng.choice(np.arange(2, used - 1), size=n_docs - 1, replace=False)) if n_docs > 1 else []
        sizes = np.diff(np.concatenate([[0], cuts, [used]])).astype(int) - 1
        docs = [rng.integers(2, 100, size=s) for s in sizes]
        rows.append(layout_lib.build_layout(docs, [sampler(len(d), rng) for d in docs], seq_len,
                                            bos_id=1, pad_id=0))
    return layout_lib.stack_layouts(rows)


def backends_here(platform: str, dtype: str) -> list[tuple[str, dict]]:
    """(name, two_stream_attention keyword arguments) of the fast backends on this platform that
    take this dtype (on a GPU, cudnn and tokamax take bfloat16/float16 only)."""
    rows = [("pallas", {"backend": "pallas"})]
    if platform == "gpu" and dtype == "float32":
        return rows
    if platform == "gpu":
        rows = [("cudnn", {"backend": "cudnn"}), ("cudnn chunks=4", {"backend": "cudnn", "chunks": 4})] + rows
    if tokamax_available():
        rows += [("tokamax", {"backend": "tokamax"}),
                 ("tokamax split", {"backend": "tokamax", "tokamax_fused": False}),
                 # tokamax's forward, a3jax's block-skipping backward (Mosaic GPU interpret mode
                 # off a GPU: exact but slow)
                 ("tokamax_skip", {"backend": "tokamax_skip"})]
    return rows


def _grads_fn(kwargs):
    def f(qc, qq, k, v, seg, groups, cot_c, cot_q):
        def streams(qc, qq, k, v):
            return two_stream_attention(qc, qq, k, v, seg, groups, **kwargs)

        outs, vjp = jax.vjp(streams, qc, qq, k, v)
        return outs + vjp((cot_c.astype(outs[0].dtype), cot_q.astype(outs[1].dtype)))

    return jax.jit(f)


def check(args) -> list[dict]:
    platform = jax.default_backend()
    lay = packed_layouts(args.batch, args.seq_len, args.order)
    seg, groups = jnp.asarray(lay["segment_ids"]), jnp.asarray(lay["groups"])
    real = np.asarray(lay["segment_ids"] > 0)[:, :, None, None]
    results = []
    for head_dim in args.head_dims:
        keys = jax.random.split(jax.random.key(head_dim), 6)
        b, n, h, kv = args.batch, args.seq_len, args.heads, args.kv_heads
        shapes = [(b, n, h, head_dim)] * 2 + [(b, n, kv, head_dim)] * 2 + [(b, n, h, head_dim)] * 2
        draws = [jax.random.normal(key, shape, jnp.float32) for key, shape in zip(keys, shapes)]
        draws[4:] = [c * real for c in draws[4:]]
        for dtype_name in args.dtypes:
            dtype = jnp.dtype(dtype_name)
            inputs = [x.astype(dtype) for x in draws[:4]]
            ref = _grads_fn({"backend": "xla"})(*[x.astype(jnp.float32) for x in inputs], seg, groups, *draws[4:])
            ref = [np.asarray(r, np.float32) for r in ref]
            for name, kwargs in backends_here(platform, dtype_name):
                row = {"backend": name, "dtype": dtype_name, "head_dim": head_dim}
                try:
                    got = _grads_fn(kwargs)(*inputs, seg, groups, *draws[4:])
                    got = [np.asarray(jnp.asarray(g, jnp.float32)) for g in got]
                except Exception as error:  # report and go on: one broken backend must not hide others
                    row["error"] = f"{type(error).__name__}: {error}"[:300]
                    results.append(row)
                    continue
                errors = {}
                for tensor, g, r in zip(TENSORS, got, ref):
                    if tensor.startswith("out"):
                        g, r = g * real, r * real
                    finite = bool(np.all(np.isfinite(g)))
                    errors[tensor] = (float(np.linalg.norm(g - r) / max(np.linalg.norm(r), 1e-30))
                                      if finite else float("nan"))
                worst = max(errors, key=lambda t: np.nan_to_num(errors[t], nan=np.inf))
                row.update(errors=errors, worst=worst,
                           ok=all(np.isfinite(e) and e <= TOLERANCE[dtype_name] for e in errors.values()))
                results.append(row)
    return results


def format_table(results: list[dict], args) -> str:
    lines = [f"parity vs xla (float32 reference) on {jax.devices()[0].device_kind} (jax {jax.__version__}): "
             f"B={args.batch} N={args.seq_len} Hq={args.heads} Hkv={args.kv_heads}, packed rows, {args.order}",
             f"{'backend':<16}{'dtype':<10}{'D':>4}{'max rel err':>13}  {'worst tensor':<13}result"]
    for r in results:
        head = f"{r['backend']:<16}{r['dtype']:<10}{r['head_dim']:>4}"
        if "error" in r:
            lines.append(f"{head}{'':>13}  {'':<13}FAIL: {r['error']}")
        else:
            err = r["errors"][r["worst"]]
            lines.append(f"{head}{err:>13.2e}  {r['worst']:<13}{'ok' if r['ok'] else 'FAIL'}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"], choices=list(TOLERANCE))
    parser.add_argument("--order", default="random_sizes(1,8)")


def main(args, overrides=()) -> int:
    if overrides:
        raise UserError(f"a3jax bench parity takes no --config overrides (got {list(overrides)})")
    results = check(args)
    print(format_table(results, args))
    failed = [r for r in results if not r.get("ok")]
    if failed:
        print(f"{len(failed)} of {len(results)} backend checks FAILED")
    return 1 if failed else 0
