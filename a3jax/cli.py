"""The `a3jax` command: train, demo (train the tiny model, then infill held-out text), sample, eval,
sweep (a grid of runs), report (their tables and plots), prepare, convert, export, bench."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import os
import sys

from a3jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand: its module provides `add` (argparse setup) and `run` (args, overrides) -> code;
    or a group of subcommands (`sub`, chosen by the argument `dest`), such as `a3jax bench NAME`."""

    help: str
    module: str = ""
    add: str = "add_arguments"
    run: str = "main"
    raw: bool = False  # the arguments are another program's: passed to `main_raw(argv)` unparsed
    sub: dict = dataclasses.field(default_factory=dict)  # name -> Command
    dest: str = ""  # the args attribute naming the chosen subcommand (groups only)


# The one table of commands: parser and dispatch both read it.
COMMANDS = {
    "train": Command("train or resume a model", "a3jax.train.cli"),
    "demo": Command("train the tiny model on the stdlib corpus, then infill held-out text", "a3jax.demo"),
    "sample": Command("fill the [gap:N] slots of a prompt", "a3jax.decode.cli"),
    "eval": Command("NLL under orders, infilling, multiple choice, LAMBADA", "a3jax.eval.cli"),
    "sweep": Command("train and evaluate a grid of config points (one workdir each)", "a3jax.study.run"),
    "report": Command("runs' metrics -> Markdown tables and PNG plots", "a3jax.study.report"),
    "prepare": Command("tokenize a corpus into ArrayRecord shards", "a3jax.data.prepare"),
    "convert": Command("HF LLaMA safetensors -> a3jax checkpoint", "a3jax.convert.cli",
                       "add_convert_arguments", "convert_main"),
    "export": Command("a3jax checkpoint -> HF safetensors + config.json", "a3jax.convert.cli",
                      "add_export_arguments", "export_main"),
    "fetch": Command("download a real pretrained model's file into the cache (smollm2)", "a3jax.convert.cli",
                     "add_fetch_arguments", "fetch_main"),
    "bench": Command("benchmarks that print a table of side-by-side measurements", dest="name", sub={
        "parity": Command("every attention backend here vs the xla reference (values and gradients)",
                          "a3jax.bench.parity"),
        "attention": Command("attention backends vs 2 causal calls", "a3jax.bench.attention"),
        "train": Command("A3 vs causal train step: tokens/s, TFLOP/s, MFU, memory", "a3jax.bench.train"),
        "decode": Command("infilling with the KV cache vs recompute", "a3jax.bench.decode"),
        "data": Command("tokens/s of the data pipeline by source and workers", "a3jax.bench.data"),
        "plan": Command("the train step's memory plan and largest batch, here or for an H100/H200 without one",
                        "a3jax.bench.plan"),
        "host": Command("CPU host settings (malloc, one device per core) vs the train step, side by side",
                        "a3jax.bench.host"),
        "scorers": Command("a3jax eval vs lm-evaluation-harness --model hf on one checkpoint (PIQA, LAMBADA, text)",
                           "a3jax.bench.scorers"),
    }),
    "lm-eval": Command("lm-evaluation-harness's command line with the a3jax model (pip install 'a3jax[eval]')",
                       "a3jax.eval.lm_eval_cli", raw=True),
}


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    overrides = [a for a in argv if a.startswith("--config.")]
    return [a for a in argv if not a.startswith("--config.")], overrides


def _add_commands(parser, table: dict, dest: str) -> None:
    sub = parser.add_subparsers(dest=dest, required=True)
    for name, command in table.items():
        child = sub.add_parser(name, help=command.help, add_help=not command.raw)
        if command.sub:
            _add_commands(child, command.sub, command.dest)
        else:
            getattr(importlib.import_module(command.module), command.add)(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a3jax", description=__doc__,
                                     epilog="Config overrides: --config.SECTION.KEY=VALUE, "
                                            "e.g. --config.train.steps=100")
    _add_commands(parser, COMMANDS, "command")
    return parser


def chosen_command(args) -> Command:
    """The leaf of the command table that args chose (a3jax bench train -> bench's 'train')."""
    command = COMMANDS[args.command]
    while command.sub:
        command = command.sub[getattr(args, command.dest)]
    return command


def run_command(args, overrides) -> int:
    command = chosen_command(args)
    run = getattr(importlib.import_module(command.module), command.run)
    if len(inspect.signature(run).parameters) == 1:  # a command without config overrides
        if overrides:
            raise UserError(f"a3jax {args.command} takes no --config overrides (got {list(overrides)})")
        return run(args)
    return run(args, overrides)


def _quiet_background_failures() -> None:
    """A failed checkpoint write (disk full) makes orbax log each background thread's failure with
    a traceback (absl logger), its abandoned asyncio tasks log theirs, and tensorstore callbacks print
    'Event loop is closed' tracebacks;
    a3jax reports the failure in one line instead. A3JAX_DEBUG=1 keeps them all."""
    import logging

    logging.getLogger("absl").setLevel(logging.CRITICAL)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # "Task exception was never retrieved"
    default = sys.unraisablehook

    def hook(unraisable):
        if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
            return
        default(unraisable)

    sys.unraisablehook = hook


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS and COMMANDS[argv[0]].raw:
        try:
            return importlib.import_module(COMMANDS[argv[0]].module).main_raw(argv[1:])
        except UserError as error:
            print(f"a3jax {argv[0]}: error: {error}", file=sys.stderr)
            return 2
    from a3jax.host_memory import keep_freed_memory
    from a3jax.xla_flags import apply_gpu_flags

    apply_gpu_flags()  # before JAX starts a backend: XLA reads XLA_FLAGS once
    keep_freed_memory()  # before XLA's threads take their malloc arenas
    rest, overrides = _split_overrides(argv)
    args = build_parser().parse_args(rest)
    if not os.environ.get("A3JAX_DEBUG"):
        _quiet_background_failures()
    from a3jax.train.window import TrainingDivergedError

    try:
        return run_command(args, overrides)
    except (UserError, FileNotFoundError) as error:  # what the user can fix: one line, no traceback
        if os.environ.get("A3JAX_DEBUG"):
            raise
        print(f"a3jax {args.command}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except TrainingDivergedError as error:
        if os.environ.get("A3JAX_DEBUG"):
            raise
        print(f"a3jax {args.command}: stopped: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("a3jax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
