"""`a3jax report`: collect training runs (metrics.jsonl, config.json, eval_final.json) into a Markdown
report with tables and PNG plots.

    a3jax report runs/ablation_small --out docs/ablation
    a3jax report runs/a runs/b runs/sweep_root ... --out OUT

Each DIR is a run (a workdir), a sweep root (its sweep.json lists the points, in order) or a folder
of runs. OUT gets report.md (one row per run, then the runs averaged over seeds: mean ± half the
range, n), report.json (the same numbers), loss_vs_tokens.png, nll_by_order.png and
infill_vs_steps.png. A run with missing, partial or non-finite metrics is named with what is wrong,
in the report and on stderr; the report is still written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
import time
from typing import Sequence

from a3jax.sweep import EVAL_FILE, SWEEP_FILE, group_of

PLOTS = ("loss_vs_tokens.png", "nll_by_order.png", "infill_vs_steps.png")
RUN_FILES = ("metrics.jsonl", "config.json", EVAL_FILE, "checkpoints")
WARN = "⚠"


def _log(message: str) -> None:
    print(f"[a3jax report] {message}", file=sys.stderr, flush=True)


def _number(value):
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


def _finite(value) -> bool:
    number = _number(value)
    return number is not None and math.isfinite(number)


def _dig(data, *keys, default=None):
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
    config: dict | None = None
    metrics: list = dataclasses.field(default_factory=list)
    eval: dict | None = None
    problems: list = dataclasses.field(default_factory=list)

    # ---- derived fields --------------------------------------------------------------------------
    @property
    def steps(self) -> int | None:
        value = _dig(self.config, "train", "steps")
        return int(value) if value is not None else _dig(self.eval, "steps")

    @property
    def tokens_per_step(self) -> int | None:
        batch, seq = _dig(self.config, "train", "batch_size"), _dig(self.config, "data", "seq_len")
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
        return str(_dig(self.eval, "variant") or _dig(self.config, "model", "variant") or "?")

    @property
    def curriculum(self) -> str:
        return str(_dig(self.config, "orders", "curriculum") or _dig(self.eval, "curriculum") or "?")

    @property
    def seed(self):
        value = _dig(self.config, "seed")
        return value if value is not None else _dig(self.eval, "seed")


# ---- collecting ----------------------------------------------------------------------------------

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
    """Adds what is missing, partial or non-finite to run.problems."""
    config_path = run.path / "config.json"
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
    eval_path = run.path / EVAL_FILE
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
    status = _dig(run.sweep_entry, "status")
    if status in ("failed", "invalid", "stopped"):
        run.problems.append(f"sweep status {status}: {run.sweep_entry.get('error', '')}".rstrip(": "))
    losses = run.losses
    bad = [step for step, value in losses if not _finite(value)]
    if bad:
        run.problems.append(f"non-finite train/loss at {len(bad)} of {len(losses)} logged steps "
                            f"(first at step {bad[0]})")
    for key, value in _eval_numbers(run.eval).items():
        if not _finite(value):
            run.problems.append(f"non-finite {key} = {value} in {EVAL_FILE}")


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
    return out


def collect(dirs: Sequence[str | pathlib.Path]) -> tuple[list[Run], list[str], list[dict]]:
    """(runs, problems not tied to a run, sweep.json records) of the given folders."""
    runs, problems, sweeps, seen = [], [], [], set()

    def add(path: pathlib.Path, label: str, entry: dict | None = None):
        key = path.resolve()
        if key in seen:
            return
        seen.add(key)
        group = str(_dig(entry, "group") or group_of(path.name))
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


# ---- tables --------------------------------------------------------------------------------------

def _orders(runs: Sequence[Run]) -> list[str]:
    seen = []
    for run in runs:
        for order in (_dig(run.eval, "nll") or {}):
            if order not in seen:
                seen.append(order)
    return seen


def _bounds(runs: Sequence[Run]) -> list[str]:
    seen = []
    for run in runs:
        for name in (_dig(run.eval, "nll_bound") or {}):
            if name not in seen:
                seen.append(name)
    return seen


def _plans(runs: Sequence[Run]) -> list[tuple[str, int | None]]:
    seen = []
    for run in runs:
        for entry in (_dig(run.eval, "infill") or []):
            key = (entry.get("plan"), entry.get("steps"))
            if key not in seen:
                seen.append(key)
    return seen


def _bound_value(run: Run, name: str, key: str):
    values = _dig(run.eval, "nll_bound", name) or {}
    if key in values:
        return values[key]
    matches = [v for k, v in values.items() if k.startswith(key) and k.endswith("_bound")]
    return matches[0] if matches else None


def _infill_entry(run: Run, plan: str):
    for entry in (_dig(run.eval, "infill") or []):
        if entry.get("plan") == plan:
            return entry
    return None


def run_values(run: Run, orders, bounds, plans) -> dict:
    """The run's numbers by column key (None = not measured)."""
    values = {"train_loss": run.final_loss, "tokens": run.tokens}
    for order in orders:
        entry = _dig(run.eval, "nll", order)
        values[f"nll/{order}"] = entry.get("nll") if isinstance(entry, dict) else None
        values[f"bits/{order}"] = entry.get("bits") if isinstance(entry, dict) else None
    for name in bounds:
        values[f"bound/{name}"] = _bound_value(run, name, "nll_bound")
        values[f"bound_bits/{name}"] = _bound_value(run, name, "bits")
    for plan, _ in plans:
        metrics = (_infill_entry(run, plan) or {}).get("metrics") or {}
        for key in ("exact_match", "rougeL", "token_acc"):
            values[f"infill/{plan}/{key}"] = metrics.get(key)
    return values


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    number = _number(value)
    if number is None:
        return str(value)
    if not math.isfinite(number):
        return f"{WARN} {value}"
    return f"{number:.{digits}f}"


def _cell_nll(nll, bits) -> str:
    if nll is None:
        return "n/a"
    return f"{_fmt(nll)} ({_fmt(bits)})"


def _reason_notes(runs: Sequence[Run]) -> list[str]:
    """'n/a' explanations, one per (variant, measurement, reason)."""
    notes, seen = [], set()
    for run in runs:
        for key, why in (_dig(run.eval, "unavailable") or {}).items():
            item = (run.variant, key, why)
            if item in seen:
                continue
            seen.add(item)
            notes.append(f"{run.variant} runs, {key}: {why}")
    return notes


def _aggregate(values: list) -> tuple[float, float, int] | None:
    finite = [float(v) for v in values if _finite(v)]
    if not finite:
        return None
    return sum(finite) / len(finite), (max(finite) - min(finite)) / 2, len(finite)


def _fmt_agg(agg, runs: int, digits: int = 3) -> str:
    """'mean ± half-range', with (n=k) when only k of the point's runs have a finite value."""
    if agg is None:
        return "n/a"
    mean, half, n = agg
    return f"{mean:.{digits}f} ± {half:.{digits}f}" + (f" (n={n})" if n != runs else "")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    clean = lambda text: str(text).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(clean(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(clean(c) for c in row) + " |" for row in rows]
    return lines


def _tokens(value) -> str:
    if value is None:
        return "n/a"
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value:,}"


# ---- plots ---------------------------------------------------------------------------------------

def _plt():
    try:
        import matplotlib
    except ImportError:
        raise ValueError("the report's plots need matplotlib: pip install 'a3jax[report]' "
                         "(or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(groups: Sequence[str]) -> dict:
    plt = _plt()
    cycle = plt.get_cmap("tab10")
    return {g: cycle(i % 10) for i, g in enumerate(groups)}


def _smooth(values: list[float], window: int) -> list[float]:
    out, total, queue = [], 0.0, []
    for value in values:
        queue.append(value)
        total += value
        if len(queue) > window:
            total -= queue.pop(0)
        out.append(total / len(queue))
    return out


def plot_loss(runs, groups, path: pathlib.Path) -> None:
    plt = _plt()
    colours = _colours(groups)
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = ["-", "--", ":", "-."]
    labelled = set()
    for run in runs:
        points = [(s, float(v)) for s, v in run.losses if _finite(v)]
        if not points:
            continue
        per_step = run.tokens_per_step or 1
        xs = [s * per_step for s, _ in points]
        ys = _smooth([v for _, v in points], max(1, len(points) // 40))
        seed_index = run.seed if isinstance(run.seed, int) else 0
        label = run.group if run.group not in labelled else None
        labelled.add(run.group)
        ax.plot(xs, ys, color=colours[run.group], linestyle=styles[seed_index % len(styles)], linewidth=1.4,
                label=label)
        for step in run.stage_ends[:-1]:  # curriculum stage boundaries (the last one is the end)
            ax.axvline(step * per_step, color=colours[run.group], linestyle=":", linewidth=0.8, alpha=0.5)
    ax.set_xlabel("training tokens seen" if any(r.tokens_per_step for r in runs) else "step")
    ax.set_ylabel("train loss (nats/token, moving average)")
    ax.set_title("Training loss vs tokens (each run under its own objective)\n"
                 "line style: seed; dotted verticals: curriculum stage boundaries", fontsize=10)
    ax.grid(alpha=0.3)
    if labelled:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_nll(runs, groups, orders, bounds, path: pathlib.Path) -> None:
    plt = _plt()
    colours = _colours(groups)
    categories = [(f"nll/{o}", o) for o in orders] + [(f"bound/{b}", f"{b}\n(upper bound)") for b in bounds]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(categories) * max(1, len(groups)) / 2), 5))
    width = 0.8 / max(1, len(groups))
    labelled = set()
    for g_index, group in enumerate(groups):
        members = [r for r in runs if r.group == group]
        for c_index, (key, _) in enumerate(categories):
            x = c_index + (g_index - (len(groups) - 1) / 2) * width
            values = [run_values(r, orders, bounds, [])[key] for r in members]
            finite = [float(v) for v in values if _finite(v)]
            if not finite:
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
                continue
            hatch = "//" if key.startswith("bound/") else None
            ax.bar(x, sum(finite) / len(finite), width * 0.9, color=colours[group], alpha=0.75, hatch=hatch,
                   label=None if group in labelled else group)
            labelled.add(group)
            ax.scatter([x] * len(finite), finite, color="black", s=12, zorder=3)
    if labelled:
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(categories)))
    ax.set_xticklabels([label for _, label in categories])
    ax.set_ylabel("held-out NLL (nats/token)")
    ax.set_title("Held-out NLL under each order (bar: mean over seeds, dots: seeds)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_infill(runs, groups, plans, path: pathlib.Path) -> None:
    plt = _plt()
    colours = _colours(groups)
    metrics = [("exact_match", "exact match"), ("rougeL", "ROUGE-L F1"), ("token_acc", "token accuracy")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(13, 4.2))
    for ax, (metric, title) in zip(axes, metrics):
        for group in groups:
            members = [r for r in runs if r.group == group]
            xs, means = [], []
            for plan, steps in sorted(plans, key=lambda p: p[1] or 0):
                values = [((_infill_entry(r, plan) or {}).get("metrics") or {}).get(metric) for r in members]
                finite = [float(v) for v in values if _finite(v)]
                if not finite or not steps:
                    continue
                xs.append(steps)
                means.append(sum(finite) / len(finite))
                ax.scatter([steps] * len(finite), finite, color=colours[group], s=12, alpha=0.6)
            if xs:
                ax.plot(xs, means, marker="o", color=colours[group], label=group)
        ax.set_xscale("log", base=2)
        ticks = sorted({s for _, s in plans if s})
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(s) for s in ticks])
        ax.minorticks_off()
        ax.set_xlabel("decoding steps for the span")
        ax.set_title(title)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    steps_labels = ", ".join(f"{p}: {s}" for p, s in plans)
    fig.suptitle(f"Span infilling vs number of decoding steps ({steps_labels}); line: mean over seeds")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        more_h, more_l = ax.get_legend_handles_labels()
        handles += more_h
        labels += more_l
    unique = dict(zip(labels, handles))
    if unique:
        axes[-1].legend(unique.values(), unique.keys(), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- the report ----------------------------------------------------------------------------------

def build_report(dirs: Sequence[str | pathlib.Path], out_dir: str | pathlib.Path) -> dict:
    """Writes out_dir/report.md, report.json and the PNG plots; returns {"runs": [...], "problems":
    [...], "files": [...]} (every problem is also printed to stderr)."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs, problems, sweeps = collect(dirs)
    for run in runs:
        problems.extend(f"{run.label}: {p}" for p in run.problems)
    for problem in problems:
        _log(problem)
    groups = []
    for run in runs:
        if run.group not in groups:
            groups.append(run.group)
    orders, bounds, plans = _orders(runs), _bounds(runs), _plans(runs)
    table_runs = [r for r in runs if r.metrics or r.eval]
    values = {r.label: run_values(r, orders, bounds, plans) for r in table_runs}

    lines = ["# Ablation report", "", f"Generated {time.strftime('%Y-%m-%d %H:%M')} by "
             f"`a3jax report {' '.join(str(d) for d in dirs)} --out {out_dir}`.", ""]
    for sweep in sweeps:
        seeds = sorted({str(_dig(p, "overrides", "seed")) for p in sweep["points"]
                        if _dig(p, "overrides", "seed") is not None})
        lines.append(f"Sweep: `{sweep.get('command', '')}`" + (f" (seeds {', '.join(seeds)})" if seeds else ""))
        lines.append("")
    lines += ["## Runs", "",
              "Held-out NLL in nats per token (bits per byte in brackets) under each order; "
              "infilling cells are exact match / ROUGE-L F1 / token accuracy of the span. "
              "n/a: not measured (reasons below).", ""]
    header = ["run", "variant", "curriculum", "seed", "tokens", "final train loss"]
    header += [f"NLL {o}" for o in orders] + [f"{b} NLL upper bound" for b in bounds]
    header += [f"infill {p} ({s} steps)" for p, s in plans]
    rows = []
    for run in table_runs:
        v = values[run.label]
        row = [run.label + (f" {WARN}" if run.problems else ""), run.variant, f"`{run.curriculum}`",
               str(run.seed), _tokens(v["tokens"]), _fmt(v["train_loss"])]
        row += [_cell_nll(v[f"nll/{o}"], v[f"bits/{o}"]) for o in orders]
        row += [("≤ " + _cell_nll(v[f"bound/{b}"], v[f"bound_bits/{b}"])) if v[f"bound/{b}"] is not None else "n/a"
                for b in bounds]
        for plan, _ in plans:
            cells = [v[f"infill/{plan}/{k}"] for k in ("exact_match", "rougeL", "token_acc")]
            row.append("n/a" if all(c is None for c in cells) else " / ".join(_fmt(c) for c in cells))
        rows.append(row)
    lines += _md_table(header, rows) if rows else ["(no run has metrics yet)"]

    lines += ["", "## Averaged over seeds", "", "mean ± half the range over the runs of a point (runs: how "
              "many; (n=k) where only k of them have a finite value). Infilling: exact match / ROUGE-L / "
              "token accuracy.", ""]
    agg_header = ["point", "variant", "runs", "tokens", "final train loss"] + [f"NLL {o}" for o in orders]
    agg_header += [f"{b} NLL upper bound" for b in bounds]
    agg_header += [f"infill {p} ({s} steps)" for p, s in plans]
    agg_rows = []
    for group in groups:
        members = [r for r in table_runs if r.group == group]
        if not members:
            continue
        n = len(members)
        pick = lambda key: _aggregate([values[r.label][key] for r in members])  # noqa: E731
        row = [group, "/".join(sorted({r.variant for r in members})), str(n),
               _tokens(max((values[r.label]["tokens"] or 0) for r in members)), _fmt_agg(pick("train_loss"), n)]
        row += [_fmt_agg(pick(f"nll/{o}"), n) for o in orders]
        row += [("≤ " + _fmt_agg(pick(f"bound/{b}"), n)) if pick(f"bound/{b}") else "n/a" for b in bounds]
        for plan, _ in plans:
            cells = [pick(f"infill/{plan}/{k}") for k in ("exact_match", "rougeL", "token_acc")]
            row.append("n/a" if all(c is None for c in cells) else " / ".join(_fmt_agg(c, n, 2) for c in cells))
        agg_rows.append(row)
    lines += _md_table(agg_header, agg_rows) if agg_rows else ["(nothing to average)"]

    notes = _reason_notes(runs)
    for name in bounds:
        sources = sorted({str(_dig(r.eval, "nll_bound", name, "source")) for r in runs
                          if _dig(r.eval, "nll_bound", name, "source")})
        notes.append(f"{name} NLL upper bound: the masked-diffusion ELBO (L/m-weighted MDLM objective), an upper "
                     "bound on the held-out NLL, not an exact likelihood"
                     + (f" ({'; '.join(sources)})" if sources else ""))
    if notes:
        lines += ["", "## Not measured / labels", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Missing, partial or non-finite", ""]
    lines += [f"- {p}" for p in problems] if problems else ["None: every run finished, was evaluated, and all "
                                                           "its values are finite."]

    files = [out_dir / "report.md", out_dir / "report.json"]
    plotted = [r for r in runs if r.metrics or r.eval]
    if plotted:
        plot_loss(plotted, groups, out_dir / PLOTS[0])
        plot_nll(plotted, groups, orders, bounds, out_dir / PLOTS[1])
        plot_infill(plotted, groups, plans, out_dir / PLOTS[2])
        files += [out_dir / name for name in PLOTS]
        lines += ["", "## Plots", ""] + [f"![{name[:-4]}]({name})" for name in PLOTS]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = {
        "runs": [{"run": r.label, "group": r.group, "variant": r.variant, "curriculum": r.curriculum,
                  "seed": r.seed, "problems": r.problems, **values.get(r.label, {})} for r in runs],
        "problems": problems, "files": [str(f) for f in files],
    }
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return summary


def add_arguments(parser) -> None:
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run workdirs, sweep roots or folders of runs")
    parser.add_argument("--out", required=True, help="folder for report.md, report.json and the PNG plots")


def main(args, overrides: Sequence[str] = ()) -> int:
    if overrides:
        raise ValueError(f"a3jax report takes no --config overrides (got {list(overrides)})")
    summary = build_report(args.dirs, args.out)
    complete = sum(1 for r in summary["runs"] if not r["problems"])
    print(f"[a3jax] report of {len(summary['runs'])} runs ({complete} complete, {len(summary['problems'])} "
          f"problems): {pathlib.Path(args.out) / 'report.md'}")
    return 0
