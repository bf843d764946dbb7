"""The block-skipping Hopper backward (kernels/hopper_range_bwd.py), run on the CPU in Mosaic GPU's
interpret mode (shared memory, barriers, TMA copies and the pipeline simulated): gradients against
the dense XLA reference, both streams through the `tokamax_skip` backend, and a poisoned-block check
that the skipped blocks are never read. Its lowering for `cuda` is in tests/test_lowering.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("tokamax")

from a3jax.kernels.hopper_range_bwd import range_attention_bwd  # noqa: E402
from tests.test_kernels import dense, random_layouts  # noqa: E402
from tests.test_tokamax import _inputs, _out_and_grads  # noqa: E402


def _dense_with_lse(q, k, v, start, end):
    """Row i attends keys [start, end) (GQA by repetition), and the logsumexp of its scaled logits
    (0 for an empty range)."""
    group = q.shape[2] // k.shape[2]
    kk = jnp.repeat(k, group, 2)
    logits = jnp.einsum("bshd,bnhd->bhsn", q, kk) / np.sqrt(q.shape[-1])
    cols = jnp.arange(k.shape[1])
    mask = ((cols >= start[..., None]) & (cols < end[..., None]))[:, None]
    lse = jax.nn.logsumexp(jnp.where(mask, logits, -jnp.inf), -1)
    return dense(q, k, v, start, end), jnp.where(jnp.isfinite(lse), lse, 0.0)


def test_two_streams_through_tokamax_skip_match_xla():
    """`tokamax_skip` (tokamax's forward with its residuals, the skipping backward) against the
    dense `xla` backend: outputs and every gradient, packed documents with padding, GQA 2, both
    streams in one call (2N rows, so the key-tile lists hold two runs of query tiles)."""
    rng = np.random.default_rng(0)
    layouts = random_layouts(rng, 1, 64, "random_sizes(1,5)", max_docs=2, fill=(0.8, 0.9))
    seg, groups = jnp.asarray(layouts["segment_ids"]), jnp.asarray(layouts["groups"])
    assert (layouts["segment_ids"] == 0).any()
    qc, qq, k, v = _inputs(rng, 1, 64, 2, 1)
    real = (seg > 0)[:, :, None, None]
    cot_c, cot_q = (jnp.asarray(rng.normal(size=qc.shape), jnp.float32) * real for _ in range(2))
    got_outs, got_grads = _out_and_grads(qc, qq, k, v, seg, groups, cot_c, cot_q, backend="tokamax_skip")
    want_outs, want_grads = _out_and_grads(qc, qq, k, v, seg, groups, cot_c, cot_q, backend="xla")
    for g, w in zip(got_outs, want_outs):
        np.testing.assert_allclose(np.asarray(g * real), np.asarray(w * real), atol=1e-5, rtol=1e-5)
    for name, g, w in zip(("dq_content", "dq_query", "dk", "dv"), got_grads, want_grads):
        assert np.abs(np.asarray(w)).max() > 0.1, name  # a gradient that is there to get wrong
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=1e-5, err_msg=name)


def test_skipped_blocks_are_never_read():
    """Keys 64..127 lie in no row's range and rows 64..127 have empty ranges; their q, dO, k and v
    are NaN. The dense gradient turns NaN (0 * NaN in its softmax backward); the kernels, which
    visit only blocks inside the ranges, give the gradient of the clean inputs: finite, equal to
    the reference computed with those entries zeroed, and exactly 0 for the unseen keys and rows."""
    rng = np.random.default_rng(1)
    b, s, n, h, kv, d = 1, 128, 128, 2, 1, 32
    start = rng.integers(0, 48, (b, s))
    end = np.minimum(start + rng.integers(1, 17, (b, s)), 64)
    start[:, 64:], end[:, 64:] = 5, 5  # empty ranges: the second query tile sees nothing
    start, end = jnp.asarray(start, jnp.int32), jnp.asarray(end, jnp.int32)

    def draw(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    q, k, v, d_out = draw(b, s, h, d), draw(b, n, kv, d), draw(b, n, kv, d), draw(b, s, h, d)
    zero_rows = jnp.arange(s)[None, :, None, None] >= 64
    zero_keys = jnp.arange(n)[None, :, None, None] >= 64
    q, d_out = jnp.where(zero_rows, 0.0, q), jnp.where(zero_rows, 0.0, d_out)
    k, v = jnp.where(zero_keys, 0.0, k), jnp.where(zero_keys, 0.0, v)
    out, lse = _dense_with_lse(q, k, v, start, end)
    _, vjp = jax.vjp(lambda q, k, v: _dense_with_lse(q, k, v, start, end)[0], q, k, v)
    want = vjp(d_out)

    nan = jnp.float32(jnp.nan)
    poisoned = (jnp.where(zero_rows, nan, q), jnp.where(zero_keys, nan, k), jnp.where(zero_keys, nan, v))
    d_poisoned = jnp.where(zero_rows, nan, d_out)
    _, dense_vjp = jax.vjp(lambda q, k, v: _dense_with_lse(q, k, v, start, end)[0], *poisoned)
    assert not np.all(np.isfinite(np.asarray(dense_vjp(d_poisoned)[0])))  # the control reads them

    got = range_attention_bwd(*poisoned, out, lse, d_poisoned, start, end, interpret=True)
    for name, g, w in zip(("dq", "dk", "dv"), got, want):
        g = np.asarray(g)
        assert np.all(np.isfinite(g)), name
        np.testing.assert_allclose(g, np.asarray(w), atol=1e-5, rtol=1e-5, err_msg=name)
    assert np.all(np.asarray(got[0])[:, 64:] == 0)
    assert np.all(np.asarray(got[1])[:, 64:] == 0) and np.all(np.asarray(got[2])[:, 64:] == 0)
