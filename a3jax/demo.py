"""`a3jax demo` (what `make demo` runs): the paper's recipe on a laptop CPU, then an ending a person
can read.

  1. pretrain a causal LLaMA on the embedded stdlib corpus, left to right (WORKDIR/pretrain);
  2. convert it to A3 in-process (every weight copied, plus the query vector, as `a3jax convert`
     does) with the shifted query stream (under `ar` the converted model IS the causal model) and
     adapt it to any order on half `ar`, half `random(4)` groups (WORKDIR/a3; the recipe the study
     in docs/ablation/shift chose over the paper's query vector and five stages);
  3. fill masked spans of held-out code: an identifier, a return expression, an argument list and a
     docstring line, each under the orders `ar`, `blocks(4)` and a dynamic plan, with the time
     each took; the exact log-likelihood of one snippet under two orders; and greedy infilling
     token accuracy and exact match over 64 held-out spans.

Both stages resume: running the demo again continues where it stopped. `--config.KEY=VALUE`
overrides apply to both stages.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time

import numpy as np

from a3jax.demo_output import Clock, minutes, snippet_line
from a3jax.errors import UserError

SHOWCASE_PLANS = ("ar", "blocks(4)", "confidence(2)")
SPANS_PER_KIND = 16
# For the time-left estimates, in units of the causal step this machine just took (2 cores,
# 2026-12-07: 64 ms causal, 97 ms A3, the ending ~22 s of compiling and decoding).
A3_STEP_COST = 1.5
ENDING_COST = 350


def add_arguments(parser) -> None:
    parser.add_argument("--config", default="demo",
                        help="a preset or file with pretrain_config() and get_config() (default: demo)")
    parser.add_argument("--workdir", default=None,
                        help="pretrain/ and a3/ (checkpoints, metrics.jsonl, tensorboard/) go here; "
                             "an existing one resumes (default runs/demo; with --model: runs/MODEL)")
    parser.add_argument("--model", default=None, choices=("smollm2",),
                        help="instead of training the tiny model: a real pretrained LLaMA, fetched, converted, "
                             "checked against transformers and shown (a3jax/demo_pretrained.py)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--seed", type=int, default=0, help="picks the held-out spans")


def _step_seconds(summary: dict, exp) -> float | None:
    """Seconds per step of the stage just trained (None when it only resumed a finished run)."""
    rate = summary.get("tokens_per_s")
    return exp.train.batch_size * exp.data.seq_len / rate if rate else None


def showcase(parts, spans, plans=SHOWCASE_PLANS) -> None:
    """One span of each kind filled under each plan (warm timings: each plan runs once first)."""
    from a3jax.eval import tasks

    chosen = list({s.kind: s for s in reversed(spans)}.values())[::-1]  # the first span of each kind
    windows = [(s.window, s.start, s.stop) for s in chosen]
    tokenizer = parts.tokenizer
    fills = {}
    for plan in plans:
        tasks.fill_windows(parts, windows, plan=plan)  # compile
        started = time.perf_counter()
        fills[plan] = tasks.fill_windows(parts, windows, plan=plan)["predictions"]
        fills[plan + " ms"] = (time.perf_counter() - started) * 1e3 / len(windows)
    print("\n==== held-out code, one masked span each, filled greedily under three orders ====")
    for i, span in enumerate(chosen):
        truth = tokenizer.decode(span.window[span.start:span.stop])
        print(f"\n-- {span.kind}: {snippet_line(tokenizer, span.window, span.start, span.stop)}")
        print(f"   {'original':<14} {truth!r}")
        for plan in plans:
            print(f"   {plan:<14} {fills[plan][i]!r}")
    print("\n   time per snippet (warm): " + ", ".join(f"{p} {fills[p + ' ms']:.0f} ms" for p in plans))


def likelihoods(parts, span, seed: int) -> None:
    """The exact log-likelihood of one window under two orders (one forward pass each)."""
    from a3jax import orders
    from a3jax.eval.score import score_documents

    tokenizer, window = parts.tokenizer, span.window
    n_bytes = len(tokenizer.decode(window).encode("utf-8"))
    print(f"\n==== exact log-likelihood of one held-out snippet ({n_bytes} bytes, {window.size} tokens) ====")
    for spec in ("ar", "random(4)"):
        groups = orders.parse_sampler(spec)(window.size, orders.example_rng(seed, 0, 0))
        scores = score_documents(parts.model_def, parts.params, [window], [groups], seq_len=parts.seq_len,
                                 bos_id=tokenizer.bos_id, pad_id=tokenizer.pad_id)
        log_p = float(scores.log_prob[0])
        print(f"   order {spec:<10} log P = {log_p:9.1f} nats = {-log_p / np.log(2) / n_bytes:.3f} bits/byte")


def _tokenizer_overrides(module, workdir: pathlib.Path, overrides, say) -> list[str]:
    """A preset with BPE_VOCAB > 0 trains on subword tokens: a byte-level BPE of that size is trained
    once on the training files (never the held-out ones) into WORKDIR/tokenizer.json and named
    in both stages' configs. A --config.data.tokenizer override keeps the tokenizer it names."""
    from a3jax.configs import override_key
    from a3jax.data.bpe import bpe_overrides, ensure_bpe

    vocab = int(getattr(module, "BPE_VOCAB", 0))
    if not vocab or any(override_key(o) == "data.tokenizer" for o in overrides):
        return []
    path = ensure_bpe(vocab, workdir / "tokenizer.json", module.pretrain_config(), overrides,
                      log=lambda message: say(f"0/3 {message}"))
    return bpe_overrides(vocab, path)


def _write_prompt(tokenizer, spans, path: pathlib.Path) -> pathlib.Path:
    """A held-out snippet (the first `return` span, else the first span) as an `a3jax sample`
    prompt: its window's text with the span replaced by [gap:N] (N tokens)."""
    span = next((s for s in spans if s.kind == "return"), spans[0])
    text = (tokenizer.decode(span.window[:span.start]) + f"[gap:{span.stop - span.start}]"
            + tokenizer.decode(span.window[span.stop:]))
    path.write_text(text, encoding="utf-8")
    return path


def _devices_per_core(*batch_sizes: int) -> int:
    """One XLA CPU device per core, as many as divide every batch (the demo's mesh splits its
    batches over them; on a GPU machine this leaves the GPU mesh alone). Before JAX starts its
    backend: the CLI has not started it yet."""
    from a3jax.xla_flags import apply_host_devices

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    count = max(n for n in range(1, cores + 1) if all(b % n == 0 for b in batch_sizes))
    apply_host_devices(count)
    return count


def main(args, overrides=()) -> int:
    if args.model:
        from a3jax.demo_pretrained import main as pretrained_main

        if overrides:
            raise UserError(f"a3jax demo --model takes no --config overrides (got {list(overrides)})")
        args.workdir = args.workdir or f"runs/{args.model}"
        return pretrained_main(args, args.model)
    args.workdir = args.workdir or "runs/demo"
    from a3jax.configs import apply_overrides, load_config_module, parse
    from a3jax.data import ByteTokenizer, load_corpus, load_tokenizer
    from a3jax.eval import tasks
    from a3jax.eval.spans import find_spans
    from a3jax.model.params import abstract_params
    from a3jax.train.loop import train

    clock = Clock()
    say = clock.say
    module = load_config_module(args.config)
    if not hasattr(module, "pretrain_config"):
        raise UserError(f"--config {args.config} has no pretrain_config(); the demo needs both stages "
                         "(see a3jax/configs/presets/demo.py)")
    workdir = pathlib.Path(args.workdir)
    overrides = [*overrides, *_tokenizer_overrides(module, workdir, overrides, say)]
    pretrain = parse(apply_overrides(module.pretrain_config(), overrides))
    # the adaptation starts from the pretrained causal model (train.init_from: converted in-process)
    start_from = f"train.init_from={(workdir / 'pretrain').absolute()}"
    adapt = parse(apply_overrides(module.get_config(), [*overrides, start_from]))
    devices = _devices_per_core(pretrain.train.batch_size, adapt.train.batch_size)
    tokenizer = load_tokenizer(adapt.data)
    corpus = load_corpus(adapt.data, tokenizer)
    unit = "bytes" if isinstance(tokenizer, ByteTokenizer) else "tokens"
    say(f"demo: {len(corpus.train_docs)} train / {len(corpus.eval_docs)} held-out files of the Python "
        f"standard library, {sum(d.size for d in corpus.train_docs):,} training {unit}; "
        f"{devices} CPU device{'s' if devices > 1 else ''} (one per core)")
    say(f"1/3 pretraining a causal LLaMA ({pretrain.model.n_layers} layers, d_model {pretrain.model.d_model}, "
        f"rows of {pretrain.data.seq_len} {unit}) for {pretrain.train.steps} steps -> {workdir / 'pretrain'}")
    stage_started = clock.elapsed()
    causal = train(pretrain, workdir / "pretrain", corpus=corpus, progress=not args.no_progress)
    causal_step = _step_seconds(causal, pretrain)
    if causal_step:
        left = causal_step * (adapt.train.steps * A3_STEP_COST + ENDING_COST)
        say(f"1/3 done in {minutes(clock.elapsed() - stage_started)} ({causal_step * 1e3:.0f} ms a step); "
            f"about {minutes(left)} left: {adapt.train.steps} adaptation steps, then the ending")
    a3_dir = workdir / "a3"
    say(f"2/3 adapting to any order for {adapt.train.steps} steps (converted to A3 with query input "
        f"{adapt.model.query_input}): {adapt.orders.curriculum} -> {a3_dir}")
    stage_started = clock.elapsed()
    summary = train(adapt, a3_dir, corpus=corpus, progress=not args.no_progress)
    a3_step = _step_seconds(summary, adapt)
    if a3_step:
        say(f"2/3 done in {minutes(clock.elapsed() - stage_started)} ({a3_step * 1e3:.0f} ms a step); "
            f"about {minutes(a3_step / A3_STEP_COST * ENDING_COST)} left: the ending")

    say("3/3 infilling held-out code (each plan compiles once, then decodes)")
    model_def, _ = abstract_params(adapt.model)
    parts = tasks.ModelParts(model_def, summary["params"], tokenizer, adapt.data.seq_len)
    spans = find_spans(corpus.eval_docs, tokenizer, adapt.data.seq_len, SPANS_PER_KIND, seed=args.seed)
    if spans:
        measured = tasks.infill_spans(parts, spans, plan="ar")
        showcase(parts, spans)
        likelihoods(parts, spans[0], args.seed)
        print(f"\n==== greedy infilling of {measured['spans']} held-out spans ({measured['tokens']} tokens), "
              "order ar ====")
        for kind, row in measured["by_kind"].items():
            print(f"   {kind:<11} token accuracy {row['token_acc']:6.1%}   exact match {row['exact_match']:6.1%}")
        print(f"   {'all':<11} token accuracy {measured['token_acc']:6.1%}   "
              f"exact match {measured['exact_match']:6.1%}")
    else:
        say(f"no span to infill: the {len(corpus.eval_docs)} held-out file(s) "
             f"({sum(d.size for d in corpus.eval_docs):,} {unit}) hold no assignment, return, def or docstring "
             f"line; a larger data.max_files (now {adapt.data.max_files}) gives more held-out files")
    print("\n==== held-out bits per byte (lower is better) ====")
    print(f"   causal model, order ar: {causal['eval']['ar/bits_per_byte']:.3f}")
    for name, value in summary["eval"].items():
        if name.endswith("bits_per_byte"):
            print(f"   A3 model, order {name.split('/')[0]}: {value:.3f}")
    if spans:
        prompt = _write_prompt(tokenizer, spans, workdir / "prompt.txt")
        print(f"\n(more: {prompt} holds a held-out snippet with its [gap:N]; sample it exactly in fewer calls with\n"
              f"  a3jax sample --workdir {a3_dir} --prompt-file {prompt} --plan speculative "
              "--temperature 0.8 --num-samples 3)")
    say(f"demo done in {clock.elapsed():.0f} s; workdir {workdir} "
         f"(pretrain/ and a3/: metrics.jsonl, tensorboard/, checkpoints/)")
    sys.stdout.flush()
    return 0
