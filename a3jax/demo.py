"""`a3jax demo` (what `make demo` runs): train the tiny model on the embedded stdlib corpus, then
infill a masked span of a held-out file with the sampler."""

from __future__ import annotations

import time

import numpy as np


def add_arguments(parser) -> None:
    parser.add_argument("--config", default="tiny", help="preset name or config file")
    parser.add_argument("--workdir", default="runs/demo",
                        help="checkpoints, metrics.jsonl and tensorboard/ go here; an existing one resumes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--span", type=int, default=32, help="bytes to infill")
    parser.add_argument("--seed", type=int, default=0, help="picks the held-out window")


def main(args, overrides=()) -> int:
    from a3jax.configs import load_config, parse
    from a3jax.data import infill_example, load_corpus, load_tokenizer
    from a3jax.decode import SampleConfig, generate
    from a3jax.model.params import abstract_params
    from a3jax.train.loop import train

    started = time.perf_counter()
    exp = parse(load_config(args.config, overrides))
    tokenizer = load_tokenizer(exp.data)
    corpus = load_corpus(exp.data, tokenizer)
    print(f"[a3jax] demo: {len(corpus.train_docs)} train / {len(corpus.eval_docs)} held-out files of the "
          f"Python standard library, {sum(d.size for d in corpus.train_docs):,} training bytes")
    summary = train(exp, args.workdir, corpus=corpus, progress=not args.no_progress)
    model_def, _ = abstract_params(exp.model)
    window, start, stop = infill_example(corpus, tokenizer, exp.data.seq_len, args.span, seed=args.seed)
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
