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

import json
import math
import pathlib
import sys
import time
from collections.abc import Sequence

from a3jax.errors import UserError
from a3jax.study.plots import PLOTS, write_plots
from a3jax.study.runs import INFILL_COLUMNS, Run, collect, columns, dig, extra_columns, finite, number, run_values

WARN = "⚠"


def _log(message: str) -> None:
    print(f"[a3jax report] {message}", file=sys.stderr, flush=True)


# ---- cells ---------------------------------------------------------------------------------------

def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    parsed = number(value)
    if parsed is None:
        return str(value)
    if not math.isfinite(parsed):
        return f"{WARN} {value}"
    return f"{parsed:.{digits}f}"


def _cell_nll(nll, bits) -> str:
    if nll is None:
        return "n/a"
    return f"{_fmt(nll)} ({_fmt(bits)})"


def _aggregate(values: list) -> tuple[float, float, int] | None:
    """(mean, half the range, count) of the finite values; None when there is none."""
    kept = [float(v) for v in values if finite(v)]
    if not kept:
        return None
    return sum(kept) / len(kept), (max(kept) - min(kept)) / 2, len(kept)


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


# ---- sections ------------------------------------------------------------------------------------

def _runs_table(runs: Sequence[Run], values: dict, orders, bounds, plans, extras=()) -> list[str]:
    """One row per run: variant, curriculum, seed, tokens, final loss, NLL per order, bounds,
    infilling, extra measurements."""
    header = ["run", "variant", "curriculum", "seed", "tokens", "final train loss"]
    header += [f"NLL {o}" for o in orders] + [f"{b} NLL upper bound" for b in bounds]
    header += [f"infill {p} ({s} steps)" for p, s in plans] + list(extras)
    rows = []
    for run in runs:
        v = values[run.label]
        row = [run.label + (f" {WARN}" if run.problems else ""), run.variant, f"`{run.curriculum}`",
               str(run.seed), _tokens(v["tokens"]), _fmt(v["train_loss"])]
        row += [_cell_nll(v[f"nll/{o}"], v[f"bits/{o}"]) for o in orders]
        row += [("≤ " + _cell_nll(v[f"bound/{b}"], v[f"bound_bits/{b}"])) if v[f"bound/{b}"] is not None else "n/a"
                for b in bounds]
        for plan, _ in plans:
            cells = [v[f"infill/{plan}/{k}"] for k in INFILL_COLUMNS]
            row.append("n/a" if all(c is None for c in cells) else " / ".join(_fmt(c) for c in cells))
        row += [_fmt(v.get(f"extra/{key}")) for key in extras]
        rows.append(row)
    return _md_table(header, rows) if rows else ["(no run has metrics yet)"]


def _seeds_table(runs: Sequence[Run], groups, values: dict, orders, bounds, plans, extras=()) -> list[str]:
    """One row per group (a point over its seeds): mean ± half the range of each column."""
    header = ["point", "variant", "runs", "tokens", "final train loss"] + [f"NLL {o}" for o in orders]
    header += [f"{b} NLL upper bound" for b in bounds]
    header += [f"infill {p} ({s} steps)" for p, s in plans] + list(extras)
    rows = []
    for group in groups:
        members = [r for r in runs if r.group == group]
        if not members:
            continue
        n = len(members)
        pick = lambda key, members=members: _aggregate([values[r.label][key] for r in members])  # noqa: E731
        row = [group, "/".join(sorted({r.variant for r in members})), str(n),
               _tokens(max((values[r.label]["tokens"] or 0) for r in members)), _fmt_agg(pick("train_loss"), n)]
        row += [_fmt_agg(pick(f"nll/{o}"), n) for o in orders]
        row += [("≤ " + _fmt_agg(pick(f"bound/{b}"), n)) if pick(f"bound/{b}") else "n/a" for b in bounds]
        for plan, _ in plans:
            cells = [pick(f"infill/{plan}/{k}") for k in INFILL_COLUMNS]
            row.append("n/a" if all(c is None for c in cells) else " / ".join(_fmt_agg(c, n, 2) for c in cells))
        row += [_fmt_agg(_aggregate([values[r.label].get(f"extra/{key}") for r in members]), n) for key in extras]
        rows.append(row)
    return _md_table(header, rows) if rows else ["(nothing to average)"]


def _notes(runs: Sequence[Run], bounds) -> list[str]:
    """'n/a' explanations, one per (variant, measurement, reason), then what each bound is."""
    notes, seen = [], set()
    for run in runs:
        for key, why in (dig(run.eval, "unavailable") or {}).items():
            item = (run.variant, key, why)
            if item in seen:
                continue
            seen.add(item)
            notes.append(f"{run.variant} runs, {key}: {why}")
    for name in bounds:
        sources = sorted({str(dig(r.eval, "nll_bound", name, "source")) for r in runs
                          if dig(r.eval, "nll_bound", name, "source")})
        notes.append(f"{name} NLL upper bound: the masked-diffusion ELBO (L/m-weighted MDLM objective), an upper "
                     "bound on the held-out NLL, not an exact likelihood"
                     + (f" ({'; '.join(sources)})" if sources else ""))
    return notes


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
    orders, bounds, plans = columns(runs)
    table_runs = [r for r in runs if r.metrics or r.eval]
    values = {r.label: run_values(r, orders, bounds, plans) for r in table_runs}
    extras = extra_columns(table_runs)

    lines = ["# Ablation report", "", f"Generated {time.strftime('%Y-%m-%d %H:%M')} by "
             f"`a3jax report {' '.join(str(d) for d in dirs)} --out {out_dir}`.", ""]
    for sweep in sweeps:
        seeds = sorted({str(dig(p, "overrides", "seed")) for p in sweep["points"]
                        if dig(p, "overrides", "seed") is not None})
        lines.append(f"Sweep: `{sweep.get('command', '')}`" + (f" (seeds {', '.join(seeds)})" if seeds else ""))
        lines.append("")
    lines += ["## Runs", "",
              "Held-out NLL in nats per token (bits per byte in brackets) under each order; "
              "infilling cells are exact match / ROUGE-L F1 / token accuracy of the span. "
              "n/a: not measured (reasons below).", ""]
    lines += _runs_table(table_runs, values, orders, bounds, plans, extras)
    lines += ["", "## Averaged over seeds", "", "mean ± half the range over the runs of a point (runs: how "
              "many; (n=k) where only k of them have a finite value). Infilling: exact match / ROUGE-L / "
              "token accuracy.", ""]
    lines += _seeds_table(table_runs, groups, values, orders, bounds, plans, extras)
    notes = _notes(runs, bounds)
    if notes:
        lines += ["", "## Not measured / labels", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Missing, partial or non-finite", ""]
    lines += [f"- {p}" for p in problems] if problems else ["None: every run finished, was evaluated, and all "
                                                           "its values are finite."]

    files = [out_dir / "report.md", out_dir / "report.json"]
    if table_runs:
        files += write_plots(table_runs, groups, orders, bounds, plans, out_dir)
        lines += ["", "## Plots", ""] + [f"![{name[:-4]}]({name})" for name in PLOTS]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = {
        "runs": [{"run": r.label, "group": r.group, "variant": r.variant, "curriculum": r.curriculum,
                  "seed": r.seed, "problems": r.problems, **values.get(r.label, {})} for r in runs],
        "problems": problems, "files": [str(f) for f in files],
    }
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    return summary


# ---- command line --------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run workdirs, sweep roots or folders of runs")
    parser.add_argument("--out", required=True, help="folder for report.md, report.json and the PNG plots")


def main(args, overrides: Sequence[str] = ()) -> int:
    if overrides:
        raise UserError(f"a3jax report takes no --config overrides (got {list(overrides)})")
    summary = build_report(args.dirs, args.out)
    complete = sum(1 for r in summary["runs"] if not r["problems"])
    print(f"[a3jax] report of {len(summary['runs'])} runs ({complete} complete, {len(summary['problems'])} "
          f"problems): {pathlib.Path(args.out) / 'report.md'}")
    return 0
