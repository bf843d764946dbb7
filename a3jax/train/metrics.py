"""Metric writers: one JSONL file (machine-readable, resume-aware) and TensorBoard."""

from __future__ import annotations

import json
import math
import os
import pathlib
import sys


class MetricWriter:
    """Writes scalars to WORKDIR/metrics.jsonl and WORKDIR/tensorboard."""

    def __init__(self, workdir: str | pathlib.Path, *, resume_step: int = 0):
        workdir = pathlib.Path(workdir)
        self.jsonl_path = workdir / "metrics.jsonl"
        self._drop_records_after(resume_step)
        self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        self._tensorboard = _summary_writer_class()(str(workdir / "tensorboard"))

    def _drop_records_after(self, step: int) -> None:
        """A resumed run recomputes the steps after its checkpoint: drop their stale records."""
        if not self.jsonl_path.exists():
            return
        lines = self.jsonl_path.read_text(encoding="utf-8").splitlines()
        kept = []
        for line in lines:
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
        if len(kept) != len(lines):
            tmp = self.jsonl_path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
            os.replace(tmp, self.jsonl_path)

    def write(self, step: int, scalars: dict[str, float], prefix: str = "") -> None:
        record = {"step": step}
        for name, value in scalars.items():
            value = float(value)
            record[prefix + name] = value if math.isfinite(value) else str(value)
            self._tensorboard.add_scalar(prefix + name, value, step)
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        self._jsonl.close()
        self._tensorboard.close()


def _summary_writer_class():
    """tensorboardX's SummaryWriter, loaded without torch.

    When torch is installed (the optional `torch` extra), tensorboardX imports it at module level,
    only to accept torch tensors as values: seconds added to the start of every `a3jax train`,
    which logs plain floats. So torch is hidden while tensorboardX loads, unless it is loaded
    already: tensorboardX then loads as on an install without torch (its supported case) and
    writes the same event files. torch stays importable afterwards."""
    if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
        sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
        try:
            import tensorboardX  # noqa: F401
        finally:
            del sys.modules["torch"]
    from tensorboardX import SummaryWriter

    return SummaryWriter


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


class NullWriter:
    """The writer of processes other than the first: drops everything."""

    def write(self, step: int, scalars: dict[str, float], prefix: str = "") -> None:
        pass

    def close(self) -> None:
        pass
