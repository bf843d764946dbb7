"""The `a3jax` command: train, demo (train the tiny model, then infill held-out text), sample, eval,
sweep (a grid of runs), report (their tables and plots), prepare, convert, export, bench."""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

EXPERIMENTS = pathlib.Path(__file__).resolve().parent.parent / "experiments"


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    overrides = [a for a in argv if a.startswith("--config.")]
    return [a for a in argv if not a.startswith("--config.")], overrides


def _default_config() -> str:
    return str(EXPERIMENTS / "tiny.py")


def _cmd_train(args, overrides) -> int:
    from a3jax import distributed
    from a3jax.configs import load_config
    from a3jax.train.loop import train

    config = load_config(args.config, overrides)  # bad config fails before any process waits
    distributed.initialize(timeout_s=args.distributed_timeout)
    summary = train(config, args.workdir, stop_after=args.stop_after, progress=not args.no_progress,
                    resume=args.resume)
    if summary["stopped_by"]:  # preempted: the checkpoint is written, a rerun resumes
        return 0
    print(f"[a3jax] finished at step {summary['step']}; checkpoints in {pathlib.Path(args.workdir) / 'checkpoints'}")
    if summary["skipped_total"]:
        print(f"[a3jax] {summary['skipped_total']} steps had non-finite loss or gradients; their updates were "
              "skipped (train/skipped in metrics.jsonl)")
    for name, value in summary["eval"].items():
        print(f"  eval {name} = {value:.4f}")
    return 0


def _cmd_demo(args, overrides) -> int:
    import time

    from a3jax.configs import load_config, model_config
    from a3jax.data import infill_example, load_corpus, load_tokenizer
    import numpy as np

    from a3jax.decode import SampleConfig, generate
    from a3jax.train.loop import train
    from a3jax.train.step import abstract_params

    started = time.perf_counter()
    config = load_config(args.config, overrides)
    tokenizer = load_tokenizer(config.data)
    corpus = load_corpus(config.data, tokenizer)
    print(f"[a3jax] demo: {len(corpus.train_docs)} train / {len(corpus.eval_docs)} held-out files of the "
          f"Python standard library, {sum(d.size for d in corpus.train_docs):,} training bytes")
    summary = train(config, args.workdir, corpus=corpus, progress=not args.no_progress)
    model_def, _ = abstract_params(model_config(config))
    window, start, stop = infill_example(corpus, tokenizer, int(config.data.seq_len), args.span, seed=args.seed)
    known = np.ones(window.size, bool)
    known[start:stop] = False
    # greedy, left to right through the gap, with the exact KV cache
    filled = generate(model_def, summary["params"], [window], [known], bos_id=tokenizer.bos_id,
                      pad_id=tokenizer.pad_id, sampling=SampleConfig(plan="ar", temperature=0.0)).tokens[0]
    before, gap, after = (tokenizer.decode(window[:start]), tokenizer.decode(window[start:stop]),
                          tokenizer.decode(window[stop:]))
    print("\n==== held-out file, the gap to fill marked [...] ====")
    print(before + "[...]" + after)
    print("==== original gap ====")
    print(gap)
    print("==== model's greedy infill ====")
    print(tokenizer.decode(filled[start:stop]))
    print(f"(more: a3jax sample --workdir {args.workdir} --prompt 'def add(a, b):[gap:40]')")
    print("====")
    for name, value in summary["eval"].items():
        print(f"held-out {name} = {value:.3f}")
    print(f"[a3jax] demo done in {time.perf_counter() - started:.0f} s; workdir {args.workdir} "
          f"(metrics.jsonl, tensorboard/, checkpoints/)")
    return 0


def _cmd_bench(args, overrides) -> int:
    if args.name == "attention":
        from a3jax.bench import attention

        return attention.main(args)
    if args.name == "train":
        from a3jax.bench import train as bench_train

        return bench_train.main(args, overrides)
    if args.name == "decode":
        from a3jax.bench import decode as bench_decode

        return bench_decode.main(args, overrides)
    if args.name == "parity":
        from a3jax.bench import parity

        return parity.main(args)
    from a3jax.bench import data

    return data.main(args)


def _cmd_convert(args, overrides) -> int:
    from a3jax.convert import cli as convert_cli

    return convert_cli.convert_main(args, overrides)


def _cmd_export(args, overrides) -> int:
    from a3jax.convert import cli as convert_cli

    return convert_cli.export_main(args, overrides)


def _cmd_sample(args, overrides) -> int:
    from a3jax.decode import cli as sample_cli

    return sample_cli.main(args, overrides)


def _cmd_eval(args, overrides) -> int:
    from a3jax.eval import cli as eval_cli

    return eval_cli.main(args, overrides)


def _cmd_sweep(args, overrides) -> int:
    from a3jax import sweep

    return sweep.main(args, overrides)


def _cmd_report(args, overrides) -> int:
    from a3jax import report

    return report.main(args, overrides)


def _cmd_prepare(args, overrides) -> int:
    from a3jax.data import prepare

    return prepare.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="a3jax", description=__doc__,
                                     epilog="Config overrides: --config.SECTION.KEY=VALUE, e.g. --config.train.steps=100")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [("train", "train or resume a model"),
                            ("demo", "train the tiny model on the stdlib corpus, then infill held-out text")]:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", default=_default_config(), help="ml_collections config file")
        p.add_argument("--workdir", required=(name == "train"), default="runs/demo",
                       help="checkpoints, metrics.jsonl and tensorboard/ go here; an existing one resumes")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        if name == "train":
            p.add_argument("--stop-after", type=int, default=None,
                           help="stop after this step (the schedule still spans train.steps)")
            p.add_argument("--resume", default="auto", choices=("auto", "never", "must"),
                           help="auto: continue from the latest checkpoint if any; never: refuse a workdir "
                                "with checkpoints; must: refuse one without")
            p.add_argument("--distributed-timeout", type=int, default=300,
                           help="seconds to wait for the other processes of a multi-process job")
        else:
            p.add_argument("--span", type=int, default=32, help="bytes to infill")
            p.add_argument("--seed", type=int, default=0, help="picks the held-out window")
    bench = sub.add_parser("bench", help="benchmarks that print a table of side-by-side timings")
    bench_sub = bench.add_subparsers(dest="name", required=True)
    from a3jax.bench import attention as bench_attention

    bench_attention.add_arguments(bench_sub.add_parser("attention", help="attention backends vs 2 causal calls"))
    from a3jax.bench import data as bench_data
    from a3jax.data import prepare

    bench_data.add_arguments(bench_sub.add_parser("data", help="tokens/s of the data pipeline by source and workers"))
    from a3jax.bench import train as bench_train

    bench_train.add_arguments(bench_sub.add_parser("train", help="A3 vs causal train step: tokens/s, TFLOP/s, MFU"))
    from a3jax.bench import decode as bench_decode

    bench_decode.add_arguments(bench_sub.add_parser("decode", help="infilling with the KV cache vs recompute"))
    from a3jax.bench import parity as bench_parity

    bench_parity.add_arguments(bench_sub.add_parser(
        "parity", help="every attention backend here vs the xla reference (values and gradients)"))
    prepare.add_arguments(sub.add_parser("prepare", help="tokenize a corpus into ArrayRecord shards"))
    from a3jax.convert import cli as convert_cli

    convert_cli.add_convert_arguments(sub.add_parser("convert", help="HF LLaMA safetensors -> a3jax checkpoint"))
    convert_cli.add_export_arguments(sub.add_parser("export", help="a3jax checkpoint -> HF safetensors + config.json"))
    from a3jax.decode import cli as sample_cli

    sample_cli.add_arguments(sub.add_parser("sample", help="fill the [gap:N] slots of a prompt"))
    from a3jax.eval import cli as eval_cli

    eval_cli.add_arguments(sub.add_parser("eval", help="NLL under orders, infilling, multiple choice, LAMBADA"))
    from a3jax import report, sweep

    sweep.add_arguments(sub.add_parser("sweep", help="train and evaluate a grid of config points (one workdir each)"))
    report.add_arguments(sub.add_parser("report", help="runs' metrics -> Markdown tables and PNG plots"))
    return parser


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
    rest, overrides = _split_overrides(argv)
    args = build_parser().parse_args(rest)
    if not os.environ.get("A3JAX_DEBUG"):
        _quiet_background_failures()
    from a3jax.checkpoint import IncompatibleCheckpointError
    from a3jax.configs import ConfigError
    from a3jax.data.sources import CorruptShardError
    from a3jax.distributed import DistributedError
    from a3jax.parallel import MeshError
    from a3jax.train.loop import CheckpointWriteError, TrainingDivergedError

    try:
        handler = {"train": _cmd_train, "demo": _cmd_demo, "bench": _cmd_bench,
                   "prepare": _cmd_prepare, "convert": _cmd_convert, "export": _cmd_export,
                   "sample": _cmd_sample, "eval": _cmd_eval, "sweep": _cmd_sweep,
                   "report": _cmd_report}[args.command]
        return handler(args, overrides)
    except (ConfigError, IncompatibleCheckpointError, MeshError, CorruptShardError, FileNotFoundError,
            DistributedError, ValueError, CheckpointWriteError) as error:
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
