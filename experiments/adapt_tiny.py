"""The paper's progressive adaptation (AR model -> A3) on the tiny shape, and the whole story offline.

Curriculum (official README): stage 0 AR -> 1 contiguous groups of 2 -> 2 contiguous groups of 4
-> 3 groups of 4 scattered positions in random order -> 4 the same with 8. AdamW, weight decay
0.01, 50 warmup steps (the paper's lr 2e-5 is for pretrained 1B/8B models, see
adapt_llama3_1b.py; this tiny, briefly trained model uses a larger lr). The paper does not give
stage lengths: each stage here gets an equal share of train.steps (STAGE_FRACTIONS).

As a config:  a3jax convert --from-hf HF --out W --config experiments/adapt_tiny.py
              a3jax train --workdir W --config W/experiment.py
As a script:  python experiments/adapt_tiny.py [--workdir runs/adapt_tiny]
  1. trains a tiny `causal` LLaMA on the stdlib corpus with a3jax,
  2. exports it to HF format (a3jax export), 3. converts it back as `a3` (a3jax convert),
  4. evaluates the converted model (NLL per token under ar and random orders), runs the five
  stages, evaluates again, and prints the numbers (also written to WORKDIR/results.json).
"""

import importlib.util
import pathlib

_tiny = importlib.util.spec_from_file_location("tiny", pathlib.Path(__file__).with_name("tiny.py"))
tiny = importlib.util.module_from_spec(_tiny)
_tiny.loader.exec_module(tiny)

STAGES = ("ar", "blocks(2)", "blocks(4)", "random(4)", "random(8)")
STAGE_FRACTIONS = (0.2, 0.4, 0.6, 0.8)  # stage k runs until this share of train.steps


def adaptation_curriculum(steps: int) -> str:
    """'ar until a; blocks(2) until b; blocks(4) until c; random(4) until d; random(8)'."""
    bounds = [max(int(round(f * steps)), i + 1) for i, f in enumerate(STAGE_FRACTIONS)]
    return "; ".join(f"{s} until {b}" for s, b in zip(STAGES, bounds)) + f"; {STAGES[-1]}"


def apply_adaptation(config, steps: int, lr: float):
    """The adaptation recipe on any base config (also used by the 1B / 8B configs)."""
    config.model.variant = "a3"
    config.orders.curriculum = adaptation_curriculum(steps)
    config.orders.group_size_scope = "example"
    config.orders.eval = ("ar", "blocks(4)", "random(4)", "random(8)")
    t = config.train
    t.steps, t.lr, t.weight_decay, t.warmup_steps = steps, lr, 0.01, 50
    t.b1, t.b2 = 0.9, 0.95
    return config


def get_config():
    config = tiny.get_config()
    apply_adaptation(config, steps=400, lr=1e-3)
    config.train.eval_every = 80
    config.train.checkpoint_every = 80
    return config


def causal_config(steps: int):
    """The tiny AR model the story starts from (what a pretrained LLaMA is to the paper)."""
    config = tiny.get_config()
    config.model.variant = "causal"
    config.orders.curriculum = "ar"
    config.orders.eval = ("ar",)
    config.train.steps = steps
    config.train.eval_every = steps
    config.train.checkpoint_every = steps
    return config


def main(argv=None) -> int:
    import argparse
    import json
    import shutil
    import sys
    import time

    from a3jax.configs import load_config, validate
    from a3jax.convert import convert_hf, export_hf
    from a3jax.data import load_corpus, load_tokenizer
    from a3jax.train.loop import train

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/adapt_tiny")
    parser.add_argument("--causal-steps", type=int, default=1200, help="AR pretraining steps")
    parser.add_argument("--adapt-steps", type=int, default=400, help="adaptation steps (all five stages)")
    parser.add_argument("--lr", type=float, default=1e-3, help="adaptation peak lr")
    parser.add_argument("--fresh", action="store_true", help="delete WORKDIR first")
    args = parser.parse_args(argv)
    root = pathlib.Path(args.workdir)
    if args.fresh and root.exists():
        shutil.rmtree(root)
    started = time.perf_counter()
    say = lambda m: print(f"[adapt_tiny] {m}", file=sys.stderr, flush=True)  # noqa: E731

    base = causal_config(args.causal_steps)
    validate(base)
    tokenizer = load_tokenizer(base.data)
    corpus = load_corpus(base.data, tokenizer)
    say(f"1/4 causal AR model, {args.causal_steps} steps -> {root / 'causal'}")
    causal = train(base, root / "causal", corpus=corpus, progress=False)

    hf_dir = root / "causal_hf"
    if not hf_dir.exists():
        say(f"2/4 export to HF format -> {hf_dir}")
        export_hf(root / "causal", hf_dir)
    a3_dir = root / "a3"
    adapt = apply_adaptation(tiny.get_config(), args.adapt_steps, args.lr)
    adapt.train.eval_every = adapt.train.checkpoint_every = max(args.adapt_steps // 5, 1)
    if not a3_dir.exists():
        say(f"3/4 convert back as a3 -> {a3_dir}")
        convert_hf(hf_dir, a3_dir, variant="a3", config=adapt)
    config = load_config(a3_dir / "experiment.py")
    say("4/4 progressive adaptation: " + config.orders.curriculum)
    before = train(config, a3_dir, corpus=corpus, stop_after=0, progress=False)["eval"]
    after = train(config, a3_dir, corpus=corpus, progress=False)["eval"]

    results = {
        "causal_ar_nll": causal["eval"]["ar/nll"],
        "a3_before": {k: v for k, v in before.items() if k.endswith("/nll")},
        "a3_after": {k: v for k, v in after.items() if k.endswith("/nll")},
        "causal_steps": args.causal_steps, "adapt_steps": args.adapt_steps, "adapt_lr": args.lr,
        "curriculum": config.orders.curriculum, "seconds": round(time.perf_counter() - started, 1),
    }
    (root / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nheld-out NLL per token (nats), stdlib corpus, byte tokenizer; {results['seconds']:.0f} s")
    print(f"  causal AR model ({args.causal_steps} steps), order ar: {results['causal_ar_nll']:.4f}")
    print(f"  {'order':<12}{'a3 converted':>14}{'after adaptation':>18}")
    for key in results["a3_after"]:
        print(f"  {key[:-4]:<12}{results['a3_before'].get(key, float('nan')):>14.4f}"
              f"{results['a3_after'][key]:>18.4f}")
    print(f"results: {root / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
