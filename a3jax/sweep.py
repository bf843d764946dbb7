"""`a3jax sweep`: train a grid of config points one after another, each in its own workdir, then
evaluate each trained model the same way (held-out NLL under named orders, span infilling).

    a3jax sweep --config experiments/ablation_small.py --root runs/ablation_small [--only NAME,...]
    a3jax sweep --config experiments/ablation_small.py --root runs/ablation_small --print-commands

A sweep file is a config file (get_config() gives the base config) that also defines
  get_sweep() -> [{"name": "a3_direct-s0", "overrides": {"model.variant": "a3", "seed": 0, ...}}, ...]
      ordered points; dotted keys are applied like --config.KEY=VALUE (values may be strings or
      Python values); optional "group" names the point without its seed (default: the name
      without a trailing -sN / _seedN), which the report averages over.
  get_eval() -> {"orders": [...], "nll_rows": N, "nll_batch_size": B,
                 "infill": {"span": T, "num_examples": N, "seed": S, "temperature": 0.0,
                            "batch_size": B, "plans": ["ar", "blocks(4)", ...]}}   (optional)

Each point trains in ROOT/<name> (an unfinished one resumes; a finished one is not retrained),
then ROOT/<name>/eval_final.json gets the post-training metrics. A measurement a model cannot make
(a causal model under a random order, or decoding it by blocks) is recorded as null with the
reason. ROOT/sweep.json lists the points and their status. --print-commands prints, per point,
one `a3jax train ... && a3jax sweep ... --only NAME` line (train, then evaluate) for running the
points as separate jobs (launch/).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib.util
import json
import math
import os
import pathlib
import re
import shlex
import sys
import time
from typing import Sequence

POINT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
SEED_SUFFIX = re.compile(r"[-_](?:s|seed)\d+$")
EVAL_FILE = "eval_final.json"
SWEEP_FILE = "sweep.json"
# Variants whose likelihood under an order is defined; others (e.g. mdlm) report a bound instead.
ORDER_VARIANTS = {"a3": None, "causal": ("ar",)}  # None = every order
EVAL_KEYS = {"orders", "nll_rows", "nll_batch_size", "infill"}
INFILL_DEFAULTS = {"span": 32, "num_examples": 8, "seed": 0, "temperature": 0.0, "batch_size": 8,
                   "plans": ["ar"]}


def _log(message: str) -> None:
    print(f"[a3jax sweep] {message}", file=sys.stderr, flush=True)


# ---- the sweep file ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Point:
    name: str
    overrides: dict
    group: str

    def override_items(self) -> list[str]:
        """The overrides as 'KEY=TEXT' strings for configs.load_config."""
        return [f"{key}={value_text(value)}" for key, value in self.overrides.items()]


@dataclasses.dataclass
class Sweep:
    path: pathlib.Path
    points: list[Point]
    eval: dict  # as written in the file (None entries are filled per point from its config)


def value_text(value) -> str:
    """The --config.KEY=TEXT text of a value (configs.apply_override parses it back)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def group_of(name: str) -> str:
    """The point's name without a trailing seed suffix (-s0, _seed1)."""
    return SEED_SUFFIX.sub("", name) or name


def _load_module(path: pathlib.Path):
    from a3jax.configs import ConfigError

    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist; pass e.g. --config experiments/ablation_small.py")
    spec = importlib.util.spec_from_file_location(f"a3jax_sweep_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_sweep(path: str | pathlib.Path) -> Sweep:
    """Reads and checks a sweep file's get_sweep() (and get_eval() when defined)."""
    path = pathlib.Path(path)
    module = _load_module(path)
    for needed in ("get_config", "get_sweep"):
        if not hasattr(module, needed):
            raise ValueError(f"sweep file {path} defines no {needed}() function; a sweep file defines "
                             "get_config() (the base config) and get_sweep() (the points)")
    raw = module.get_sweep()
    if not isinstance(raw, (list, tuple)) or not raw:
        raise ValueError(f"{path}: get_sweep() must return a non-empty list of points")
    points, seen = [], set()
    for index, item in enumerate(raw):
        where = f"{path}: point {index}"
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ValueError(f"{where} must be a dict with a 'name' string and an 'overrides' dict")
        name = item["name"]
        if not POINT_NAME.match(name):
            raise ValueError(f"{where}: name {name!r} must be a folder name (letters, digits, _ . + -)")
        if name in seen:
            raise ValueError(f"{where}: the name {name!r} is used twice; point names must be unique")
        seen.add(name)
        overrides = item.get("overrides", {})
        if not isinstance(overrides, dict) or not all(isinstance(k, str) for k in overrides):
            raise ValueError(f"{where} ({name}): 'overrides' must be a dict of dotted keys, e.g. "
                             "{'model.variant': 'causal'}")
        unknown = set(item) - {"name", "overrides", "group"}
        if unknown:
            raise ValueError(f"{where} ({name}): unknown keys {sorted(unknown)}; a point has name, "
                             "overrides and optionally group")
        overrides = {k.removeprefix("--").removeprefix("config."): v for k, v in overrides.items()}
        points.append(Point(name, overrides, str(item.get("group") or group_of(name))))
    spec = module.get_eval() if hasattr(module, "get_eval") else {}
    return Sweep(path, points, _check_eval(spec, path))


def _check_eval(spec, path) -> dict:
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: get_eval() must return a dict")
    unknown = set(spec) - EVAL_KEYS
    if unknown:
        raise ValueError(f"{path}: get_eval() has unknown keys {sorted(unknown)}; valid: {sorted(EVAL_KEYS)}")
    infill = spec.get("infill", {})
    if infill is None:
        infill = {"plans": []}
    bad = set(infill) - set(INFILL_DEFAULTS)
    if bad:
        raise ValueError(f"{path}: get_eval()['infill'] has unknown keys {sorted(bad)}; valid: "
                         f"{sorted(INFILL_DEFAULTS)}")
    infill = {**INFILL_DEFAULTS, **infill}
    infill["plans"] = list(infill["plans"])
    from a3jax.decode.plans import parse_plan
    from a3jax.orders import parse_sampler

    for plan in infill["plans"]:
        parse_plan(plan)  # ValueError names it
    orders = spec.get("orders")
    if orders is not None:
        orders = [str(o).strip() for o in orders]
        for order in orders:
            parse_sampler(order)
    return {"orders": orders, "nll_rows": spec.get("nll_rows"), "nll_batch_size": spec.get("nll_batch_size", 8),
            "infill": infill}


def eval_settings(sweep_eval: dict, config) -> dict:
    """The sweep's eval settings with the config's defaults filled in (orders.eval, train.eval_rows)."""
    return {
        "orders": list(sweep_eval["orders"] if sweep_eval["orders"] is not None else config.orders.eval),
        "nll_rows": int(sweep_eval["nll_rows"] or config.train.eval_rows),
        "nll_batch_size": int(sweep_eval["nll_batch_size"]),
        "infill": dict(sweep_eval["infill"]),
    }


def select(points: Sequence[Point], only) -> list[Point]:
    """The points named by `only` (comma-separated names, groups or shell patterns; None = all)."""
    if not only:
        return list(points)
    wanted = [w.strip() for w in (only.split(",") if isinstance(only, str) else only) if w.strip()]
    chosen = []
    for pattern in wanted:
        hits = [p for p in points if fnmatch.fnmatchcase(p.name, pattern) or p.group == pattern]
        if not hits:
            raise ValueError(f"--only {pattern!r} matches no point; the points are "
                             f"{', '.join(p.name for p in points)}")
        chosen.extend(h for h in hits if h not in chosen)
    return [p for p in points if p in chosen]  # in sweep order


def _normal_overrides(overrides: Sequence[str]) -> list[str]:
    return [o.removeprefix("--").removeprefix("config.") for o in overrides]


def point_config(sweep: Sweep, point: Point, overrides: Sequence[str] = ()):
    """The point's validated config: the file's get_config(), the command line's overrides, then the
    point's own (the point wins: it defines the grid)."""
    from a3jax.configs import load_config

    try:
        return load_config(sweep.path, _normal_overrides(overrides) + point.override_items())
    except ValueError as error:
        raise ValueError(f"point {point.name}: {error}") from None


# ---- status on disk ------------------------------------------------------------------------------

def latest_checkpoint(workdir: pathlib.Path) -> int | None:
    """The highest complete checkpoint step (orbax renames a step's folder into place when done)."""
    folder = workdir / "checkpoints"
    if not folder.is_dir():
        return None
    steps = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(steps) if steps else None


def read_json(path: pathlib.Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _json_safe(value):
    """Non-finite floats as strings ('nan', 'inf'), as metrics.jsonl writes them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return _json_safe(value.item())
    return value


def write_json(path: pathlib.Path, data) -> None:
    """Atomic write (several jobs of one sweep may write sweep.json)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_json_safe(data), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def disk_status(workdir: pathlib.Path, steps: int, settings: dict) -> dict:
    """{"state": new | partial | trained | done, "step": latest checkpoint step}.

    done: the last checkpoint is at train.steps and eval_final.json was written for that step with
    the same eval settings; trained: the eval is missing or stale."""
    latest = latest_checkpoint(workdir)
    if latest is None:
        return {"state": "new", "step": 0}
    if latest < steps:
        return {"state": "partial", "step": latest}
    final = read_json(workdir / EVAL_FILE)
    if (isinstance(final, dict) and final.get("step") == latest
            and final.get("settings") == json.loads(json.dumps(settings))):
        return {"state": "done", "step": latest}
    return {"state": "trained", "step": latest}


# ---- post-training evaluation --------------------------------------------------------------------

def decoding_steps(plan: str, span: int) -> int:
    """Decoding calls a plan takes to fill `span` unknown tokens."""
    from a3jax.decode.plans import parse_plan

    parsed = parse_plan(plan)
    if parsed.k:
        return math.ceil(span / parsed.k)
    return min(parsed.steps, span)


def _final_bounds(workdir: pathlib.Path, step: int) -> dict:
    """The training loop's eval at `step` of quantities that are bounds (keys eval/NAME/..._bound),
    e.g. the masked-diffusion ELBO: {"mdlm": {"nll_bound": ..., "bits_per_byte_bound": ...}}."""
    from a3jax.train.metrics import read_metrics

    try:
        records = read_metrics(workdir)
    except (OSError, ValueError):
        return {}
    bounds = {}
    for record in records:
        if record.get("step") != step:
            continue
        for key, value in record.items():
            if key.startswith("eval/") and key.endswith("_bound"):
                name, _, metric = key[len("eval/"):].rpartition("/")
                bounds.setdefault(name or "model", {})[metric] = value
    for values in bounds.values():
        values["source"] = f"metrics.jsonl, the training loop's eval at step {step} (train.eval_rows rows)"
    return bounds


def _bounds(config, corpus, tokenizer, loaded, settings: dict, workdir: pathlib.Path) -> dict:
    """NLL upper bounds of a model without order likelihoods, under its config's own eval orders
    (mdlm: the ELBO), on the same held-out rows as the orders; else the training loop's last eval."""
    from a3jax.eval import tasks

    specs = [str(s) for s in config.orders.eval]
    try:
        out = tasks.nll_under_orders(config, corpus, tokenizer, loaded.model_def, loaded.params, specs,
                                     settings["nll_rows"], batch_size=settings["nll_batch_size"])
    except Exception as error:  # noqa: BLE001 - fall back to the logged eval
        if os.environ.get("A3JAX_DEBUG"):
            raise
        bounds = _final_bounds(workdir, int(loaded.step))
        for values in bounds.values():
            values["note"] = f"post-training bound failed ({_one_line(error)})"
        return bounds
    bounds = {}
    for key, value in out.items():
        spec, _, metric = key.partition("/")
        if spec in specs and metric and metric != "targets":
            bounds.setdefault(spec, {})[metric if metric.endswith("_bound") else f"{metric}_bound"] = value
    for values in bounds.values():
        values["rows"] = out["rows"]
        values["source"] = "post-training eval on the same held-out rows as the orders"
    return bounds


def _infill(parts, corpus, plan: str, mode: str, settings: dict) -> dict:
    from a3jax.eval import tasks

    kwargs = dict(span=int(settings["span"]), num_examples=int(settings["num_examples"]),
                  seed=int(settings["seed"]), plan=plan, temperature=float(settings["temperature"]),
                  batch_size=int(settings["batch_size"]))
    return tasks.infill(parts, corpus, mode=mode, **kwargs)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:400]}"


def evaluate_point(workdir: str | pathlib.Path, settings: dict, *, point: Point | None = None,
                   corpus=None) -> dict:
    """Post-training metrics of a workdir's latest checkpoint (the eval_final.json record)."""
    from a3jax.data import ByteTokenizer, load_corpus
    from a3jax.eval import tasks
    from a3jax.inference import load_model

    workdir = pathlib.Path(workdir)
    started = time.perf_counter()
    loaded = load_model(workdir)
    config, variant, tokenizer = loaded.config, loaded.cfg.variant, loaded.tokenizer
    if corpus is None:
        corpus = load_corpus(config.data, tokenizer)
    name = point.name if point else workdir.name
    record = {
        "point": name, "group": point.group if point else group_of(name), "workdir": str(workdir),
        "step": int(loaded.step), "steps": int(config.train.steps), "variant": variant,
        "curriculum": str(config.orders.curriculum), "seed": int(config.seed),
        "tokens_seen": int(loaded.step) * int(config.train.batch_size) * int(config.data.seq_len),
        "settings": settings, "nll": dict.fromkeys(settings["orders"]), "nll_bound": {}, "infill": [],
        "unavailable": {},
    }
    unit = "byte" if isinstance(tokenizer, ByteTokenizer) else "token"
    allowed = ORDER_VARIANTS.get(variant, ())
    usable = []
    for order in settings["orders"]:
        if allowed is None or order.replace(" ", "") in allowed:
            usable.append(order)
            continue
        record["nll"][order] = None
        record["unavailable"][f"nll/{order}"] = (
            "a causal model predicts the next token: its likelihood is defined only under the 'ar' order"
            if variant == "causal" else
            f"a model.variant={variant!r} model is not scored under generation orders here; its held-out "
            "NLL is reported as an upper bound (nll_bound)")
    if usable:
        try:
            out = tasks.nll_under_orders(config, corpus, tokenizer, loaded.model_def, loaded.params, usable,
                                         settings["nll_rows"], batch_size=settings["nll_batch_size"])
            for order in usable:
                record["nll"][order] = {"nll": out[f"{order}/nll"], "bits": out[f"{order}/bits_per_{unit}"],
                                        "unit": unit, "targets": out[f"{order}/targets"], "rows": out["rows"]}
        except Exception as error:  # noqa: BLE001 - recorded, the sweep goes on
            if os.environ.get("A3JAX_DEBUG"):
                raise
            for order in usable:
                record["nll"][order] = None
                record["unavailable"][f"nll/{order}"] = f"failed: {_one_line(error)}"
    if allowed == ():  # no order-specific likelihood (mdlm): its own eval orders give a bound
        record["nll_bound"] = _bounds(config, corpus, tokenizer, loaded, settings, workdir)
    infill = settings["infill"]
    mode = "cached" if variant in ORDER_VARIANTS else "recompute"
    parts = tasks.model_parts(loaded)
    for plan in infill["plans"]:
        entry = {"plan": plan, "steps": decoding_steps(plan, int(infill["span"])), "mode": mode}
        if variant == "causal" and plan.replace(" ", "") != "ar":
            record["unavailable"][f"infill/{plan}"] = "a causal model decodes left to right only (plan 'ar')"
            entry["metrics"] = None
        else:
            try:
                out = _infill(parts, corpus, plan, mode, infill)
                entry["metrics"] = {k: out[k] for k in ("exact_match", "rouge1", "rouge2", "rougeL", "token_acc",
                                                        "examples", "span_tokens")}
            except Exception as error:  # noqa: BLE001
                if os.environ.get("A3JAX_DEBUG"):
                    raise
                record["unavailable"][f"infill/{plan}"] = f"failed: {_one_line(error)}"
                entry["metrics"] = None
        record["infill"].append(entry)
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record


# ---- running -------------------------------------------------------------------------------------

def sweep_command(config_path, root, overrides=(), only=None) -> str:
    words = ["a3jax", "sweep", "--config", str(config_path), "--root", str(root)]
    if only:
        words += ["--only", only if isinstance(only, str) else ",".join(only)]
    return shlex.join(words + [f"--config.{o}" for o in _normal_overrides(overrides)])


def commands(config_path, root, *, overrides: Sequence[str] = (), only=None) -> list[str]:
    """Per point: `a3jax train ... && a3jax sweep ... --only NAME` (the second call finds the point
    trained and only evaluates it)."""
    sweep = load_sweep(config_path)
    lines = []
    for point in select(sweep.points, only):
        point_config(sweep, point, overrides)  # a bad point fails here, not in the job
        train = ["a3jax", "train", "--config", str(config_path), "--workdir", str(pathlib.Path(root) / point.name),
                 "--no-progress"] + [f"--config.{o}" for o in _normal_overrides(overrides) + point.override_items()]
        evaluate = sweep_command(config_path, root, overrides, point.name) + " --no-progress"
        lines.append(f"{shlex.join(train)} && {evaluate}")
    return lines


def _status_entry(sweep, point, root, overrides, previous: dict) -> dict:
    entry = {"name": point.name, "group": point.group, "overrides": point.overrides, "workdir": point.name}
    try:
        config = point_config(sweep, point, overrides)
    except ValueError as error:
        entry.update(status="invalid", error=str(error))
        return entry
    settings = eval_settings(sweep.eval, config)
    disk = disk_status(root / point.name, int(config.train.steps), settings)
    entry.update(status=disk["state"], step=disk["step"], steps=int(config.train.steps))
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
    data = {"config": str(sweep.path), "root": str(root), "overrides": _normal_overrides(overrides),
            "command": sweep_command(sweep.path, root, overrides), "eval": sweep.eval, "points": points,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(path, data)
    return data


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
    configs = {p.name: point_config(sweep, p, overrides) for p in chosen}  # fail fast, name the point
    owner = (read_json(root / SWEEP_FILE) or {}).get("config")
    if owner and pathlib.Path(owner).resolve() != sweep.path.resolve():
        raise ValueError(f"--root {root} holds the sweep of {owner} ({root / SWEEP_FILE}); use another --root "
                         f"for {sweep.path}")
    root.mkdir(parents=True, exist_ok=True)
    runtime: dict[str, dict] = {}
    write_sweep_file(sweep, root, overrides, runtime)
    corpora = {}

    def corpus_for(config):
        key = json.dumps(config.data.to_dict(), sort_keys=True, default=list)
        if key not in corpora:
            corpora[key] = load_corpus(config.data, load_tokenizer(config.data))
        return corpora[key]

    for index, point in enumerate(chosen, start=1):
        config = configs[point.name]
        workdir = root / point.name
        settings = eval_settings(sweep.eval, config)
        steps = int(config.train.steps)
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
                summary = train(config, workdir, corpus=corpus_for(config), progress=progress)
                if summary["stopped_by"]:
                    runtime[point.name] = {"status": "stopped",
                                           "error": f"stopped by {summary['stopped_by']} at step {summary['step']}"}
                    write_sweep_file(sweep, root, overrides, runtime)
                    _log(f"{label}: stopped by {summary['stopped_by']}; rerun the same command to resume")
                    return read_json(root / SWEEP_FILE)
            _log(f"{label}: evaluating ({len(settings['orders'])} orders, "
                 f"{len(settings['infill']['plans'])} infilling plans)")
            record = evaluate_point(workdir, settings, point=point, corpus=corpus_for(config))
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
            runtime[point.name] = {"status": "failed", "error": _one_line(error),
                                   "seconds": round(time.perf_counter() - started, 1)}
            _log(f"{label}: failed: {_one_line(error)}")
        write_sweep_file(sweep, root, overrides, runtime)
    return write_sweep_file(sweep, root, overrides, runtime)


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


def main(args, overrides: Sequence[str] = ()) -> int:
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
