"""`a3jax bench data`: tokens/s of the full input pipeline by source and worker count.

Builds a JSONL corpus of about --corpus-mb from the Python standard library (its files repeated),
times `a3jax prepare` on it, then times `train_batches` (read, pack, sample groups, sort into
layouts, batch) for each source and Grain worker count: the median over --repeats runs of
--batches batches each, after a warm-up that absorbs the workers' start. Tokens/s counts the
batch's slots (batch x seq_len); 'real' excludes padding.
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

from a3jax.errors import UserError

SOURCES = ("stdlib", "jsonl", "arrayrecord")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch (one process)")
    parser.add_argument("--order", default="random(8)", help="orders.curriculum for the run")
    parser.add_argument("--scope", default="example", choices=("example", "batch"),
                        help="orders.group_size_scope")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    parser.add_argument("--corpus-mb", type=float, default=50.0, help="size of the JSONL corpus")
    parser.add_argument("--prepare-workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setting (median)")
    parser.add_argument("--workdir", default=None,
                        help="keep the corpus and shards here (reused when present)")


def build_jsonl(path: pathlib.Path, megabytes: float) -> int:
    """Writes stdlib files as JSONL records, repeated until about `megabytes`; returns bytes."""
    from a3jax.data.corpus import stdlib_files

    root, names = stdlib_files()
    target, written = int(megabytes * 2**20), 0
    with open(path, "w", encoding="utf-8") as handle:
        for copy in itertools.count():
            for name in names:
                text = (root / name).read_text("utf-8", errors="replace")
                line = json.dumps({"text": f"# copy {copy} of {name}\n{text}"}) + "\n"
                handle.write(line)
                written += len(line.encode("utf-8"))
                if written >= target:
                    return written


def _config(args, source: str, paths, workers: int):
    """The tiny preset with the benchmark's data, orders and batch (parsed)."""
    from a3jax.configs import load_config_file, parse

    config = load_config_file("tiny")
    d = config.data
    d.source, d.paths, d.seq_len, d.eval_fraction, d.max_files = source, tuple(paths), args.seq_len, 0.02, 0
    d.worker_count, d.shuffle = workers, True
    config.orders.curriculum, config.orders.group_size_scope = args.order, args.scope
    config.train.batch_size = args.batch_size
    return parse(config)


def time_pipeline(config, corpus, tokenizer, batches: int, repeats: int) -> dict:
    """Median seconds per batch (and real-token share) over `repeats` fresh iterators."""
    from a3jax.data.pipeline import train_batches

    workers = config.data.worker_count
    warmup = 3 + 4 * workers
    per_batch, real = [], []
    for repeat in range(repeats):
        with train_batches(config, corpus, tokenizer, start_step=repeat * (batches + warmup)) as iterator:
            for _ in range(warmup):
                next(iterator)
            start = time.perf_counter()
            filled = 0
            for _ in range(batches):
                batch = next(iterator)
                filled += int(np.count_nonzero(batch["segment_ids"]))
            per_batch.append((time.perf_counter() - start) / batches)
            real.append(filled / (batches * batch["segment_ids"].size))
    return {"seconds_per_batch": statistics.median(per_batch), "real_share": statistics.mean(real)}


def run(args) -> list[dict]:
    from a3jax.data.corpus import load_corpus
    from a3jax.data.prepare import prepare
    from a3jax.data.tokenizer import ByteTokenizer

    tokenizer = ByteTokenizer()
    keep = args.workdir is not None
    workdir = pathlib.Path(args.workdir) if keep else pathlib.Path(tempfile.mkdtemp(prefix="a3jax-bench-data-"))
    workdir.mkdir(parents=True, exist_ok=True)
    jsonl = workdir / "corpus.jsonl"
    shards = workdir / "shards"
    if not jsonl.is_file():
        size = build_jsonl(jsonl, args.corpus_mb)
    else:
        size = jsonl.stat().st_size
    results = []
    if "arrayrecord" in args.sources and not (shards / "manifest.json").is_file():
        start = time.perf_counter()
        manifest = prepare([str(jsonl)], shards, "bytes", workers=args.prepare_workers, progress=False)
        seconds = time.perf_counter() - start
        print(f"prepare: {size / 2**20:.1f} MiB JSONL -> {manifest['total_tokens']:,} tokens in "
              f"{len(manifest['shards'])} shards, {seconds:.1f} s ({size / 2**20 / seconds:.1f} MiB/s, "
              f"{manifest['total_tokens'] / seconds / 1e6:.2f} M tokens/s) with "
              f"{args.prepare_workers} workers", flush=True)
    for source in args.sources:
        paths = {"stdlib": [], "jsonl": [str(jsonl)], "arrayrecord": [str(shards)]}[source]
        started = time.perf_counter()
        corpus = load_corpus(_config(args, source, paths, 0).data, tokenizer)
        load_s = time.perf_counter() - started
        for workers in args.workers:
            config = _config(args, source, paths, workers)
            timing = time_pipeline(config, corpus, tokenizer, args.batches, args.repeats)
            slots = args.batch_size * args.seq_len
            row = {"source": source, "workers": workers, "load_s": load_s,
                   "ms_per_batch": timing["seconds_per_batch"] * 1e3,
                   "tokens_per_s": slots / timing["seconds_per_batch"],
                   "real_tokens_per_s": slots * timing["real_share"] / timing["seconds_per_batch"]}
            results.append(row)
            print(f"  {source:<12} workers={workers}: {row['tokens_per_s'] / 1e6:.2f} M tokens/s",
                  file=sys.stderr, flush=True)
    if not keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return results


def main(args, overrides=()) -> int:
    if overrides:
        raise UserError(f"a3jax bench data takes no --config overrides (got {list(overrides)})")
    print(f"a3jax bench data: seq_len={args.seq_len} batch={args.batch_size} order={args.order} "
          f"scope={args.scope}; median of {args.repeats} runs x {args.batches} batches", flush=True)
    results = run(args)
    print(f"{'source':<12} {'workers':>7} {'load s':>7} {'ms/batch':>9} {'M tok/s':>8} {'M real/s':>9}")
    for row in results:
        print(f"{row['source']:<12} {row['workers']:>7} {row['load_s']:>7.1f} "
              f"{row['ms_per_batch']:>9.2f} {row['tokens_per_s'] / 1e6:>8.2f} "
              f"{row['real_tokens_per_s'] / 1e6:>9.2f}")
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="a3jax bench data", description=__doc__)
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
