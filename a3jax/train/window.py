"""The metric window of the training loop: each step's metrics stay on the device until the next
log, then one host sync fetches them all, adds throughput (tokens/s, TFLOP/s, MFU), counts steps
whose update was skipped (non-finite loss or gradients), and stops a run that keeps diverging."""

from __future__ import annotations

import time

import jax


class TrainingDivergedError(RuntimeError):
    """Too many consecutive steps with non-finite loss or gradients (`a3jax train` exits 3)."""


class MetricWindow:
    def __init__(self, writer, *, tokens_per_step: int, n_devices: int, flops_per_token: float,
                 peak_flops: float | None, max_bad_steps: int, skipped_total: int, describe_last_saved):
        self.writer = writer
        self.tokens_per_step = tokens_per_step
        self.n_devices = n_devices
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.max_bad_steps = max_bad_steps
        self.skipped_total = skipped_total
        self.describe_last_saved = describe_last_saved  # () -> str, for the divergence message
        self.loss: float | None = None
        self.tokens_per_s: float | None = None
        self._pending: list = []
        self._bad_run: list[int] = []
        self._started = time.perf_counter()

    def add(self, step: int, metrics: dict) -> None:
        """Keeps the (device) metrics of the step that ended at `step`."""
        self._pending.append((step, metrics))

    def flush(self) -> None:
        """Fetches and logs the pending steps' metrics (one sync); raises TrainingDivergedError
        after train.max_bad_steps consecutive skipped steps."""
        if not self._pending:
            return
        fetched = jax.device_get(self._pending)
        elapsed = time.perf_counter() - self._started
        tokens_per_s = self.tokens_per_step * len(self._pending) / max(elapsed, 1e-9)
        per_device = tokens_per_s / self.n_devices
        for step, values in fetched:
            scalars = {k: float(v) for k, v in values.items()}
            if scalars["skipped"]:
                self.skipped_total += 1
                self._bad_run.append(step)
            else:
                self._bad_run = []
            scalars["skipped_total"] = float(self.skipped_total)
            scalars["tokens_per_s"] = tokens_per_s
            scalars["tokens_per_s_per_device"] = per_device
            scalars["tflops_per_device"] = self.flops_per_token * per_device / 1e12
            if self.peak_flops:
                scalars["mfu"] = self.flops_per_token * per_device / self.peak_flops
            self.writer.write(step, scalars, prefix="train/")
        self.loss, self.tokens_per_s = float(fetched[-1][1]["loss"]), tokens_per_s
        self._pending, self._started = [], time.perf_counter()
        bad = self._bad_run
        if len(bad) >= self.max_bad_steps:
            raise TrainingDivergedError(
                f"{len(bad)} consecutive steps ({bad[0]}..{bad[-1]}) had non-finite loss or gradients and "
                f"their updates were skipped (train.max_bad_steps={self.max_bad_steps}); "
                f"{self.describe_last_saved()}. Lower train.lr, check the data around those steps, or "
                "resume from the checkpoint")
