"""The runs a report covers, read back from disk: a Run per workdir (its config.json, metrics.jsonl
and eval_final.json), what is missing, partial or non-finite in it, and its numbers by column.

A workdir's files are records of what happened, possibly cut by a crash or written by an older
a3jax: they are read as they are (a missing key shows as n/a, never as a config default), and every
defect becomes a line in Run.problems instead of an exception.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Sequence

from a3jax.study.disk import EVAL_FILE, SWEEP_FILE
from a3jax.study.spec import group_of

RUN_FILES = ("metrics.jsonl", "config.json", EVAL_FILE, "checkpoints")
INFILL_COLUMNS = ("exact_match", "rougeL", "token_acc")  # the report's infilling cells


def number(value):
    """A float for numbers and the 'nan'/'inf' strings metrics.jsonl writes; None otherwise."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def finite(value) -> bool:
    value = number(value)
    return value is not None and math.isfinite(value)


def dig(data, *keys, default=None):
    """data[k1][k2]... of nested JSON, or `default` where a level is missing or not a dict."""
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return default
        data = data[key]
    return data


@dataclasses.dataclass
class Run:
    label: str
    path: pathlib.Path
    group: str
    sweep_entry: dict | None = None
    config: dict | None = None  # config.json as written (the experiment's ConfigDict as JSON)
    metrics: list = dataclasses.field(default_factory=list)
    eval: dict | None = None
    problems: list = dataclasses.field(default_factory=list)

    # ---- derived fields (None where the files do not say) ----------------------------------------
    @property
    def steps(self) -> int | None:
        value = dig(self.config, "train", "steps")
        return int(value) if value is not None else dig(self.eval, "steps")

    @property
    def tokens_per_step(self) -> int | None:
        batch, seq = dig(self.config, "train", "batch_size"), dig(self.config, "data", "seq_len")
        return int(batch) * int(seq) if batch and seq else None

    @property
    def losses(self) -> list[tuple[int, object]]:
        return [(int(r["step"]), r["train/loss"]) for r in self.metrics if "train/loss" in r and "step" in r]

    @property
    def stage_ends(self) -> list[int]:
        """Steps at which a curriculum stage ended (the training loop's stage/ records)."""
        return sorted({int(r["step"]) for r in self.metrics if "stage/index" in r and "step" in r})

    @property
    def last_step(self) -> int:
        steps = [int(r["step"]) for r in self.metrics if "step" in r]
        return max(steps) if steps else 0

    @property
    def final_loss(self):
        losses = self.losses
        return losses[-1][1] if losses else None

    @property
    def tokens(self) -> int | None:
        if self.eval and isinstance(self.eval.get("tokens_seen"), int):
            return self.eval["tokens_seen"]
        per_step = self.tokens_per_step
        return self.last_step * per_step if per_step else None

    @property
    def variant(self) -> str:
        return str(dig(self.eval, "variant") or dig(self.config, "model", "variant") or "?")

    @property
    def curriculum(self) -> str:
        return str(dig(self.config, "orders", "curriculum") or dig(self.eval, "curriculum") or "?")

    @property
    def seed(self):
        value = dig(self.config, "seed")
        return value if value is not None else dig(self.eval, "seed")


# ---- reading a run -------------------------------------------------------------------------------

def _is_run(path: pathlib.Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in RUN_FILES)


def _read_json_file(path: pathlib.Path, run: Run, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        run.problems.append(f"{what} unreadable ({error.strerror or error})")
    except ValueError:
        run.problems.append(f"{what} is not valid JSON (cut by a crash?)")
    return None


def _read_metrics(run: Run) -> None:
    path = run.path / "metrics.jsonl"
    if not path.exists():
        run.problems.append("no metrics.jsonl")
        return
    bad = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(record, dict):
            run.metrics.append(record)
        else:
            bad += 1
    if bad:
        run.problems.append(f"{bad} unreadable line(s) in metrics.jsonl")
    if not run.metrics:
        run.problems.append("metrics.jsonl holds no records")


def _check_run(run: Run) -> None:
    """Reads the run's files; adds what is missing, partial or non-finite to run.problems."""
    config_path = run.path / "config.json"
    eval_path = run.path / EVAL_FILE
    if _untrained(run.path):  # a conversion evaluated as it is (a3jax sweep --evaluate): no training files
        run.eval = _read_json_file(eval_path, run, EVAL_FILE)
        return
    if config_path.exists():
        run.config = _read_json_file(config_path, run, "config.json")
    else:
        run.problems.append("no config.json")
    _read_metrics(run)
    steps, last = run.steps, run.last_step
    progress = (f"training stopped at step {last} of {steps}" if steps and last < steps
                else f"training at step {last}" + (f" of {steps}" if steps else ""))
    if steps and run.metrics and last < steps:
        run.problems.append(f"partial metrics: {progress}")
    if eval_path.exists():
        run.eval = _read_json_file(eval_path, run, EVAL_FILE)
        if run.eval is not None and not isinstance(run.eval, dict):
            run.problems.append(f"{EVAL_FILE} is not a JSON object")
            run.eval = None
        if run.eval and last and run.eval.get("step") not in (None, last):
            run.problems.append(f"{EVAL_FILE} is for step {run.eval.get('step')} but training reached step {last}")
    elif steps and last >= steps:
        run.problems.append(f"no {EVAL_FILE} (training finished at step {last} of {steps}; the post-training "
                            f"eval has not run: `a3jax sweep --only {run.path.name}` with the sweep's --config "
                            "and --root runs it)")
    else:
        run.problems.append(f"no {EVAL_FILE} ({progress})")
    status = dig(run.sweep_entry, "status")
    if status in ("failed", "invalid", "stopped"):
        run.problems.append(f"sweep status {status}: {run.sweep_entry.get('error', '')}".rstrip(": "))
    losses = run.losses
    bad = [step for step, value in losses if not finite(value)]
    if bad:
        run.problems.append(f"non-finite train/loss at {len(bad)} of {len(losses)} logged steps "
                            f"(first at step {bad[0]})")
    for key, value in _eval_numbers(run.eval).items():
        if not finite(value):
            run.problems.append(f"non-finite {key} = {value} in {EVAL_FILE}")


def _untrained(path: pathlib.Path) -> bool:
    """A workdir that was never trained here but evaluated at its step 0 (a conversion)."""
    if (path / "config.json").exists() or (path / "metrics.jsonl").exists() or not (path / EVAL_FILE).exists():
        return False
    try:
        record = json.loads((path / EVAL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and record.get("step") == 0


def _eval_numbers(record) -> dict:
    """Every metric of an eval_final.json record, keyed like 'nll/ar/nll'."""
    out = {}
    if not isinstance(record, dict):
        return out
    for order, values in (record.get("nll") or {}).items():
        for key in ("nll", "bits"):
            if isinstance(values, dict) and key in values:
                out[f"nll/{order}/{key}"] = values[key]
    for name, values in (record.get("nll_bound") or {}).items():
        for key, value in (values or {}).items():
            if key.endswith("_bound"):
                out[f"nll_bound/{name}/{key}"] = value
    for entry in record.get("infill") or []:
        for key, value in (entry.get("metrics") or {}).items():
            if key in ("exact_match", "rouge1", "rouge2", "rougeL", "token_acc"):
                out[f"infill/{entry.get('plan')}/{key}"] = value
    for key, value in (record.get("extra") or {}).items():
        out[f"extra/{key}"] = value
    return out


def collect(dirs: Sequence[str | pathlib.Path]) -> tuple[list[Run], list[str], list[dict]]:
    """(runs, problems not tied to a run, sweep.json records) of the given folders: each is a run
    (a workdir), a sweep root (its sweep.json lists the points, in order) or a folder of runs."""
    runs, problems, sweeps, seen = [], [], [], set()

    def add(path: pathlib.Path, label: str, entry: dict | None = None):
        key = path.resolve()
        if key in seen:
            return
        seen.add(key)
        group = str(dig(entry, "group") or group_of(path.name))
        runs.append(Run(label=label, path=path, group=group, sweep_entry=entry))

    for given in dirs:
        path = pathlib.Path(given)
        if not path.exists():
            problems.append(f"{given}: does not exist")
            continue
        sweep = None
        if (path / SWEEP_FILE).exists():
            try:
                sweep = json.loads((path / SWEEP_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                problems.append(f"{path / SWEEP_FILE}: unreadable; reporting the runs found in {given}")
        if isinstance(sweep, dict) and isinstance(sweep.get("points"), list):
            sweeps.append(sweep)
            for entry in sweep["points"]:
                run_path = path / str(entry.get("workdir") or entry.get("name"))
                if run_path.exists():
                    add(run_path, str(run_path), entry)
                else:
                    why = f"; {entry['error']}" if entry.get("error") else ""
                    problems.append(f"{run_path}: not started (sweep status {entry.get('status', '?')}{why})")
        elif _is_run(path):
            add(path, str(given))
        else:
            children = sorted(c for c in path.iterdir() if _is_run(c))
            if not children:
                problems.append(f"{given}: no run here (no metrics.jsonl, config.json or {EVAL_FILE} in it or "
                                "its subfolders)")
            for child in children:
                add(child, str(child))
    for run in runs:
        _check_run(run)
    return runs, problems, sweeps


# ---- columns and values --------------------------------------------------------------------------

def _first_seen(items) -> list:
    seen = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def columns(runs: Sequence[Run]) -> tuple[list[str], list[str], list[tuple[str, int | None]]]:
    """(orders, bound names, (plan, decoding steps)) measured by any of the runs, in first-seen order."""
    orders = _first_seen(order for run in runs for order in (dig(run.eval, "nll") or {}))
    bounds = _first_seen(name for run in runs for name in (dig(run.eval, "nll_bound") or {}))
    plans = _first_seen((entry.get("plan"), entry.get("steps")) for run in runs
                        for entry in (dig(run.eval, "infill") or []))
    return orders, bounds, plans


def extra_columns(runs: Sequence[Run]) -> list[str]:
    """The extra measurements (eval_final.json "extra": natural spans, speculative decoding) of
    any run, in first-seen order."""
    return _first_seen(key for run in runs for key in (dig(run.eval, "extra") or {}))


def _bound_value(run: Run, name: str, key: str):
    values = dig(run.eval, "nll_bound", name) or {}
    if key in values:
        return values[key]
    matches = [v for k, v in values.items() if k.startswith(key) and k.endswith("_bound")]
    return matches[0] if matches else None


def infill_entry(run: Run, plan: str):
    """The run's eval_final.json infilling entry of `plan` (None if it has none)."""
    for entry in (dig(run.eval, "infill") or []):
        if entry.get("plan") == plan:
            return entry
    return None


def run_values(run: Run, orders, bounds, plans) -> dict:
    """The run's numbers by column key (None = not measured)."""
    values = {"train_loss": run.final_loss, "tokens": run.tokens}
    for order in orders:
        entry = dig(run.eval, "nll", order)
        values[f"nll/{order}"] = entry.get("nll") if isinstance(entry, dict) else None
        values[f"bits/{order}"] = entry.get("bits") if isinstance(entry, dict) else None
    for name in bounds:
        values[f"bound/{name}"] = _bound_value(run, name, "nll_bound")
        values[f"bound_bits/{name}"] = _bound_value(run, name, "bits")
    for plan, _ in plans:
        metrics = (infill_entry(run, plan) or {}).get("metrics") or {}
        for key in INFILL_COLUMNS:
            values[f"infill/{plan}/{key}"] = metrics.get(key)
    for key in extra_columns([run]):
        values[f"extra/{key}"] = dig(run.eval, "extra", key)
    return values
