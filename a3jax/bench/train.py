"""`a3jax bench train`: one train step of the A3 and the causal variant of the same shape, side by
side: tokens/s, TFLOP/s per device and MFU by the formula in docs/flops.md, and the A3/causal
step-time ratio (ideal about 1.8x: two streams, no content logits).

Default: the llama3_1b preset (Llama-3.2-1B shape, seq 2048, bf16) on all devices. On a CPU
pass a small shape, e.g. `--config=tiny`.
"""

from __future__ import annotations

import argparse
import os
import pathlib

import jax

from a3jax import flops, parallel
from a3jax.bench.attention import sorted_layout
from a3jax.bench.timing import median_ms
from a3jax.configs import load_config, parse
from a3jax.errors import UserError
from a3jax.model.attention import resolve_backend
from a3jax.model.params import abstract_params, init_model
from a3jax.model.sharding import axis_rules
from a3jax.train.optimizer import learning_rate_schedule, make_optimizer
from a3jax.train.step import make_train_step
from a3jax.variants import variant_of


def _memory_plan_bytes(compiled) -> int | None:
    """Device bytes XLA plans for one step: arguments + outputs + temporaries - donated aliases."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                   - m.alias_size_in_bytes)
    except Exception:  # noqa: BLE001  (not every backend reports it)
        return None


def _peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def device_bytes_limit() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def measure(config, variant: str, order: str, repeats: int, attention: str | None = None,
            batch_size: int | None = None, run_steps: bool = True, profile_dir: str = "",
            remat: str | None = None, loss_chunk: int | None = None) -> dict:
    """One variant's step: compiled, its XLA memory plan, and (run_steps) the median step time."""
    config = config.copy_and_resolve_references()
    config.model.variant = variant
    if not variant_of(variant).query_stream:
        config.model.query_input = "vector"
    if remat is not None:
        config.model.remat = remat
    if loss_chunk is not None:
        config.train.loss_chunk = loss_chunk
    only = variant_of(variant).only_order
    if only is not None:  # e.g. the causal control trains and evaluates left to right only
        config.orders.curriculum, config.orders.eval = only, (only,)
    if attention is not None:
        config.model.attention = attention
    if batch_size is not None:
        config.train.batch_size = batch_size
    config.train.grad_accum = 1  # one step over the whole batch: what the table measures
    exp = parse(config)
    cfg = exp.model
    mesh = parallel.make_mesh(exp.mesh)
    batch_size, seq_len = exp.train.batch_size, exp.data.seq_len
    with jax.set_mesh(mesh), axis_rules(exp.mesh.rules):
        _, shapes = abstract_params(cfg)
        params_sh = parallel.param_shardings(mesh, shapes, exp.mesh.rules)
        model_def, params = init_model(cfg, 0, params_sh)
        tx = make_optimizer(exp.train)
        opt_state = jax.jit(tx.init)(params)
        opt_sh = jax.tree.map(lambda x: x.sharding, opt_state)
        batch_sh = parallel.batch_sharding(mesh)
        batch = parallel.global_batch(sorted_layout(batch_size, seq_len, order), batch_sh)
        step = make_train_step(model_def, tx, learning_rate_schedule(exp.train), (params_sh, opt_sh, batch_sh),
                               loss_chunk=exp.train.loss_chunk)
        compiled = step.lower(params, opt_state, 0, batch).compile()
        row = {"variant": variant, "order": order, "batch": batch_size, "remat": cfg.remat,
               "loss_chunk": exp.train.loss_chunk,
               "attention": resolve_backend(cfg.attention, jax.default_backend(), dtype=cfg.dtype),
               "plan_bytes": _memory_plan_bytes(compiled)}
        if not run_steps:
            return row
        state = {"params": params, "opt_state": opt_state}

        def run():
            state["params"], state["opt_state"], metrics = compiled(state["params"], state["opt_state"], 0, batch)
            return metrics["loss"]

        ms = median_ms(run, repeats=repeats)
        loss = float(run())
        if profile_dir:  # two more steps under the profiler (xprof / TensorBoard reads the trace)
            with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
                for _ in range(2):
                    jax.block_until_ready(run())
    tokens_per_s = batch_size * seq_len / (ms / 1e3)
    tflops = flops.train_flops_per_token(cfg, seq_len) * tokens_per_s / mesh.size / 1e12
    peak = flops.peak_flops(jax.devices()[0].device_kind, exp.train.peak_flops)
    row.update(step_ms=ms, tokens_per_s=tokens_per_s, tflops_per_device=tflops, loss=loss,
               mfu=tflops * 1e12 / peak if peak else None, peak_bytes=_peak_bytes())
    return row


def largest_batch(config, variant: str, order: str, attention: str | None, batch: int, plan_bytes: int,
                  limit: int) -> dict:
    """The largest per-device batch whose XLA memory plan fits the device: plans at `batch` and
    2 * batch give bytes = fixed + per_row * rows; the prediction is then compiled and run once."""
    doubled = measure(config, variant, order, 1, attention, 2 * batch, run_steps=False)["plan_bytes"]
    per_row = (doubled - plan_bytes) / batch
    fixed = plan_bytes - per_row * batch
    predicted = max(1, int((limit - fixed) // per_row)) if per_row > 0 else None
    result = {"variant": variant, "per_row_bytes": per_row, "fixed_bytes": fixed, "predicted": predicted}
    for candidate in ([predicted, predicted - 1] if predicted else []):
        try:
            measure(config, variant, order, 1, attention, candidate)
            result["verified"] = candidate
            break
        except Exception as error:  # noqa: BLE001  (out of memory: try one less)
            result.setdefault("failed", []).append(f"{candidate}: {type(error).__name__}")
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="llama3_1b", help="preset or config file")
    parser.add_argument("--order", default="random(4)", help="grouping of the A3 batch")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch-sizes", default="",
                        help="comma-separated per-step batch sizes (default: the config's train.batch_size)")
    parser.add_argument("--variants", default="a3,causal", help="which of a3, causal to measure")
    parser.add_argument("--backends", default="",
                        help="comma-separated attention backends for the A3 step (default: the config's)")
    parser.add_argument("--causal-backend", default="",
                        help="attention backend of the causal step (default: the config's)")
    parser.add_argument("--profile", default="",
                        help="write a profiler trace of 3 steps of the first A3 row to this folder "
                             "(and a gzipped copy of the trace at its top, train_a3.xplane.pb.gz)")
    parser.add_argument("--remats", default="",
                        help="comma-separated model.remat policies to measure (default: the config's)")
    parser.add_argument("--loss-chunks", default="",
                        help="comma-separated train.loss_chunk values (0 = full logits; default: the config's)")
    parser.add_argument("--max-batch", action="store_true",
                        help="also find the largest per-device batch that fits, for each variant")


def _gib(value) -> str:
    return f"{value / 2**30:.1f}" if value else "n/a"


def _gzip_trace(profile_dir: str) -> None:
    import gzip
    import shutil

    traces = sorted(pathlib.Path(profile_dir).rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if traces:
        with open(traces[-1], "rb") as src, gzip.open(pathlib.Path(profile_dir) / "train_a3.xplane.pb.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)


def main(args, overrides=()) -> int:
    config = load_config(args.config, list(overrides))
    exp = parse(config)
    cfg = exp.model
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - {"a3", "causal"})
    if unknown:
        raise UserError(f"--variants has {unknown}; choose from a3, causal")
    sizes = [int(b) for b in args.batch_sizes.split(",") if b] or [exp.train.batch_size]
    backends = [b for b in args.backends.split(",") if b] or [None]
    remats = [r for r in args.remats.split(",") if r] or [None]
    chunks = [int(c) for c in args.loss_chunks.split(",") if c != ""] or [None]
    settings = [(r, c) for r in remats for c in chunks]
    plans = [(b, "a3", args.order, a, r, c) for b in sizes for a in backends for r, c in settings if "a3" in variants]
    plans += [(b, "causal", "ar", args.causal_backend or None, r, c) for b in sizes for r, c in settings
              if "causal" in variants]
    rows, profiled = [], False
    for batch, variant, order, attention, remat, chunk in plans:
        profile = args.profile if not profiled else ""  # the first row: a3's when it is measured
        profiled = profiled or bool(profile)
        try:
            rows.append(measure(config, variant, order, args.repeats, attention, batch, profile_dir=profile,
                                remat=remat, loss_chunk=chunk))
        except Exception as error:  # noqa: BLE001  (report and go on: out of memory, a compile error)
            rows.append({"variant": variant, "order": order, "batch": batch, "attention": attention or cfg.attention,
                         "remat": remat or cfg.remat, "loss_chunk": exp.train.loss_chunk if chunk is None else chunk,
                         "failed": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:160]})
    if args.profile and profiled:
        _gzip_trace(args.profile)
        from a3jax.bench.profile import print_top_ops

        try:
            print_top_ops(args.profile, title=" of the first row's step")
        except UserError as error:  # the profiled row failed: the table says why
            print(f"no profile summary: {error}")
    print(f"train step on {jax.device_count()} x {jax.devices()[0].device_kind} (jax {jax.__version__}): "
          f"d_model={cfg.d_model} layers={cfg.n_layers} seq={exp.data.seq_len} {cfg.dtype} "
          f"remat={cfg.remat}, median of {args.repeats}; XLA GPU flags "
          f"{'on' if 'xla_gpu_enable_latency_hiding_scheduler' in os.environ.get('XLA_FLAGS', '') else 'off'}")
    print(f"{'variant':<8}{'order':<11}{'attention':<10}{'remat':<15}{'chunk':>6}{'batch':>6}{'step ms':>10}"
          f"{'tokens/s':>11}{'TFLOP/s/dev':>12}{'MFU':>7}{'x causal':>9}{'plan GiB':>9}")
    causal_ms = {(r["batch"], r["remat"], r["loss_chunk"]): r["step_ms"] for r in rows
                 if r["variant"] == "causal" and "step_ms" in r}
    for r in rows:
        head = (f"{r['variant']:<8}{r['order']:<11}{r['attention']:<10}{r['remat']:<15}{r['loss_chunk']:>6}"
                f"{r['batch']:>6}")
        if "failed" in r:
            print(f"{head}  failed: {r['failed']}")
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        key = (r["batch"], r["remat"], r["loss_chunk"])
        ratio = f"{r['step_ms'] / causal_ms[key]:.2f}" if key in causal_ms else "n/a"
        print(f"{head}{r['step_ms']:>10.1f}{r['tokens_per_s']:>11,.0f}{r['tflops_per_device']:>12.2f}{mfu:>7}"
              f"{ratio:>9}{_gib(r['plan_bytes']):>9}")
    flop_ratio = (flops.train_flops_per_token(cfg, exp.data.seq_len)
                  / flops.causal_equivalent_flops_per_token(cfg, exp.data.seq_len))
    print(f"FLOP ratio A3 / causal (docs/flops.md): "
          f"{flop_ratio:.2f}x")
    ok = [r for r in rows if "step_ms" in r]
    peak_bytes = max([r["peak_bytes"] or 0 for r in ok] or [0])
    print(f"peak device memory of the process after all steps: {_gib(peak_bytes)} GiB "
          f"(device limit {_gib(device_bytes_limit())} GiB)")
    if args.max_batch:
        limit = device_bytes_limit()
        if not limit:
            print("largest batch: the device reports no memory limit (CPU); skipped")
            return 0
        print(f"{'variant':<8}{'MiB/row':>9}{'fixed GiB':>11}{'predicted':>11}{'verified':>10}")
        for variant in variants:
            measured = [r for r in ok if r["variant"] == variant]
            if not measured:
                continue
            r = measured[0]
            found = largest_batch(config, variant, r["order"], r["attention"], r["batch"], r["plan_bytes"], limit)
            print(f"{found['variant']:<8}{found['per_row_bytes'] / 2**20:>9.0f}{_gib(found['fixed_bytes']):>11}"
                  f"{found['predicted'] or 'n/a':>11}{found.get('verified', 'none'):>10}"
                  + (f"  (failed: {', '.join(found['failed'])})" if found.get("failed") else ""))
    return 0 if len(ok) == len(rows) else 1
