"""Greedy span infilling: visible tokens are kept, and each filled token is the argmax of one
forward pass over the final sequence (later span tokens are invisible to earlier ones)."""

import jax.numpy as jnp
import numpy as np

from a3jax.infill import greedy_infill
from a3jax.layout import build_layout
from a3jax.model import ModelConfig
from a3jax.orders import span_groups
from a3jax.train.step import init_model


def test_greedy_infill_matches_one_pass_argmax_on_the_result():
    cfg = ModelConfig(vocab_size=12, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=32,
                      dtype="float32", init_std=0.5)
    model_def, params = init_model(cfg, seed=3)
    window = np.random.default_rng(0).integers(0, 10, size=20).astype(np.int32)
    start, stop = 6, 11
    filled = greedy_infill(model_def, params, window, start, stop, seq_len=24, bos_id=10, pad_id=11)
    np.testing.assert_array_equal(filled[:start], window[:start])
    np.testing.assert_array_equal(filled[stop:], window[stop:])
    layout = build_layout([filled], [span_groups(20, start, stop)], 24, bos_id=10, pad_id=11)
    logits = model_def.bind(params)({k: jnp.asarray(v)[None] for k, v in layout.items()})[0]
    rows = [int(np.flatnonzero(layout["positions"] == p + 1)[0]) for p in range(start, stop)]
    np.testing.assert_array_equal(np.argmax(np.asarray(logits)[rows], axis=-1), filled[start:stop])
