"""The report's PNG plots: training loss vs tokens, held-out NLL by order, span infilling vs the
number of decoding steps. One colour per group (a point without its seed); matplotlib (the
`report` extra) is imported only when a plot is drawn."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

from a3jax.errors import UserError
from a3jax.study.runs import finite, infill_entry, run_values

PLOTS = ("loss_vs_tokens.png", "nll_by_order.png", "infill_vs_steps.png")


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise UserError("the report's plots need matplotlib: pip install 'a3jax[report]' "
                         "(or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(groups: Sequence[str]) -> dict:
    plt = _plt()
    cycle = plt.get_cmap("tab10")
    return {g: cycle(i % 10) for i, g in enumerate(groups)}


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over `window` values."""
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
        points = [(s, float(v)) for s, v in run.losses if finite(v)]
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
            kept = [float(v) for v in values if finite(v)]
            if not kept:
                ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
                continue
            hatch = "//" if key.startswith("bound/") else None
            ax.bar(x, sum(kept) / len(kept), width * 0.9, color=colours[group], alpha=0.75, hatch=hatch,
                   label=None if group in labelled else group)
            labelled.add(group)
            ax.scatter([x] * len(kept), kept, color="black", s=12, zorder=3)
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
                values = [((infill_entry(r, plan) or {}).get("metrics") or {}).get(metric) for r in members]
                kept = [float(v) for v in values if finite(v)]
                if not kept or not steps:
                    continue
                xs.append(steps)
                means.append(sum(kept) / len(kept))
                ax.scatter([steps] * len(kept), kept, color=colours[group], s=12, alpha=0.6)
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


def write_plots(runs, groups, orders, bounds, plans, out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Writes the three PLOTS into out_dir; returns their paths."""
    plot_loss(runs, groups, out_dir / PLOTS[0])
    plot_nll(runs, groups, orders, bounds, out_dir / PLOTS[1])
    plot_infill(runs, groups, plans, out_dir / PLOTS[2])
    return [out_dir / name for name in PLOTS]
