"""`a3jax bench host`: what the CPU host settings do to a train step, side by side.

Two settings decide how fast a small model trains on a CPU, and both must be made before JAX starts,
so each combination is measured in its own child process (interleaved over --rounds):
  malloc    glibc keeps XLA:CPU's per-call temporaries in the heap (a3jax/host_memory.py; what the
            CLI and the tests apply) or mmaps and faults them in on every call (A3JAX_CPU_MALLOC=0)
  devices   one XLA CPU device per core with the batch split over them (what `a3jax demo` does),
            or one device whose thread pool spreads each op over the cores
Each child times the A3 and the causal step of --config (default: the demo's shape) with
`a3jax bench train`'s measure() (with the preset's BPE_VOCAB as its vocabulary, as the demo
trains); the table gives the median over rounds and the ratio to the setting with neither.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from a3jax.errors import UserError
from a3jax.host_memory import OPT_OUT
from a3jax.xla_flags import HOST_DEVICES_FLAG

MEASURED = (("causal", "ar"), ("a3", "random(4)"))  # (variant, the order of its batch)
_CHILD = """
import json, sys
from a3jax.host_memory import keep_freed_memory
keep_freed_memory()
from a3jax.bench.train import measure
from a3jax.configs import load_config
import jax
config_name, repeats, overrides = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
rows = {}
for variant, order in json.loads(sys.argv[4]):
    rows[variant] = measure(load_config(config_name, overrides), variant, order, repeats)["step_ms"]
rows["devices"] = jax.device_count()
print("A3JAX_HOST_ROW " + json.dumps(rows))
"""


def add_arguments(parser) -> None:
    parser.add_argument("--config", default="demo", help="preset or config file (default: the demo's shape)")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per child (median)")
    parser.add_argument("--rounds", type=int, default=3, help="children per setting, interleaved")


def settings(cores: int) -> list[tuple[str, dict]]:
    per_core = {"XLA_FLAGS": f"--{HOST_DEVICES_FLAG}={cores}"}
    one = {"XLA_FLAGS": f"--{HOST_DEVICES_FLAG}=1"}
    return [("neither", {**one, OPT_OUT: "0"}),
            ("malloc", {**one, OPT_OUT: "1"}),
            (f"{cores} devices", {**per_core, OPT_OUT: "0"}),
            (f"both ({cores} devices + malloc)", {**per_core, OPT_OUT: "1"})]


def _child(config: str, repeats: int, overrides, env: dict) -> dict:
    full = {**os.environ, **env, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", _CHILD, config, str(repeats), json.dumps(list(overrides)),
                           json.dumps(MEASURED)],
                          env=full, capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("A3JAX_HOST_ROW "):
            return json.loads(line.split(" ", 1)[1])
    raise UserError(f"the benchmark child ({env}) failed: {(done.stderr or done.stdout).strip()[-400:]}")


def main(args, overrides=()) -> int:
    from a3jax.configs import load_config_module

    vocab = int(getattr(load_config_module(args.config), "BPE_VOCAB", 0))
    if vocab:  # the demo trains on its BPE's vocabulary (a3jax demo sets it; the preset alone says bytes)
        overrides = [f"model.vocab_size={vocab}", *overrides]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    table = settings(cores)
    names = [variant for variant, _ in MEASURED]
    times: dict[str, dict[str, list[float]]] = {name: {v: [] for v in names} for name, _ in table}
    for r in range(args.rounds):
        for name, env in table:
            row = _child(args.config, args.repeats, overrides, env)
            for variant in names:
                times[name][variant].append(row[variant])
            print(f"round {r + 1}/{args.rounds} {name}: causal {row['causal']:.1f} ms, a3 {row['a3']:.1f} ms "
                  f"({row['devices']} device{'s' if row['devices'] > 1 else ''})", file=sys.stderr, flush=True)
    print(f"train step of --config {args.config} on {cores} CPU cores, median of {args.rounds} processes x "
          f"{args.repeats} steps")
    print(f"{'setting':<32}{'causal ms':>10}{'x':>7}{'a3 ms':>10}{'x':>7}")
    base = {v: statistics.median(times["neither"][v]) for v in names}
    for name, _ in table:
        med = {v: statistics.median(times[name][v]) for v in names}
        print(f"{name:<32}{med['causal']:>10.1f}{med['causal'] / base['causal']:>7.2f}"
              f"{med['a3']:>10.1f}{med['a3'] / base['a3']:>7.2f}")
    return 0
