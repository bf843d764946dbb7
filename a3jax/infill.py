"""Greedy span infilling for the demo: the gap is decoded left to right, one token per step,
after every visible token (the layout of the `span` sampler). The full sampler comes later."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from a3jax.layout import build_layout
from a3jax.orders import span_groups


def greedy_infill(model_def, params, window: np.ndarray, start: int, stop: int, *, seq_len: int,
                  bos_id: int, pad_id: int) -> np.ndarray:
    """Returns `window` with tokens [start, stop) replaced by the model's greedy infill."""
    groups = span_groups(window.size, start, stop)

    @jax.jit
    def logits_at(params, batch, row):
        logits = model_def.bind(params)(batch)[0]
        return jnp.argmax(logits[row])

    filled = window.copy()
    filled[start:stop] = pad_id  # invisible to every query row that predicts them
    for position in range(start, stop):
        layout = build_layout([filled], [groups], seq_len, bos_id=bos_id, pad_id=pad_id)
        row = int(np.flatnonzero((layout["positions"] == position + 1) & (layout["segment_ids"] == 1))[0])
        batch = {k: jnp.asarray(v)[None] for k, v in layout.items()}
        filled[position] = int(logits_at(params, batch, row))
    return filled
