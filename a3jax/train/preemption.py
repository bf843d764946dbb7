"""Stop requests from SIGTERM / SIGINT (preemption, Ctrl-C), agreed on by every process.

The first signal only sets a flag: the loop finishes its step, saves a checkpoint at that step
boundary and returns (with several processes, at the next log boundary, where they agree). A
second signal exits at once (exit code 128 + signal number), without saving: the last complete
checkpoint stays the resume point, and a checkpoint being written is never picked up (orbax
renames a finished checkpoint into place; see checkpoint.py).
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import numpy as np

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
    """Context manager installing the handlers (main thread only; elsewhere a no-op)."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signal_name is not None:
            print(f"[a3jax] second signal ({name}): exiting now without saving; the last complete "
                  "checkpoint is the resume point", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signal_name = name
        print(f"[a3jax] {name}: finishing this step, then saving a checkpoint (send it again to exit "
              "at once)", file=sys.stderr, flush=True)

    def agreed(self, at_sync_point: bool = True) -> str | None:
        """The signal name if any process was asked to stop. With several processes this is a
        collective (every process must call it at the same steps), made only at sync points (the
        loop's log boundaries: at most train.log_every steps late); elsewhere None. One process
        answers from its own flag at every step."""
        import jax

        if jax.process_count() == 1:
            return self.signal_name
        if not at_sync_point:
            return None
        from jax.experimental import multihost_utils

        codes = multihost_utils.process_allgather(np.int32(0 if self.signal_name is None else 1 + SIGNALS.index(
            signal.Signals[self.signal_name])))
        code = int(np.max(codes))
        return None if code == 0 else SIGNALS[code - 1].name
