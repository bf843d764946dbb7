"""`a3jax bench train`: one train step of the A3 and the causal variant of the same shape, side by
side: tokens/s, TFLOP/s per device and MFU by the formula in docs/flops.md, and the A3/causal
step-time ratio (ideal about 1.8x: two streams, no content logits).

Default: experiments/llama3_1b.py (Llama-3.2-1B shape, seq 2048, bf16) on all devices. On a CPU
pass a small shape, e.g. `--config=experiments/tiny.py`.
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import numpy as np

from a3jax import flops, parallel
from a3jax.bench.attention import sorted_layout
from a3jax.bench.timing import median_ms
from a3jax.configs import load_config, model_config
from a3jax.train.optimizer import learning_rate_schedule, make_optimizer
from a3jax.train.step import abstract_params, init_model, make_train_step

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[2] / "experiments"


def measure(config, variant: str, order: str, repeats: int) -> dict:
    config = config.copy_and_resolve_references()
    config.model.variant = variant
    cfg = model_config(config)
    mesh = parallel.make_mesh(config.mesh)
    batch_size, seq_len = int(config.train.batch_size), int(config.data.seq_len)
    with jax.set_mesh(mesh):
        _, shapes = abstract_params(cfg)
        params_sh = parallel.param_shardings(mesh, shapes, config.mesh.rules)
        model_def, params = init_model(cfg, 0, params_sh)
        tx = make_optimizer(config.train)
        opt_state = jax.jit(tx.init)(params)
        opt_sh = jax.tree.map(lambda x: x.sharding, opt_state)
        batch_sh = parallel.batch_sharding(mesh)
        batch = parallel.global_batch(sorted_layout(batch_size, seq_len, order), batch_sh)
        step = make_train_step(model_def, tx, learning_rate_schedule(config.train), (params_sh, opt_sh, batch_sh))
        state = {"params": params, "opt_state": opt_state}

        def run():
            state["params"], state["opt_state"], metrics = step(state["params"], state["opt_state"], 0, batch)
            return metrics["loss"]

        ms = median_ms(run, repeats=repeats)
    tokens_per_s = batch_size * seq_len / (ms / 1e3)
    tflops = flops.train_flops_per_token(cfg, seq_len) * tokens_per_s / mesh.size / 1e12
    peak = flops.peak_flops(jax.devices()[0].device_kind, float(config.train.get("peak_flops", 0.0)))
    return {"variant": variant, "order": order, "step_ms": ms, "tokens_per_s": tokens_per_s,
            "tflops_per_device": tflops, "mfu": tflops * 1e12 / peak if peak else None}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(EXPERIMENTS / "llama3_1b.py"))
    parser.add_argument("--order", default="random(4)", help="grouping of the A3 batch")
    parser.add_argument("--repeats", type=int, default=10)


def main(args, overrides=()) -> int:
    config = load_config(args.config, list(overrides))
    rows = [measure(config, "a3", args.order, args.repeats), measure(config, "causal", "ar", args.repeats)]
    cfg = model_config(config)
    print(f"train step on {jax.device_count()} x {jax.devices()[0].device_kind} (jax {jax.__version__}): "
          f"d_model={cfg.d_model} layers={cfg.n_layers} batch={config.train.batch_size} "
          f"seq={config.data.seq_len} {cfg.dtype} attention={cfg.attention}, median of {args.repeats}")
    print(f"{'variant':<8}{'order':<12}{'step ms':>10}{'tokens/s':>12}{'TFLOP/s/dev':>13}{'MFU':>8}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(f"{r['variant']:<8}{r['order']:<12}{r['step_ms']:>10.1f}{r['tokens_per_s']:>12,.0f}"
              f"{r['tflops_per_device']:>13.2f}{mfu:>8}")
    print(f"A3 / causal step time: {rows[0]['step_ms'] / rows[1]['step_ms']:.2f}x "
          f"(FLOP ratio {flops.train_flops_per_token(cfg, config.data.seq_len) / flops.causal_equivalent_flops_per_token(cfg, config.data.seq_len):.2f}x)")
    return 0
