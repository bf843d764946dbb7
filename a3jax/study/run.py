"""`a3jax sweep`: train a grid of config points one after another, each in its own workdir, then
evaluate each trained model the same way (held-out NLL under named orders, span infilling).

    a3jax sweep --config experiments/ablation_small.py --root runs/ablation_small [--only NAME,...]
    a3jax sweep --config experiments/ablation_small.py --root runs/ablation_small --print-commands

The sweep file (get_config, get_sweep, get_eval) is described in a3jax/study/spec.py.

Each point trains in ROOT/<name> (an unfinished one resumes; a finished one is not retrained),
then ROOT/<name>/eval_final.json gets the post-training metrics (a3jax/study/evaluate.py). A
measurement a model cannot make (a causal model under a random order, or decoding it by blocks) is
recorded as null with the reason. ROOT/sweep.json lists the points and their status.
--print-commands prints, per point, one `a3jax train ... && a3jax sweep ... --only NAME` line
(train, then evaluate) for running the points as separate jobs (launch/).
"""

from __future__ import annotations

import os
import pathlib
import shlex
import sys
import time
from collections.abc import Sequence

from a3jax.errors import UserError
from a3jax.study.disk import EVAL_FILE, SWEEP_FILE, disk_status, read_json, write_json
from a3jax.study.evaluate import evaluate_point, one_line
from a3jax.study.spec import eval_settings, load_sweep, normal_overrides, point_config, select


def _log(message: str) -> None:
    print(f"[a3jax sweep] {message}", file=sys.stderr, flush=True)


# ---- a sweep on subword tokens -------------------------------------------------------------------

def with_tokenizer(sweep, root, overrides: Sequence[str]) -> list[str]:
    """The command line's overrides, plus, for a sweep file with BPE_VOCAB = N (and no
    data.tokenizer override), the byte-level BPE of N tokens that every point trains on: trained
    once on the base config's training files into ROOT/tokenizer.json (a3jax/data/bpe.py)."""
    from a3jax.configs import load_config_module, override_key
    from a3jax.data.bpe import bpe_overrides, ensure_bpe

    overrides = normal_overrides(overrides)
    module = load_config_module(sweep.path)
    vocab = int(getattr(module, "BPE_VOCAB", 0))
    if not vocab or any(override_key(o) == "data.tokenizer" for o in overrides):
        return overrides
    path = ensure_bpe(vocab, pathlib.Path(root) / "tokenizer.json", module.get_config(), overrides, log=_log)
    return overrides + bpe_overrides(vocab, path)


# ---- commands for separate jobs ------------------------------------------------------------------

def sweep_command(config_path, root, overrides=(), only=None) -> str:
    """The `a3jax sweep` command line of this sweep (of the points `only`, when given)."""
    words = ["a3jax", "sweep", "--config", str(config_path), "--root", str(root)]
    if only:
        words += ["--only", only if isinstance(only, str) else ",".join(only)]
    return shlex.join(words + [f"--config.{o}" for o in normal_overrides(overrides)])


def commands(config_path, root, *, overrides: Sequence[str] = (), only=None) -> list[str]:
    """Per point: `a3jax train ... && a3jax sweep ... --only NAME` (the second call finds the point
    trained and only evaluates it)."""
    sweep = load_sweep(config_path)
    overrides = with_tokenizer(sweep, root, overrides)
    lines = []
    for point in select(sweep.points, only):
        point_config(sweep, point, overrides, root)  # a bad point fails here, not in the job
        items = [i.replace("{root}", str(pathlib.Path(root).absolute())) for i in point.override_items()]
        train = ["a3jax", "train", "--config", str(config_path), "--workdir", str(pathlib.Path(root) / point.name),
                 "--no-progress"] + [f"--config.{o}" for o in normal_overrides(overrides) + items]
        evaluate = sweep_command(config_path, root, overrides, point.name) + " --no-progress"
        lines.append(f"{shlex.join(train)} && {evaluate}")
    return lines


# ---- ROOT/sweep.json -----------------------------------------------------------------------------

def _status_entry(sweep, point, root, overrides, previous: dict) -> dict:
    entry = {"name": point.name, "group": point.group, "overrides": point.overrides, "workdir": point.name}
    try:
        exp = point_config(sweep, point, overrides, root)
    except ValueError as error:
        entry.update(status="invalid", error=str(error))
        return entry
    disk = disk_status(root / point.name, exp.train.steps, eval_settings(sweep.eval, exp))
    entry.update(status=disk["state"], step=disk["step"], steps=exp.train.steps)
    old = previous.get(point.name, {})
    if disk["state"] != "done" and old.get("status") in ("failed", "stopped"):
        entry.update(status=old["status"], error=old.get("error"))  # keep why it did not finish
    return entry


def write_sweep_file(sweep, root, overrides, runtime: dict) -> dict:
    """ROOT/sweep.json: every point of the file with its status on disk (and this run's outcomes)."""
    path = root / SWEEP_FILE
    previous = {p["name"]: p for p in (read_json(path) or {}).get("points", []) if isinstance(p, dict)}
    points = []
    for point in sweep.points:
        entry = _status_entry(sweep, point, root, overrides, previous)
        entry.update(runtime.get(point.name, {}))
        points.append(entry)
    data = {"config": str(sweep.path), "root": str(root), "overrides": normal_overrides(overrides),
            "command": sweep_command(sweep.path, root, overrides), "eval": sweep.eval, "points": points,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(path, data)
    return data


# ---- running -------------------------------------------------------------------------------------

def run_sweep(config_path, root, *, overrides: Sequence[str] = (), only=None, progress: bool = True) -> dict:
    """Runs the selected points in order (train or resume, then evaluate); returns sweep.json's data.

    Every selected point's config is checked before anything runs. A point that fails is recorded
    (status "failed" with the error) and the sweep goes on; SIGTERM/SIGINT during training stops
    the sweep after the point's checkpoint (status "stopped"; rerun to resume).
    """
    from a3jax.data import load_corpus, load_tokenizer
    from a3jax.train.loop import train

    sweep = load_sweep(config_path)
    root = pathlib.Path(root)
    chosen = select(sweep.points, only)
    overrides = with_tokenizer(sweep, root, overrides)
    experiments = {p.name: point_config(sweep, p, overrides, root) for p in chosen}  # fail fast, name the point
    owner = (read_json(root / SWEEP_FILE) or {}).get("config")
    if owner and pathlib.Path(owner).resolve() != sweep.path.resolve():
        raise UserError(f"--root {root} holds the sweep of {owner} ({root / SWEEP_FILE}); use another --root "
                         f"for {sweep.path}")
    root.mkdir(parents=True, exist_ok=True)
    runtime: dict[str, dict] = {}
    write_sweep_file(sweep, root, overrides, runtime)
    corpora = {}

    def corpus_for(exp):  # points with the same data section share one loaded corpus
        if exp.data not in corpora:
            corpora[exp.data] = load_corpus(exp.data, load_tokenizer(exp.data))
        return corpora[exp.data]

    for index, point in enumerate(chosen, start=1):
        exp = experiments[point.name]
        workdir = root / point.name
        settings = eval_settings(sweep.eval, exp)
        steps = exp.train.steps
        disk = disk_status(workdir, steps, settings)
        label = f"{index}/{len(chosen)} {point.name}"
        if disk["state"] == "done":
            _log(f"{label}: done (step {disk['step']} of {steps}, {EVAL_FILE} present); skipped")
            continue
        started = time.perf_counter()
        runtime[point.name] = {"status": "running"}
        write_sweep_file(sweep, root, overrides, runtime)
        try:
            if disk["state"] in ("new", "partial"):
                _log(f"{label}: training {'from step ' + str(disk['step']) if disk['step'] else 'from scratch'} "
                     f"to {steps} in {workdir}")
                summary = train(exp, workdir, corpus=corpus_for(exp), progress=progress)
                if summary["stopped_by"]:
                    runtime[point.name] = {"status": "stopped",
                                           "error": f"stopped by {summary['stopped_by']} at step {summary['step']}"}
                    write_sweep_file(sweep, root, overrides, runtime)
                    _log(f"{label}: stopped by {summary['stopped_by']}; rerun the same command to resume")
                    return read_json(root / SWEEP_FILE)
            _log(f"{label}: evaluating ({len(settings['orders'])} orders, "
                 f"{len(settings['infill']['plans'])} infilling plans)")
            record = evaluate_point(workdir, settings, point=point, corpus=corpus_for(exp))
            write_json(workdir / EVAL_FILE, record)
            for key, why in record["unavailable"].items():
                _log(f"{label}: {key} not measured: {why}")
            runtime[point.name] = {"status": "done", "seconds": round(time.perf_counter() - started, 1)}
            _log(f"{label}: done in {runtime[point.name]['seconds']:.0f} s")
        except KeyboardInterrupt:
            runtime[point.name] = {"status": "stopped", "error": "interrupted"}
            write_sweep_file(sweep, root, overrides, runtime)
            raise
        except Exception as error:  # noqa: BLE001 - recorded; the other points still run
            if os.environ.get("A3JAX_DEBUG"):
                raise
            runtime[point.name] = {"status": "failed", "error": one_line(error),
                                   "seconds": round(time.perf_counter() - started, 1)}
            _log(f"{label}: failed: {one_line(error)}")
        write_sweep_file(sweep, root, overrides, runtime)
    return write_sweep_file(sweep, root, overrides, runtime)


def evaluate_start(config_path, root, workdir, *, overrides: Sequence[str] = (), only=None) -> dict:
    """The sweep's post-training eval (get_eval) of another workdir, usually the one its points
    start from (train.init_from), on the held-out rows of the first selected point's data:
    WORKDIR/eval_final.json, a step-0 row beside the arms in `a3jax report`."""
    from a3jax.data import load_corpus, load_tokenizer

    sweep = load_sweep(config_path)
    chosen = select(sweep.points, only)
    overrides = with_tokenizer(sweep, pathlib.Path(root), overrides)
    exp = point_config(sweep, chosen[0], overrides, pathlib.Path(root))
    workdir = pathlib.Path(workdir)
    if not (workdir / "checkpoints").is_dir():
        raise UserError(f"--evaluate {workdir}: no checkpoints/ folder there (an a3jax workdir, e.g. from "
                        "a3jax convert, is expected)")
    settings = eval_settings(sweep.eval, exp)
    _log(f"evaluating {workdir} with the eval settings of {sweep.path} ({len(settings['orders'])} orders) "
         f"on the held-out rows of {chosen[0].name}")
    started = time.perf_counter()
    record = evaluate_point(workdir, settings, corpus=load_corpus(exp.data, load_tokenizer(exp.data)))
    write_json(workdir / EVAL_FILE, record)
    _log(f"{workdir / EVAL_FILE} written in {time.perf_counter() - started:.0f} s")
    return record


# ---- command line --------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="sweep file: get_config() + get_sweep() (+ get_eval())")
    parser.add_argument("--root", required=True, help="each point trains in ROOT/<name>; ROOT/sweep.json")
    parser.add_argument("--only", default=None,
                        help="comma-separated point names, groups (name without -sN) or patterns (a3_*)")
    parser.add_argument("--print-commands", action="store_true",
                        help="print one `a3jax train ... && a3jax sweep --only NAME` line per point "
                             "(to run points as separate jobs) instead of running")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--evaluate", metavar="WORKDIR", default=None,
                        help="instead of running the points, evaluate WORKDIR (say, the conversion the "
                             "points start from) with the sweep's eval settings on the first point's "
                             "held-out data: WORKDIR/eval_final.json, a step-0 row in `a3jax report`")


def main(args, overrides: Sequence[str] = ()) -> int:
    if args.evaluate:
        evaluate_start(args.config, args.root, args.evaluate, overrides=overrides, only=args.only)
        print(f"[a3jax] report it beside the sweep: a3jax report {args.evaluate} {args.root} --out "
              f"{pathlib.Path(args.root) / 'report'}", file=sys.stderr)
        return 0
    if args.print_commands:
        for line in commands(args.config, args.root, overrides=overrides, only=args.only):
            print(line)
        return 0
    data = run_sweep(args.config, args.root, overrides=overrides, only=args.only, progress=not args.no_progress)
    chosen = {p.name for p in select(load_sweep(args.config).points, args.only)}
    width = max(len(p["name"]) for p in data["points"])
    print(f"sweep {args.root} ({args.config}):")
    for entry in data["points"]:
        mark = "" if entry["name"] in chosen else "  (not selected)"
        where = f"step {entry.get('step', 0)} of {entry['steps']}" if "steps" in entry else ""
        error = f"  {entry['error']}" if entry.get("error") else ""
        print(f"  {entry['name']:<{width}}  {entry['status']:<8} {where}{mark}{error}")
    print(f"[a3jax] report: a3jax report {args.root} --out {pathlib.Path(args.root) / 'report'}", file=sys.stderr)
    # like `a3jax train`, a sweep stopped by SIGTERM/SIGINT exits 0 (rerun to resume)
    bad = [p for p in data["points"] if p["name"] in chosen and p["status"] not in ("done", "stopped")]
    return 1 if bad else 0
