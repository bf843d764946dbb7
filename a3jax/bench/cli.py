"""`a3jax bench NAME`: benchmarks that print a table of side-by-side measurements."""

from __future__ import annotations

import importlib

# name: (module, help); each module has add_arguments(parser) and main(args, overrides) -> int
BENCHMARKS = {
    "parity": ("a3jax.bench.parity", "every attention backend here vs the xla reference (values and gradients)"),
    "attention": ("a3jax.bench.attention", "attention backends vs 2 causal calls"),
    "train": ("a3jax.bench.train", "A3 vs causal train step: tokens/s, TFLOP/s, MFU, memory"),
    "decode": ("a3jax.bench.decode", "infilling with the KV cache vs recompute"),
    "data": ("a3jax.bench.data", "tokens/s of the data pipeline by source and workers"),
}


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="name", required=True)
    for name, (module, help_text) in BENCHMARKS.items():
        importlib.import_module(module).add_arguments(sub.add_parser(name, help=help_text))


def main(args, overrides=()) -> int:
    return importlib.import_module(BENCHMARKS[args.name][0]).main(args, overrides)
