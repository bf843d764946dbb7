"""The one host loop of every plan: enqueue jitted steps (sampler._step) or rounds
(rounds.device_round) one after another, never waiting for the call just sent.

Each call returns (..., record, left) where `left` says, on the device, whether any row has a
position left after it. The loop reads `left` of the call `lag` calls back (by then it is
computed, so the host stays ahead of the device), stops there, and fetches every record once at
the end: the calls sent after the last one with work choose nothing and are not counted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from tqdm import tqdm


def drive(send: Callable[[int], tuple[Any, jax.Array]], max_calls: int, *, lag: int = 2, progress: bool = False,
          total: int | None = None, must_finish: bool = False) -> tuple[list, int]:
    """Calls send(t) for t = 0, 1, ... (each returns (record, left); the caller's closure carries
    the donated state from call to call) until call t - lag reported no position left, or
    max_calls. Returns (the records of the calls up to and including the first with nothing left,
    fetched to the host; that number of calls). `lag` 1 where the final state must hold exactly
    the calls counted (keep_cache). Progress: tokens decided (every record's `valid`), out of
    `total`. must_finish: running out of max_calls with work left is a bug (a round always
    decides a token or proposes for the next one), not the end of a schedule."""
    bar = tqdm(total=total, desc="decode", unit="tok", disable=not progress, file=sys.stderr)
    records, lefts = [], []
    for t in range(max_calls):
        if t >= lag and not bool(lefts[t - lag]):
            break
        record, left = send(t)
        records.append(record)
        lefts.append(left)
        if t >= lag and not bar.disable:
            bar.update(int(np.sum(np.asarray(records[t - lag].valid))))
    lefts = jax.device_get(lefts)
    done = next((t + 1 for t, left in enumerate(lefts) if not left), None)
    if done is None:
        if must_finish:
            bar.close()
            raise RuntimeError(f"decoding did not finish in {max_calls} calls; please report a bug")
        done = len(lefts)
    records = jax.device_get(records[:done])
    shown = max(len(lefts) - lag, 0)  # the records the bar has counted (any after `done` chose nothing)
    if not bar.disable and shown < done:
        bar.update(int(sum(np.sum(r.valid) for r in records[shown:])))
    bar.close()
    return records, done
