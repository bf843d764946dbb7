"""The top operations of a profile: where a step's time goes.

`jax.profiler.trace(DIR, create_perfetto_trace=True)` (what `a3jax bench train --profile DIR`
runs) also writes DIR/plugins/profile/*/perfetto_trace.json.gz, a Chrome trace. Its complete
events ("ph": "X") on the device's timelines (processes named /device:...: the GPU kernels) are
summed by name; on a CPU, where there is no device timeline, every host event but Python's own.
"""

from __future__ import annotations

import collections
import gzip
import json
import pathlib

from a3jax.errors import UserError


def latest_trace(trace_dir) -> pathlib.Path:
    traces = sorted(pathlib.Path(trace_dir).rglob("perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not traces:
        raise UserError(f"{trace_dir} holds no perfetto_trace.json.gz; profile with "
                        "jax.profiler.trace(DIR, create_perfetto_trace=True) (a3jax bench train --profile DIR)")
    return traces[-1]


def top_ops(trace_dir, n: int = 15) -> tuple[list[tuple[str, float, int]], float, str]:
    """([(name, total microseconds, count)] largest first, total microseconds, timeline) of the
    latest trace in trace_dir."""
    data = json.loads(gzip.open(latest_trace(trace_dir)).read())
    events = data["traceEvents"] if isinstance(data, dict) else data
    processes = {e.get("pid"): str(e.get("args", {}).get("name", "")) for e in events
                 if e.get("ph") == "M" and e.get("name") == "process_name"}
    device = {pid for pid, name in processes.items() if "/device:" in name}
    timeline = "device" if device else "host"
    totals, counts = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("ph") != "X":
            continue
        name = str(event.get("name", ""))
        if device and event.get("pid") not in device:
            continue
        if not device and name.startswith("$"):  # Python frames of the host timeline
            continue
        totals[name] += float(event.get("dur", 0.0))
        counts[name] += 1
    total = sum(totals.values())
    return [(name, us, counts[name]) for name, us in totals.most_common(n)], total, timeline


def print_top_ops(trace_dir, n: int = 15, title: str = "") -> None:
    ops, total, timeline = top_ops(trace_dir, n)
    print(f"top {len(ops)} operations by time on the {timeline} timeline{title} (total {total / 1e3:.1f} ms)")
    print(f"{'ms':>9}{'share':>7}{'count':>7}  name")
    for name, us, count in ops:
        print(f"{us / 1e3:>9.2f}{us / max(total, 1e-9):>7.1%}{count:>7}  {name[:100]}")
