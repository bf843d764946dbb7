"""What a sweep leaves on disk, and reading it back: the file names, JSON written atomically (with
non-finite floats as strings), and a point's status from its checkpoints and eval_final.json."""

from __future__ import annotations

import json
import math
import os
import pathlib

EVAL_FILE = "eval_final.json"  # ROOT/<point>/: the post-training metrics (evaluate.evaluate_point)
SWEEP_FILE = "sweep.json"  # ROOT/: the points and their status (run.write_sweep_file)


def latest_checkpoint(workdir: pathlib.Path) -> int | None:
    """The highest complete checkpoint step (orbax renames a step's folder into place when done)."""
    folder = workdir / "checkpoints"
    if not folder.is_dir():
        return None
    steps = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(steps) if steps else None


def read_json(path: pathlib.Path):
    """The file's JSON, or None when it is missing or unreadable (a half-written file)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def json_safe(value):
    """Non-finite floats as strings ('nan', 'inf'), as metrics.jsonl writes them; array scalars as
    Python numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return json_safe(value.item())
    return value


def write_json(path: pathlib.Path, data) -> None:
    """Atomic write (several jobs of one sweep may write sweep.json)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=2) + "\n", encoding="utf-8")
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
