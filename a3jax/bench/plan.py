"""`a3jax bench plan`: the train step's memory budget without running it, here or for a GPU that
this machine does not have.

For each variant (a3, causal), batch size and cross-entropy chunking (train.loss_chunk), the step
is compiled against abstract inputs (nothing is allocated) and XLA's memory plan is read: the
arguments (params, optimizer state, batch), the temporaries, the outputs, less what donation
aliases. Two batch sizes give the plan per row, and so the largest batch that fits the target.

  --target cpu        this machine's XLA:CPU compiler (a plan, not a GPU's)
  --target h100|h200  XLA:GPU compiling for that card WITHOUT one (a deviceless topology from a
                      GPU target description): needs jax's CUDA plugin, `pip install
                      "jax[cuda12]==<this jax>"` (about 5.5 GB; not in the test extra), and
                      runs the real GPU compiler: fusion, scheduling, buffer assignment.

    a3jax bench plan --config llama3_1b --target h100 --batch-sizes 4,8 --loss-chunks 0,2048

The model's attention kernels are built for the target (kernels/platform.lowering_for): `auto`
resolves as on that card (tokamax on sm90 when installed).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import time
from unittest import mock

import jax
import jax.numpy as jnp

from a3jax import parallel
from a3jax.bench.attention import sorted_layout
from a3jax.configs import load_config, parse
from a3jax.errors import UserError
from a3jax.kernels.platform import lowering_for
from a3jax.model.params import abstract_params
from a3jax.model.sharding import axis_rules
from a3jax.train.optimizer import learning_rate_schedule, make_optimizer
from a3jax.train.step import make_train_step
from a3jax.variants import variant_of

_GPU_COMMON = """
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 }
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
"""
# XLA GPU target descriptions (the fields jax.experimental.topologies reads); memory as the
# cards report it to XLA (an H200 runs with about 139 GiB usable here).
TARGETS = {
    "h100": ("NVIDIA H100 80GB HBM3", 84_929_347_584, 3_352_320_000_000),
    "h200": ("NVIDIA H200", 150_754_820_096, 4_800_000_000_000),
}


def _target_config(name: str) -> str:
    kind, memory, bandwidth = TARGETS[name]
    return (f"gpu_device_info {{{_GPU_COMMON}  memory_bandwidth: {bandwidth}\n  device_memory_size: {memory}\n}}\n"
            f'platform_name: "CUDA"\ndnn_version_info {{ major: 9 minor: 8 }}\n'
            f"runtime_version {{ major: 12 minor: 8 }}\n"
            f'device_description_str: "{kind}"\n')


def target_mesh(target: str, exp):
    """(mesh, memory limit in bytes or None) for the target: this machine's devices, or one
    deviceless GPU of the target's kind."""
    if target == "cpu":
        return parallel.make_mesh(exp.mesh), None
    from jax.experimental import topologies

    try:
        topology = topologies.get_topology_desc(platform="cuda", target_config=_target_config(target),
                                                topology="1x1x1")
    except Exception as error:  # noqa: BLE001 - no CUDA plugin: name the fix
        raise UserError(f"bench plan --target {target} compiles for that GPU without one, which needs jax's CUDA "
                        f"plugin: pip install 'jax[cuda12]=={jax.__version__}' (about 5.5 GB), or use --target "
                        f"cpu ({type(error).__name__}: {str(error).splitlines()[0][:200]})") from None
    mesh = topologies.make_mesh(topology, (1, 1, 1), parallel.MESH_AXES)
    return mesh, TARGETS[target][1]


@contextlib.contextmanager
def kernels_for(target: str):
    """Attention kernels built for the target card: Pallas/tokamax lowerings for CUDA, and
    tokamax's sm90 probes (which read this machine's default device) told Hopper."""
    if target == "cpu":
        yield
        return
    with contextlib.ExitStack() as stack:
        stack.enter_context(lowering_for("cuda"))
        try:
            from tokamax._src import config as tokamax_config
            from tokamax._src import gpu_utils
        except ImportError:
            tokamax_config = None
        if tokamax_config is not None:
            stack.enter_context(tokamax_config.cross_compile(True))
            stack.enter_context(mock.patch.object(gpu_utils, "_compute_capability", return_value=9.0))
            stack.enter_context(mock.patch.object(gpu_utils, "is_sm90", return_value=True))
        from a3jax.model import attention

        stack.enter_context(mock.patch.object(attention, "_tokamax_fits_gpu",
                                              return_value=importlib.util.find_spec("tokamax") is not None))
        attention.resolve_backend.cache_clear()
        yield
    from a3jax.model import attention

    attention.resolve_backend.cache_clear()


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def plan_step(config, variant: str, order: str, batch_size: int, loss_chunk: int, target: str,
              lower_only: bool = False) -> dict:
    """Compiles one train step for the target against abstract inputs; its memory plan in bytes.
    lower_only: stop after lowering; report its seconds and the StableHLO program's size."""
    config = config.copy_and_resolve_references()
    config.model.variant = variant
    only = variant_of(variant).only_order
    if only is not None:
        config.orders.curriculum, config.orders.eval = only, (only,)
    if not variant_of(variant).query_stream:
        config.model.query_input = "vector"
    config.train.batch_size = batch_size
    config.train.grad_accum = 1  # the plan of one step over the whole batch
    config.train.loss_chunk = loss_chunk
    exp = parse(config)
    mesh, limit = target_mesh(target, exp)
    seq_len = exp.data.seq_len
    started = time.perf_counter()
    with jax.set_mesh(mesh), axis_rules(exp.mesh.rules), kernels_for(target):
        model_def, shapes = abstract_params(exp.model)
        params_sh = parallel.param_shardings(mesh, shapes, exp.mesh.rules)
        tx = make_optimizer(exp.train)
        abstract_params_ = _abstract(shapes, params_sh)
        opt_shapes = jax.eval_shape(tx.init, shapes)
        opt_sh = jax.jit(tx.init).lower(abstract_params_).compile().output_shardings  # each moment like its param
        batch_sh = parallel.batch_sharding(mesh)
        layout = sorted_layout(batch_size, seq_len, order if only is None else only)
        batch = {k: jax.ShapeDtypeStruct(v.shape, jnp.int32, sharding=batch_sh) for k, v in layout.items()}
        step = make_train_step(model_def, tx, learning_rate_schedule(exp.train), (params_sh, opt_sh, batch_sh),
                               loss_chunk=loss_chunk)
        lowered = step.lower(abstract_params_, _abstract(opt_shapes, opt_sh), 0, batch)
        if lower_only:
            return {"variant": variant, "batch": batch_size, "lower_s": time.perf_counter() - started,
                    "program_bytes": len(lowered.as_text())}
        compiled = lowered.compile()
    stats = compiled.memory_analysis()
    return {"variant": variant, "batch": batch_size, "loss_chunk": loss_chunk, "limit": limit,
            "arguments": stats.argument_size_in_bytes, "temp": stats.temp_size_in_bytes,
            "outputs": stats.output_size_in_bytes, "aliased": stats.alias_size_in_bytes,
            "plan": (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
                     - stats.alias_size_in_bytes),
            "compile_s": time.perf_counter() - started}


def largest_batch(small: dict, large: dict) -> int | None:
    """The largest batch whose plan fits the limit, from the plans at two batch sizes (plan =
    fixed + per_row * batch)."""
    if small["limit"] is None or large["batch"] == small["batch"]:
        return None
    per_row = (large["plan"] - small["plan"]) / (large["batch"] - small["batch"])
    fixed = small["plan"] - per_row * small["batch"]
    return int((small["limit"] - fixed) // per_row) if per_row > 0 else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="llama3_1b", help="preset or config file")
    parser.add_argument("--target", default="cpu", choices=["cpu", *TARGETS],
                        help="compile for this machine, or for an H100/H200 without one (needs jax[cuda12])")
    parser.add_argument("--order", default="random(4)", help="grouping of the A3 batch")
    parser.add_argument("--batch-sizes", default="4,8", help="comma-separated batch sizes (two or more give "
                                                              "the largest batch that fits)")
    parser.add_argument("--loss-chunks", default="0,2048",
                        help="comma-separated train.loss_chunk values (0 = the full [B, N, V] logits)")
    parser.add_argument("--variants", default="a3,causal", help="which of a3, causal")
    parser.add_argument("--program-size", action="store_true",
                        help="instead: lowering time and StableHLO size of the step with the layer stack "
                             "scanned and unrolled (model.unroll_layers), per variant at the first batch size")


def _gib(value) -> str:
    return f"{value / 2**30:.2f}" if value is not None else "n/a"


def main(args, overrides=()) -> int:
    config = load_config(args.config, list(overrides))
    exp = parse(config)
    sizes = sorted({int(b) for b in args.batch_sizes.split(",") if b})
    chunks = [int(c) for c in args.loss_chunks.split(",") if c != ""]
    variants = [v for v in args.variants.split(",") if v]
    cfg = exp.model
    if args.program_size:
        print(f"lowering one train step (jax {jax.__version__}, {args.target}): d_model={cfg.d_model} "
              f"layers={cfg.n_layers} seq={exp.data.seq_len} batch={sizes[0]}")
        print(f"{'variant':<8}{'layers':>10}{'lower s':>9}{'StableHLO MB':>14}")
        for variant in variants:
            for unroll in (False, True):
                config.model.unroll_layers = unroll
                row = plan_step(config, variant, args.order, sizes[0], chunks[0], args.target, lower_only=True)
                print(f"{variant:<8}{'unrolled' if unroll else 'scanned':>10}{row['lower_s']:>9.1f}"
                      f"{row['program_bytes'] / 1e6:>14.2f}", flush=True)
        return 0
    print(f"memory plan of one train step for {args.target} (jax {jax.__version__}): d_model={cfg.d_model} "
          f"layers={cfg.n_layers} seq={exp.data.seq_len} {cfg.dtype} remat={cfg.remat} attention={cfg.attention}")
    print(f"{'variant':<8}{'chunk':>7}{'batch':>6}{'args GiB':>10}{'temp GiB':>10}{'plan GiB':>10}"
          f"{'limit GiB':>10}{'compile s':>10}")
    rows = []
    for variant in variants:
        for chunk in chunks:
            plans = []
            for batch in sizes:
                row = plan_step(config, variant, args.order, batch, chunk, args.target)
                plans.append(row)
                rows.append(row)
                print(f"{variant:<8}{chunk:>7}{batch:>6}{_gib(row['arguments']):>10}{_gib(row['temp']):>10}"
                      f"{_gib(row['plan']):>10}{_gib(row['limit']):>10}{row['compile_s']:>10.0f}", flush=True)
            if len(plans) >= 2:
                fits = largest_batch(plans[0], plans[-1])
                if fits is not None:
                    print(f"{variant:<8}{chunk:>7}  largest batch that fits {args.target} at seq {exp.data.seq_len}: "
                          f"{fits} (plan linear in the batch between {plans[0]['batch']} and {plans[-1]['batch']})")
    by = {(r["variant"], r["loss_chunk"], r["batch"]): r["plan"] for r in rows}
    if 0 in chunks and len(chunks) > 1:
        for variant in variants:
            for batch in sizes:
                for chunk in chunks:
                    if chunk and (variant, 0, batch) in by:
                        saved = by[(variant, 0, batch)] - by[(variant, chunk, batch)]
                        print(f"loss_chunk={chunk} saves {_gib(saved)} GiB of the {variant} plan at batch {batch}")
    return 0
