"""Checkpoint writes from the training loop: one background write in flight, a failure reported
with the intact previous checkpoint named (nothing already saved is lost)."""

from __future__ import annotations

import json
import warnings

from a3jax.errors import UserError


class CheckpointWriteError(UserError, OSError):
    """A checkpoint could not be written (disk full, quota, permissions); earlier ones are intact."""


class CheckpointSaver:
    """Saves {"params", "opt_state"} and a JSON meta at a step; `last_saved` is the newest
    complete checkpoint (None before the first)."""

    def __init__(self, checkpointer, last_saved: int | None):
        self.checkpointer = checkpointer
        self.last_saved = last_saved
        self._writing: int | None = None

    def path(self, step: int):
        return self.checkpointer.directory / str(step)

    def describe_last_saved(self) -> str:
        if self.last_saved is None:
            return "no checkpoint was written yet"
        return f"the last good checkpoint is {self.path(self.last_saved)}"

    def _write_error(self, step: int, error: Exception) -> CheckpointWriteError:
        # A failed orbax write leaves the coroutines of its other fragments unawaited, and Python
        # reports each when the process exits ("coroutine ... was never awaited"), after this
        # error's line, burying it: the failure is reported here, those reports say nothing more.
        warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)
        kept = (f"the previous complete checkpoint {self.path(self.last_saved)} is intact"
                if self.last_saved is not None else "no earlier checkpoint exists")
        return CheckpointWriteError(f"could not write the checkpoint at step {step} ({type(error).__name__}: "
                                    f"{error}); {kept}. Free disk space (or fix permissions) and rerun to resume")

    def wait(self) -> None:
        """Waits for the write in flight; its failure is raised here."""
        step = self._writing
        if step is None:
            return
        try:
            self.checkpointer.wait()
        except Exception as error:  # noqa: BLE001 - orbax/tensorstore raise many types for I/O failures
            raise self._write_error(step, error) from error
        self.last_saved, self._writing = step, None

    def save(self, step: int, state: dict, meta: dict) -> None:
        """Starts writing `state` at `step` (after the previous write finished)."""
        self.wait()
        try:
            self.checkpointer.save(step, state, json.loads(json.dumps(meta, default=list)))
        except Exception as error:  # noqa: BLE001
            raise self._write_error(step, error) from error
        self._writing = step
