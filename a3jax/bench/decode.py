"""`a3jax bench decode`: infill a gap of a long row with the exact KV cache and with `recompute`
(the official code's semantics: full forward each step), measured side by side in one run.

Default (the issue's setting): rows of 1,024 tokens, a 256-position gap in the middle, 64 steps of
4 positions (plan blocks(4)), batch 8, the tiny config's shape with random weights (speed does not
depend on the weights). Reports median wall time, generated tokens/s, and model FLOPs per generated
token by the counting of docs/flops.md (matmuls only; attention counts the keys a row may see).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from a3jax.bench.timing import median_ms
from a3jax.configs import load_config, model_config
from a3jax.decode import SampleConfig, generate, parse_plan
from a3jax.decode.ngram import ngram_drafter
from a3jax.errors import UserError
from a3jax.flops import layer_terms


def decode_flops(cfg, mode: str, known: int, groups: list[int]) -> float:
    """Model FLOPs of decoding one row: `known` given tokens (BOS included), then groups of the
    given sizes committed one per step (each step predicts its group)."""
    stream, kv, _, logits = layer_terms(cfg, 0)
    attn_per_key = 2 * 2 * cfg.n_heads * cfg.head_dim
    layers = cfg.n_layers
    total, committed, previous = 0.0, known, known
    unknown = sum(groups)
    for size in groups:
        if mode == "cached":  # content rows of the last group (prefill: the context) + this group's queries
            rows = previous + size
            keys = committed
            total += layers * (rows * stream + previous * kv + rows * attn_per_key * keys)
        else:  # every row, both streams (the last layer's content skipped), known = one context group
            n = committed + unknown
            total += (2 * layers - 1) * n * stream + layers * n * kv
            content_keys = committed * committed + unknown * (committed + unknown)
            total += attn_per_key * ((layers - 1) * content_keys + layers * unknown * committed)
        total += size * logits
        previous = size
        committed += size
        unknown -= size
    return total


def measure(cfg_config, mode: str, args) -> dict:
    from a3jax.model.params import init_model

    cfg = model_config(cfg_config)
    model_def, params = init_model(cfg, 0)
    rng = np.random.default_rng(0)
    length = args.row_len
    start = (length - args.gap) // 2
    docs = [rng.integers(0, min(cfg.vocab_size, 256), length).astype(np.int32) for _ in range(args.batch)]
    known = [np.ones(length, bool) for _ in range(args.batch)]
    for mask in known:
        mask[start:start + args.gap] = False
    sampling = SampleConfig(plan=args.plan, temperature=1.0, seed=0, mode=mode, stop_at_eos=False)
    special = cfg.vocab_size - 1
    run = lambda: generate(model_def, params, docs, known, bos_id=special, pad_id=special,  # noqa: E731
                           sampling=sampling).tokens
    ms = median_ms(run, repeats=args.repeats, warmup=1)
    plan = parse_plan(args.plan)
    size = plan.k if not plan.dynamic else max(plan.commits(args.gap))
    groups = [min(size, args.gap - i) for i in range(0, args.gap, size)]
    flops = decode_flops(cfg, mode, length - args.gap + 1, groups) / args.gap
    generated = args.batch * args.gap
    return {"mode": mode, "ms": ms, "tokens_per_s": generated / (ms / 1e3), "flops_per_token": flops,
            "steps": len(groups)}


def _documents(args, cfg, tokenizer=None, corpus=None):
    """[batch] rows of row_len tokens with a gap of `gap` in the middle (an infill) or at the end
    (--gap-at end: a plain continuation): random tokens, or windows of held-out text of a trained
    model's corpus."""
    rng = np.random.default_rng(args.seed)
    length = args.row_len
    start = length - args.gap if getattr(args, "gap_at", "middle") == "end" else (length - args.gap) // 2
    if corpus is None:
        docs = [rng.integers(0, min(cfg.vocab_size, 256), length).astype(np.int32) for _ in range(args.batch)]
    else:
        special = [tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id]
        text = np.concatenate([d[~np.isin(d, special)] for d in corpus.eval_docs])
        offsets = rng.integers(0, max(text.size - length, 1), args.batch)
        docs = [text[o:o + length].astype(np.int32) for o in offsets]
    known = [np.ones(d.size, bool) for d in docs]
    for mask in known:
        mask[start:start + args.gap] = False
    return docs, known


def speculative_rows(model_def, params, cfg, docs, known, args, special, drafter=None) -> list[dict]:
    """Model calls per generated token, acceptance by draft position and wall time of the
    speculative plans, beside ar and blocks(k) (cached mode, same documents, same temperature);
    with a drafter (a trained model's corpus), the n-gram drafts too. The plans are timed
    interleaved (every plan once per repeat, after one warm-up run each), so that a noisy
    machine moves every plan's median alike."""
    k = args.speculative
    if args.plans:
        plans = ["ar"] + [p.strip() for p in args.plans.split(";") if p.strip() and p.strip() != "ar"]
    else:
        chained = [f"speculative({k}, draft=model, chain)"] if cfg.shifted_query else []  # needs the shifted stream
        plans = ["ar", f"blocks({k})", f"speculative({k}, draft=model)", *chained,
                 f"speculative({k}, draft=copy)", f"speculative({k})", f"speculative({2 * k}, adaptive)"]
        if drafter is not None:
            plans += [f"speculative({k}, draft=ngram)"]
    for plan in plans:
        parse_plan(plan)  # a bad plan fails before any compile
        if "ngram" in plan and drafter is None:
            raise UserError(f"plan {plan!r} drafts from a training corpus: give --workdir (a trained model)")
    plans = list(dict.fromkeys(plans))
    import jax

    def run(plan):
        sampling = SampleConfig(plan=plan, temperature=args.temperature, seed=args.seed, stop_at_eos=False)
        result = generate(model_def, params, docs, known, bos_id=special, pad_id=special, sampling=sampling,
                          drafter=drafter)
        jax.block_until_ready(result.tokens)
        return result

    results = {plan: run(plan) for plan in plans}  # warm-up: compiles
    times = {plan: [] for plan in plans}
    for _ in range(args.repeats):
        for plan in plans:
            started = time.perf_counter()
            run(plan)
            times[plan].append((time.perf_counter() - started) * 1e3)
    generated = sum(int((~m).sum()) for m in known)
    rows = []
    for plan in plans:
        result = results[plan]
        stats = result.stats or {}
        calls = stats.get("calls", result.n_steps)
        # per row: the calls a row took part in (rows of a batch finish at different calls)
        row_calls = int(stats["row_calls"].sum()) if "row_calls" in stats else calls * len(docs)
        offered = stats.get("offered")
        sources = {name: v["accepted"] / v["offered"] for name, v in stats.get("by_source", {}).items()
                   if v["offered"]}
        if stats.get("fallback", {}).get("offered"):  # first drafts from a rejection's fallback row
            sources["fallback"] = stats["fallback"]["accepted"] / stats["fallback"]["offered"]
        passes = stats.get("passes", calls)  # sequential passes through the layer stack (a chained round: k)
        # per row: a call of a chained round is several passes; what a GPU pays at small batch
        row_passes = row_calls * passes / max(calls, 1)
        rows.append({"plan": plan, "ms": statistics.median(times[plan]), "calls": calls,
                     "calls_per_token": row_calls / generated, "passes": passes,
                     "passes_per_token": row_passes / generated, "tokens": generated,
                     "acceptance": None if offered is None else
                     [a / o if o else float("nan") for a, o in zip(stats["accepted"], offered)],
                     "sources": sources})
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="tiny", help="model shape (weights random): preset or config file")
    parser.add_argument("--row-len", type=int, default=1024, help="tokens per row (BOS not counted)")
    parser.add_argument("--gap", type=int, default=256, help="positions to infill per row")
    parser.add_argument("--gap-at", choices=["middle", "end"], default="middle",
                        help="--speculative: the gap in the middle of each row (an infill) or at its end (a plain "
                             "continuation)")
    parser.add_argument("--plan", default="blocks(4)", help="decoding plan (default: 4 positions per step)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default="",
                        help="a trained model's workdir: decode its held-out text (default: random weights)")
    parser.add_argument("--speculative", type=int, default=0,
                        help="k: also compare speculative(k) with ar and blocks(k) (calls per token, acceptance)")
    parser.add_argument("--temperature", type=float, default=1.0, help="for the speculative comparison")
    parser.add_argument("--seed", type=int, default=0,
                        help="which held-out windows (and, --speculative, the sampling seed)")
    parser.add_argument("--plans", default="", metavar="'P1; P2'",
                        help="--speculative: the plans to compare with ar, separated by ';' (default: blocks(k) "
                             "and the speculative plans)")
    parser.add_argument("--json", default="", metavar="FILE",
                        help="--speculative: also write every row (plan, ms, calls, passes, tokens, acceptance) "
                             "as JSON")


def main(args, overrides=()) -> int:
    import jax

    if not 0 < args.gap < args.row_len:
        raise UserError(f"--gap={args.gap} must be between 1 and --row-len={args.row_len} - 1")
    if args.speculative:
        return main_speculative(args, overrides)
    config = load_config(args.config, list(overrides))
    rows = [measure(config, mode, args) for mode in ("cached", "recompute")]
    cfg = model_config(config)
    print(f"decode on {jax.devices()[0].device_kind} (jax {jax.__version__}): d_model={cfg.d_model} "
          f"layers={cfg.n_layers} {cfg.dtype}; batch {args.batch} x {args.row_len} tokens, infill {args.gap} "
          f"positions with plan {args.plan} ({rows[0]['steps']} steps); median of {args.repeats}")
    print(f"{'mode':<11}{'ms':>10}{'tokens/s':>12}{'MFLOP/token':>14}")
    for r in rows:
        print(f"{r['mode']:<11}{r['ms']:>10.1f}{r['tokens_per_s']:>12,.0f}{r['flops_per_token'] / 1e6:>14.1f}")
    print(f"cached is {rows[1]['ms'] / rows[0]['ms']:.1f}x faster than recompute "
          f"({rows[1]['flops_per_token'] / rows[0]['flops_per_token']:.1f}x fewer model FLOPs per token)")
    return 0


def main_speculative(args, overrides=()) -> int:
    import jax

    from a3jax.data import load_corpus
    from a3jax.inference import load_model
    from a3jax.model.params import init_model

    drafter = None
    if args.workdir:
        if overrides:
            raise UserError("--workdir decodes a trained model: --config overrides do not apply")
        loaded = load_model(args.workdir)
        model_def, params, cfg = loaded.model_def, loaded.params, loaded.cfg
        corpus = load_corpus(loaded.experiment.data, loaded.tokenizer)
        docs, known = _documents(args, cfg, loaded.tokenizer, corpus)
        special, what = loaded.tokenizer.pad_id, f"the trained model of {args.workdir} on held-out text"
        drafter = ngram_drafter(corpus, loaded.tokenizer, cfg.vocab_size)
    else:
        cfg = model_config(load_config(args.config, list(overrides)))
        model_def, params = init_model(cfg, 0)
        docs, known = _documents(args, cfg)
        special, what = cfg.vocab_size - 1, f"random weights ({args.config} shape) on random tokens"
    rows = speculative_rows(model_def, params, cfg, docs, known, args, special, drafter)
    print(f"decode on {jax.devices()[0].device_kind} (jax {jax.__version__}): {what}; d_model={cfg.d_model} "
          f"layers={cfg.n_layers}; batch {args.batch} x {args.row_len} tokens, "
          f"{'continue with' if args.gap_at == 'end' else 'infill'} {args.gap} positions, "
          f"temperature {args.temperature}; median of {args.repeats}, the plans interleaved")
    print("passes: full-model passes per generated token of a row (a chained round of k drafts is one call of "
          "k passes); 'x fewer' is ar's count over the plan's")
    print(f"{'plan':<44}{'ms':>9}{'x ar ms':>8}{'calls/token':>12}{'x fewer':>8}{'passes/token':>13}{'x fewer':>8}  "
          "acceptance by source; by draft position")
    ar_calls, ar_passes, ar_ms = rows[0]["calls_per_token"], rows[0]["passes_per_token"], rows[0]["ms"]
    for r in rows:
        acceptance = "" if r["acceptance"] is None else " ".join(f"{a:.2f}" for a in r["acceptance"])
        sources = " ".join(f"{name} {rate:.2f}" for name, rate in (r.get("sources") or {}).items())
        print(f"{r['plan']:<44}{r['ms']:>9.1f}{r['ms'] / ar_ms:>8.2f}{r['calls_per_token']:>12.3f}"
              f"{ar_calls / r['calls_per_token']:>8.2f}{r['passes_per_token']:>13.3f}"
              f"{ar_passes / r['passes_per_token']:>8.2f}  {sources}{'; ' if sources else ''}{acceptance}")
    if args.json:
        import json
        import pathlib

        record = {"setting": {"what": what, "batch": args.batch, "row_len": args.row_len, "gap": args.gap,
                              "gap_at": args.gap_at,
                              "temperature": args.temperature, "repeats": args.repeats, "seed": args.seed,
                              "device": jax.devices()[0].device_kind, "jax": jax.__version__},
                  "rows": rows}
        pathlib.Path(args.json).write_text(json.dumps(record, indent=2, default=float) + "\n")
    return 0

