"""The paper's progressive adaptation (AR model -> A3) on the tiny shape, run end to end offline.

The config is the `adapt_tiny` preset (a3jax/configs/presets/adapt_tiny.py):
    a3jax convert --from-hf HF --out W --config experiments/adapt_tiny.py

As a script:  python experiments/adapt_tiny.py [--workdir runs/adapt_tiny]
  1. trains a tiny `causal` LLaMA on the stdlib corpus with a3jax,
  2. exports it to HF format (a3jax export), 3. converts it back as `a3` (a3jax convert),
  4. evaluates the converted model (NLL per token under ar and random orders), runs the five
  stages, evaluates again, and prints the numbers (also written to WORKDIR/results.json).
"""

import pathlib

from a3jax.configs.presets import tiny
from a3jax.configs.presets.adapt_tiny import apply_adaptation, causal_config, get_config  # noqa: F401


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
    parser.add_argument("--lr", type=float, default=3e-3, help="adaptation peak lr")
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
