"""`a3jax train`: train or resume a model in a workdir."""

from __future__ import annotations

import pathlib


def add_arguments(parser) -> None:
    parser.add_argument("--config", default="tiny", help="preset name (e.g. tiny, llama3_1b) or config file")
    parser.add_argument("--workdir", required=True,
                        help="checkpoints, metrics.jsonl and tensorboard/ go here; an existing one resumes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="stop after this step (the schedule still spans train.steps)")
    parser.add_argument("--resume", default="auto", choices=("auto", "never", "must"),
                        help="auto: continue from the latest checkpoint if any; never: refuse a workdir "
                             "with checkpoints; must: refuse one without")
    parser.add_argument("--distributed-timeout", type=int, default=300,
                        help="seconds to wait for the other processes of a multi-process job")


def main(args, overrides=()) -> int:
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
