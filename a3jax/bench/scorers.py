"""`a3jax bench scorers`: one checkpoint scored by `a3jax eval` and by lm-evaluation-harness's own
`--model hf` (transformers' LlamaForCausalLM on the same weights, exported with `a3jax export`),
side by side, offline, from local files:

    a3jax bench scorers --workdir runs/smollm2 --piqa ../shared/data/piqa/valid.jsonl \
        --lambada ../shared/data/lambada_test.txt [--text held_out.jsonl] [--limit N]

The harness reads the same items through task files written here (PIQA: a3jax's own items,
"Question: {goal}\\nAnswer:" then " {sol1}" or " {sol2}"; LAMBADA: the passage but its last
word, then " " + that word; held-out texts: loglikelihood_rolling), with BOS prepended as a3jax
always does (`add_bos_token=True`). The table gives each metric from both scorers and their
difference in points; a3jax's JSON records
and the harness's output folder are kept under --out.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

from a3jax.errors import UserError

PIQA_YAML = """task: piqa_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
"""
LAMBADA_YAML = """task: lambada_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{target}}}}"
target_delimiter: ""
metric_list:
  - metric: perplexity
  - metric: acc
"""
ROLLING_YAML = """task: heldout_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
  - metric: word_perplexity
"""


def add_arguments(parser) -> None:
    parser.add_argument("--workdir", required=True, help="an a3jax workdir (e.g. from a3jax convert --from-gguf)")
    parser.add_argument("--piqa", default=None, help="PIQA JSONL (goal/sol1/sol2) with <stem>-labels.lst beside it")
    parser.add_argument("--lambada", default=None, help="LAMBADA: one passage a line")
    parser.add_argument("--text", default=None,
                        help="texts for bits per byte: a text file, a JSONL of 'text', or 'heldout' (the "
                             "workdir's own held-out documents)")
    parser.add_argument("--limit", type=int, default=None, help="the first N items of each task")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=None, help="a3jax's row length (default: the workdir's)")
    parser.add_argument("--out", default=None, help="folder for the records (default WORKDIR/scorers)")
    parser.add_argument("--skip-harness", action="store_true", help="a3jax eval only")


def window_pieces(texts, tokenizer, max_tokens: int) -> list[str]:
    """The texts cut at line ends into pieces of at most `max_tokens` tokens (a longer line at token
    boundaries): each piece fits one row of both scorers, whose rolling windows over longer texts
    differ (the harness's hf model starts each window with one token of context, a3jax with all
    the text before it that fits), so both score exactly the same thing."""
    pieces = []
    for text in texts:
        current, size = "", 0
        for line in text.splitlines(keepends=True):
            ids = tokenizer.encode(line)
            if len(ids) > max_tokens:  # a very long line: token slices
                pieces.extend(p for p in [current] if p)
                current, size = "", 0
                pieces.extend(tokenizer.decode(ids[i:i + max_tokens]) for i in range(0, len(ids), max_tokens))
                continue
            if size + len(ids) > max_tokens and current:
                pieces.append(current)
                current, size = "", 0
            current, size = current + line, size + len(ids)
        if current.strip():
            pieces.append(current)
    return [p for p in pieces if p.strip()]


def write_tasks(folder: pathlib.Path, piqa, lambada, texts, limit) -> list[str]:
    """The harness's task files and their JSONL data in `folder`, from the same items a3jax reads."""
    from a3jax.eval import tasks as tasks_lib

    folder.mkdir(parents=True, exist_ok=True)
    names = []

    def write(name, yaml, rows):
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        (folder / f"{name}.yaml").write_text(yaml.format(data=data), encoding="utf-8")
        names.append(name)

    if piqa:
        # a3jax's items as they are ("Question: {goal}\nAnswer:", " {sol1}", " {sol2}")
        write("piqa_local", PIQA_YAML, tasks_lib.load_mc_jsonl(piqa)[:limit])
    if lambada:
        passages = tasks_lib.load_lambada(lambada)[:limit]
        pairs = [tasks_lib.split_last_word(p, n) for n, p in enumerate(passages)]
        write("lambada_local", LAMBADA_YAML, [{"context": c, "target": t} for c, t in pairs])
    if texts:
        write("heldout_local", ROLLING_YAML, [{"text": t} for t in texts])
    return names


def run_ours(args, loaded, texts, out: pathlib.Path) -> dict:
    from a3jax.eval import tasks as tasks_lib

    results, seconds = {}, {}
    jobs = []
    if args.piqa:
        jobs.append(("piqa", lambda: tasks_lib.multiple_choice(
            loaded, tasks_lib.load_mc_jsonl(args.piqa)[:args.limit], batch_size=args.batch_size, progress=True)))
    if args.lambada:
        jobs.append(("lambada", lambda: tasks_lib.lambada(
            loaded, tasks_lib.load_lambada(args.lambada)[:args.limit], batch_size=args.batch_size, progress=True)))
    if texts:
        jobs.append(("heldout", lambda: tasks_lib.rolling(loaded, texts, batch_size=args.batch_size, progress=True)))
    for name, job in jobs:
        started = time.perf_counter()
        results[name] = job()
        seconds[name] = time.perf_counter() - started
        print(f"[a3jax] a3jax eval {name}: {seconds[name]:.0f} s", file=sys.stderr, flush=True)
    (out / "a3jax.json").write_text(json.dumps({"metrics": results, "seconds": seconds}, indent=2) + "\n")
    return {"metrics": results, "seconds": seconds}


def run_harness(args, hf_dir: pathlib.Path, texts, out: pathlib.Path, max_length: int) -> dict:
    """The harness's own CLI in a subprocess, offline. Two runs: the loglikelihood tasks with
    add_bos_token=True (BOS first, as a3jax scores), the rolling task without it (the harness puts
    the model's BOS before every rolling window itself; add_bos_token would score a second BOS)."""
    names = write_tasks(out / "tasks", args.piqa, args.lambada, texts, args.limit)
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    runs = [(True, [n for n in names if n != "heldout_local"]), (False, [n for n in names if n == "heldout_local"])]
    results, started = {}, time.perf_counter()
    for add_bos, tasks in runs:
        if not tasks:
            continue
        folder = out / f"harness-{'bos' if add_bos else 'rolling'}"
        done = subprocess.run(
            [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
             f"pretrained={hf_dir},dtype=float32,add_bos_token={add_bos},max_length={max_length}",
             "--tasks", ",".join(tasks),
             "--include_path", str(out / "tasks"), "--batch_size", str(args.batch_size), "--device", "cpu",
             "--output_path", str(folder)], env=env, text=True, stderr=subprocess.PIPE)
        (out / f"{folder.name}.log").write_text(done.stderr or "")
        if done.returncode != 0:
            error = next((line for line in reversed(done.stderr.strip().splitlines()) if "Error" in line), "no output")
            raise UserError(f"lm-evaluation-harness failed: {error} (its log: {out / f'{folder.name}.log'})")
        (results_file,) = sorted(folder.rglob("results_*.json"))[-1:]
        results.update(json.loads(results_file.read_text())["results"])
    return {"metrics": results, "seconds": time.perf_counter() - started}


ROWS = [  # (label, a3jax task, a3jax key, harness task, harness key, scale to points)
    ("PIQA acc", "piqa", "acc", "piqa_local", "acc,none", 100),
    ("PIQA acc_norm", "piqa", "acc_norm", "piqa_local", "acc_norm,none", 100),
    ("LAMBADA acc", "lambada", "acc", "lambada_local", "acc,none", 100),
    ("LAMBADA perplexity", "lambada", "perplexity", "lambada_local", "perplexity,none", 1),
    ("held-out bits/byte", "heldout", "bits_per_byte", "heldout_local", "bits_per_byte,none", 1),
]


def main(args, overrides=()) -> int:
    from a3jax.inference import load_model

    if overrides:
        raise UserError(f"a3jax bench scorers takes no --config overrides (got {list(overrides)})")
    if not (args.piqa or args.lambada or args.text):
        raise UserError("nothing to score: pass --piqa, --lambada and/or --text")
    for path in (args.piqa, args.lambada, None if args.text == "heldout" else args.text):
        if path and not pathlib.Path(path).is_file():
            raise UserError(f"{path} does not exist")
    workdir = pathlib.Path(args.workdir)
    out = pathlib.Path(args.out) if args.out else workdir / "scorers"
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(workdir, None)
    step = loaded.step
    from a3jax.eval.tasks import load_lambada, model_parts

    parts = model_parts(loaded, args.seq_len)  # the harness's hf model gets its seq_len as max_length
    texts = None
    if args.text:  # pieces that fit one row of a3jax (BOS first) and of the exported HF model
        if args.text == "heldout":
            from a3jax.data import load_corpus

            raw = [loaded.tokenizer.decode(d) for d in load_corpus(loaded.experiment.data, loaded.tokenizer).eval_docs]
        else:
            raw = load_lambada(args.text)
        texts = window_pieces(raw[:args.limit], loaded.tokenizer, parts.seq_len - 2)
    loaded = parts
    ours = run_ours(args, loaded, texts, out)
    theirs = None
    if not args.skip_harness:
        hf_dir = out / "hf"
        if not (hf_dir / "config.json").is_file():
            from a3jax.convert.hf_export import export_hf

            export_hf(workdir, hf_dir)
        theirs = run_harness(args, hf_dir, texts, out, parts.seq_len)
    print(f"{workdir} (step {step}): a3jax eval vs lm-evaluation-harness "
          "--model hf (same weights, BOS first)")
    print("| metric | a3jax eval | harness hf | difference |\n|---|---|---|---|")
    for label, task, key, h_task, h_key, scale in ROWS:
        if task not in ours["metrics"]:
            continue
        a = ours["metrics"][task][key] * scale
        b = theirs["metrics"][h_task][h_key] * scale if theirs else None
        shown_b = f"{b:.3f}" if b is not None else "-"
        diff = f"{a - b:+.3f}" if b is not None else "-"
        print(f"| {label} | {a:.3f} | {shown_b} | {diff} |")
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in ours["seconds"].items())
    print(f"a3jax eval: {timing}" + (f"; harness: {theirs['seconds']:.0f} s in all" if theirs else ""))
    return 0
