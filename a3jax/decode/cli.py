"""`a3jax sample`: fill the gaps of a prompt with a trained model.

    a3jax sample --workdir runs/demo/a3 --prompt "def add(a, b):[gap:24]" --plan ar --temperature 0.7
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from a3jax.decode.plans import parse_plan, parse_prompt
from a3jax.decode.sampler import MODES, SampleConfig, generate
from a3jax.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, help="a training (or `a3jax convert`) workdir")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="text with gaps, e.g. 'def f(x):[gap:20]\\n    return y'")
    source.add_argument("--prompt-file", help="read the prompt from this file")
    parser.add_argument("--plan", default="ar", help="ar | blocks(k) | random | random(k) | speculative | "
                        "speculative(k[, draft=model|copy|ngram]) | confidence(k) | "
                        "entropy(k) | margin(k) | random_pick(k) | NAME(steps=T[, schedule=cosine])")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--num-samples", type=int, default=1, help="samples of the same prompt, one batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", default="cached", choices=MODES)
    parser.add_argument("--max-len", type=int, default=None,
                        help="longest row incl. BOS (default: the training seq_len)")


def main(args, overrides=()) -> int:
    from a3jax.inference import load_model

    if overrides:
        raise UserError(f"a3jax sample takes no --config overrides (got {list(overrides)})")
    if args.num_samples < 1:
        raise UserError(f"--num-samples={args.num_samples} must be >= 1")
    sampling = SampleConfig(plan=args.plan, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            seed=args.seed, mode=args.mode)
    sampling.check()  # bad settings fail before the checkpoint is read
    text = args.prompt if args.prompt is not None else open(args.prompt_file, encoding="utf-8").read()
    loaded = load_model(args.workdir, args.step)
    tok = loaded.tokenizer
    drafter = None
    if parse_plan(args.plan).draft == "ngram":  # drafts from the model's training text
        from a3jax.data import load_corpus
        from a3jax.decode.ngram import ngram_drafter

        print("[a3jax] building the n-gram drafts from the training data", file=sys.stderr)
        drafter = ngram_drafter(load_corpus(loaded.experiment.data, tok), tok, loaded.cfg.vocab_size)
    max_len = args.max_len or loaded.experiment.data.seq_len
    prompt = parse_prompt(text, tok, max_len)
    print(f"[a3jax] sampling {args.num_samples} x {int((~prompt.known).sum())} positions from "
          f"{args.workdir} step {loaded.step}, plan {args.plan}, {args.mode}", file=sys.stderr)
    started = time.perf_counter()
    result = generate(loaded.model_def, loaded.params, [prompt.tokens] * args.num_samples,
                      [prompt.known] * args.num_samples, bos_id=tok.bos_id, pad_id=tok.pad_id, eos_id=tok.eos_id,
                      sampling=sampling, max_len=max_len, progress=True, drafter=drafter)
    elapsed = time.perf_counter() - started
    for i, (tokens, log_probs) in enumerate(zip(result.tokens, result.log_probs)):
        generated = ~prompt.known[:tokens.size]
        nll = -float(np.sum(log_probs[generated])) / max(int(generated.sum()), 1)
        print(f"==== sample {i} (mean NLL of generated tokens {nll:.3f} nats) ====")
        print(tok.decode(tokens))
    print(f"[a3jax] {result.n_steps} steps in {elapsed:.1f} s (compile included)", file=sys.stderr)
    return 0


__all__ = ["add_arguments", "main", "parse_plan"]
