"""`a3jax eval`: score a workdir's checkpoint on one task, print a Markdown table, write JSON.

    a3jax eval --workdir runs/demo --task nll [--orders "ar,random(4)"] [--limit ROWS]
    a3jax eval --workdir runs/demo --task infill [--span 32] [--plan ar] [--limit WINDOWS]
    a3jax eval --workdir runs/demo --task infill --data items.jsonl [--plan ar]  (prefix / middle /
                                       suffix items: HumanEval infilling, story infilling)
    a3jax eval --workdir runs/demo --task mc --data ../shared/data/piqa/valid.jsonl [--labels L]
    a3jax eval --workdir runs/demo --task lambada --data lambada.jsonl [--limit N]
    a3jax eval --workdir runs/demo --task rolling --data texts.jsonl   (bits per byte, left to right:
                                                                         lm-eval's loglikelihood_rolling)

The JSON (default WORKDIR/eval/<task>.json) holds the task, checkpoint step, settings and metrics.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time
from collections.abc import Sequence

from a3jax.errors import UserError

TASKS = ("nll", "infill", "mc", "lambada", "rolling")
DEFAULT_INFILL_EXAMPLES = 16


def add_arguments(parser) -> None:
    parser.add_argument("--workdir", required=True, help="training or `a3jax convert` workdir")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--task", required=True, help=f"one of {', '.join(TASKS)}")
    parser.add_argument("--data", default=None,
                        help="mc: JSONL (generic context/choices/label, or PIQA goal/sol1/sol2); "
                             "lambada: text (one passage a line) or JSONL with 'text'; infill: JSONL of "
                             "prefix/middle/suffix items (or prompt/canonical_solution/suffix), each middle "
                             "filled at its true length; nll (and infill, with a text file or JSONL of "
                             "'text'): documents to use instead of the checkpoint's held-out split")
    parser.add_argument("--labels", default=None,
                        help="mc: labels file, one integer a line (default <stem>-labels.lst next to "
                             "--data when present)")
    parser.add_argument("--orders", default=None,
                        help="nll: comma-separated orders, e.g. 'ar,random(4)' (default: the "
                             "checkpoint's orders.eval)")
    parser.add_argument("--limit", type=int, default=None,
                        help="nll: held-out rows (default train.eval_rows); infill: windows "
                             f"(default {DEFAULT_INFILL_EXAMPLES}); mc/lambada: first N items")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per forward pass")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="row length for scoring (default: the checkpoint's data.seq_len); raise it "
                             "when items do not fit (RoPE models run past their training length)")
    parser.add_argument("--plan", default="ar", help="infill: decoding plan, e.g. ar, blocks(4), random(4)")
    parser.add_argument("--span", type=int, default=32, help="infill: tokens to mask per window")
    parser.add_argument("--seed", type=int, default=0, help="infill: first window seed")
    parser.add_argument("--context", default="ar",
                        help="mc/lambada: context layout: 'ar' (left to right, the default) or 'group' "
                             "(one context group, as the official code lays out a prompt)")
    parser.add_argument("--out", default=None, help="JSON file (default WORKDIR/eval/<task>.json)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="a3jax eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def _check(args) -> None:
    """Bad arguments fail before the checkpoint is read."""
    if args.task not in TASKS:
        raise UserError(f"--task {args.task!r} is unknown; choose one of {', '.join(TASKS)}")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit} must be >= 1")
    if args.batch_size < 1:
        raise UserError(f"--batch-size {args.batch_size} must be >= 1")
    if args.seq_len is not None and args.seq_len < 2:
        raise UserError(f"--seq-len {args.seq_len} must be >= 2 (BOS and one token)")
    if args.span < 1:
        raise UserError(f"--span {args.span} must be >= 1")
    if args.task in ("mc", "lambada", "rolling") and not args.data:
        kind = "JSONL or text" if args.task in ("lambada", "rolling") else "JSONL"
        raise UserError(f"--task {args.task} needs --data PATH (a local {kind} file)")
    if args.data and not pathlib.Path(args.data).is_file():
        raise UserError(f"--data {args.data} does not exist")
    if args.context not in ("group", "ar"):
        raise UserError(f"--context {args.context!r} is unknown; choose ar or group")
    if args.labels and args.task != "mc":
        raise UserError(f"--labels is only used by --task mc, not {args.task}")
    if args.labels and not pathlib.Path(args.labels).is_file():
        raise UserError(f"--labels {args.labels} does not exist")


def _documents_corpus(path: str, tokenizer):
    """A corpus whose held-out split is every document of a text file (one document) or JSONL
    file (the 'text' key of each line)."""
    import numpy as np

    from a3jax.data.corpus import Corpus
    from a3jax.eval.tasks import load_lambada

    path = pathlib.Path(path)
    if path.suffix in (".jsonl", ".json", ".ndjson"):
        texts = load_lambada(path)  # the same "text"-per-line reader
    else:
        texts = [path.read_text(encoding="utf-8")]
    docs = [np.append(tokenizer.encode(t), np.int32(tokenizer.eos_id)).astype(np.int32) for t in texts]
    return Corpus(train_docs=[], eval_docs=docs, eval_names=[f"{path.name}:{i}" for i in range(len(docs))])


def _is_infill_jsonl(path: str) -> bool:
    """A JSONL file whose first item has a middle (prefix/middle/suffix items), not documents."""
    from a3jax.eval.tasks import MIDDLE_KEYS

    if pathlib.Path(path).suffix not in (".jsonl", ".json", ".ndjson"):
        return False
    with open(path, encoding="utf-8") as handle:
        first = next((line for line in handle if line.strip()), "{}")
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(record, dict) and any(k in record for k in MIDDLE_KEYS)


def run_task(args, loaded) -> dict:
    from ml_collections import ConfigDict

    from a3jax.configs import parse
    from a3jax.eval import tasks

    if args.seq_len is not None:  # score with longer (or shorter) rows than the training ones
        config = ConfigDict(loaded.config.to_dict())
        config.data.seq_len = args.seq_len
        loaded = dataclasses.replace(loaded, config=config, experiment=parse(config))
    progress = not args.no_progress
    context_order = args.context
    tokenizer = loaded.tokenizer
    if args.task == "nll" or (args.task == "infill" and not (args.data and _is_infill_jsonl(args.data))):
        if args.data:
            corpus = _documents_corpus(args.data, tokenizer)
        else:
            from a3jax.data import load_corpus

            corpus = load_corpus(loaded.experiment.data, tokenizer)
    if args.task == "nll":
        specs = (args.orders.split(",") if args.orders else list(loaded.experiment.orders.eval))
        rows = args.limit or loaded.experiment.train.eval_rows
        return tasks.nll_under_orders(loaded.experiment, corpus, tokenizer, loaded.model_def, loaded.params,
                                      specs, rows, batch_size=args.batch_size, progress=progress)
    if args.task == "infill" and args.data and _is_infill_jsonl(args.data):
        items = tasks.load_infill_jsonl(args.data)[: args.limit]
        return tasks.infill_items(loaded, items, plan=args.plan, seed=args.seed, batch_size=args.batch_size,
                                  progress=progress)
    if args.task == "infill":
        return tasks.infill(loaded, corpus, span=args.span, num_examples=args.limit or DEFAULT_INFILL_EXAMPLES,
                            seed=args.seed, plan=args.plan, batch_size=args.batch_size, progress=progress)
    if args.task == "mc":
        items = tasks.load_mc_jsonl(args.data, args.labels)[: args.limit]
        return tasks.multiple_choice(loaded, items, batch_size=args.batch_size, context_order=context_order,
                                     progress=progress)
    if args.task == "rolling":
        texts = tasks.load_lambada(args.data)[: args.limit]  # one text per line / JSONL "text"
        return tasks.rolling(loaded, texts, batch_size=args.batch_size, context_order=context_order,
                             progress=progress)
    passages = tasks.load_lambada(args.data)[: args.limit]
    return tasks.lambada(loaded, passages, batch_size=args.batch_size, context_order=context_order,
                         progress=progress)


def markdown_table(results: dict) -> str:
    lines = ["| metric | value |", "|---|---|"]
    for name, value in results.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"| {name} | {shown} |")
    return "\n".join(lines)


def main(args, overrides: Sequence[str] = ()) -> int:
    from a3jax.inference import load_model

    if overrides:
        raise UserError(f"a3jax eval takes no --config overrides (got {list(overrides)})")
    _check(args)
    started = time.perf_counter()
    loaded = load_model(args.workdir, args.step)
    results = run_task(args, loaded)
    seconds = time.perf_counter() - started
    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.workdir) / "eval" / f"{args.task}.json"
    record = {
        "task": args.task, "workdir": str(args.workdir), "step": int(loaded.step),
        "settings": {k: getattr(args, k) for k in ("data", "labels", "orders", "limit", "batch_size",
                                                   "plan", "span", "seed", "context", "seq_len")},
        "metrics": results, "seconds": round(seconds, 3),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"a3jax eval --task {args.task}: {args.workdir} step {loaded.step} ({seconds:.1f} s)")
    print(markdown_table(results))
    print(f"[a3jax] wrote {out}", file=sys.stderr)
    return 0
