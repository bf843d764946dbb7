"""The Pallas range-mask flash attention kernel (interpret mode on CPU) against the dense reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from a3jax import orders
from a3jax.kernels import block_visits, dense_block_count, range_attention
from a3jax.kernels.range_attention_bwd import _key_block_lists
from a3jax.layout import build_layout, key_ranges, stack_layouts
from a3jax.model.attention import _masked_attention

BOS, PAD = 1, 0
TOL = {jnp.float32: 1e-4, jnp.bfloat16: 2e-2}


# ----------------------------------------------------------------------------- helpers

def _ranges_of(layouts):
    """Fused (content then query stream) ranges [B, 2N] from stacked layouts."""
    ranges = key_ranges(layouts["segment_ids"], layouts["groups"])
    start, content_end, query_end = (np.asarray(r, np.int32) for r in ranges)
    return (np.concatenate([start, start], axis=1),
            np.concatenate([content_end, query_end], axis=1))


def random_layouts(rng, batch, n, spec, *, max_docs=3, fill=(0.6, 1.0)):
    """Rows of 1..max_docs random documents grouped by `spec`, padding at the end."""
    sampler = orders.parse_sampler(spec)
    rows = []
    for _ in range(batch):
        used = int(n * rng.uniform(*fill))
        n_docs = int(rng.integers(1, max_docs + 1))
        cuts = np.sort(rng.choice(np.arange(1, used), size=n_docs - 1, replace=False)) if n_docs > 1 else []
        sizes = np.diff(np.concatenate([[0], cuts, [used]])).astype(int) - 1  # minus BOS
        docs = [rng.integers(2, 50, size=s) for s in sizes]
        groups = [sampler(len(d), rng) for d in docs]
        rows.append(build_layout(docs, groups, n, bos_id=BOS, pad_id=PAD))
    return stack_layouts(rows)


def random_qkv(rng, batch, n, n_heads, n_kv, head_dim, dtype=jnp.float32, extra=()):
    def draw(*shape):
        return jnp.asarray(rng.normal(size=extra + shape), dtype)

    return (draw(batch, 2 * n, n_heads, head_dim), draw(batch, n, n_kv, head_dim),
            draw(batch, n, n_kv, head_dim))


def dense(q, k, v, start, end):
    cols = jnp.arange(k.shape[1])
    mask = (cols >= start[..., None]) & (cols < end[..., None])
    return _masked_attention(q, k, v, mask)


@functools.partial(jax.jit, static_argnames=("fn", "block_q", "block_k"))
def out_and_grads(q, k, v, start, end, cotangent, *, fn, block_q=32, block_k=32):
    """Outputs and (dq, dk, dv) for a cotangent; fn 'kernel' or 'dense'."""
    if fn == "kernel":
        f = lambda q, k, v: range_attention(q, k, v, start, end, block_q=block_q, block_k=block_k)
    else:
        f = lambda q, k, v: dense(q, k, v, start, end)
    out, vjp = jax.vjp(f, q, k, v)
    return (out,) + vjp(cotangent.astype(out.dtype))


def assert_close(actual, expected, atol):
    actual = np.asarray(jnp.asarray(actual, jnp.float32))
    expected = np.asarray(jnp.asarray(expected, jnp.float32))
    assert np.all(np.isfinite(actual))
    np.testing.assert_allclose(actual, expected, atol=atol, rtol=atol)


# ----------------------------------------------------------------------------- correctness

CASES = [
    # spec, n, heads, kv heads, head_dim, block_q, block_k, dtype
    ("random_sizes(1,5)", 50, 4, 2, 16, 16, 16, jnp.float32),
    ("random_sizes(1,5)", 100, 4, 1, 32, 32, 64, jnp.float32),
    ("blocks(1000)", 64, 2, 2, 16, 64, 32, jnp.float32),  # one giant target group
    ("ar", 100, 4, 4, 16, 16, 32, jnp.float32),  # all singletons
    ("random_sizes(1,5)", 100, 4, 2, 32, 64, 16, jnp.bfloat16),
    ("ar", 50, 2, 1, 16, 32, 32, jnp.bfloat16),
]


@pytest.mark.parametrize("spec,n,n_heads,n_kv,head_dim,block_q,block_k,dtype", CASES)
def test_matches_dense(spec, n, n_heads, n_kv, head_dim, block_q, block_k, dtype):
    rng = np.random.default_rng(n + block_q + block_k + n_heads)
    layouts = random_layouts(rng, 2, n, spec)
    start, end = (jnp.asarray(r) for r in _ranges_of(layouts))
    q, k, v = random_qkv(rng, 2, n, n_heads, n_kv, head_dim, dtype)
    cot = jnp.asarray(rng.normal(size=q.shape), dtype)
    got = out_and_grads(q, k, v, start, end, cot, fn="kernel", block_q=block_q, block_k=block_k)
    if dtype == jnp.bfloat16:  # the f32 reference of the same bf16 inputs
        q32, k32, v32, cot32 = (x.astype(jnp.float32) for x in (q, k, v, cot))
        want = out_and_grads(q32, k32, v32, start, end, cot32, fn="dense")
    else:
        want = out_and_grads(q, k, v, start, end, cot, fn="dense")
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert g.dtype == dtype, name
        assert_close(g, w, TOL[dtype])
    # Both halves carry gradient signal (query stream of targets, content stream of all).
    assert float(jnp.abs(got[1][:, :n]).max()) > 0 and float(jnp.abs(got[1][:, n:]).max()) > 0


def test_gqa_head_mapping():
    """Query head h reads kv head h // (Hq // Hkv): compare ratio 4 with explicitly repeated kv."""
    rng = np.random.default_rng(7)
    n = 50
    start, end = (jnp.asarray(r) for r in _ranges_of(random_layouts(rng, 2, n, "random_sizes(1,5)")))
    q, k, v = random_qkv(rng, 2, n, 4, 1, 16)
    cot = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
    got = out_and_grads(q, k, v, start, end, cot, fn="kernel")
    k4, v4 = jnp.repeat(k, 4, axis=2), jnp.repeat(v, 4, axis=2)
    want = out_and_grads(q, k4, v4, start, end, cot, fn="kernel")
    assert_close(got[0], want[0], 1e-6)
    assert_close(got[1], want[1], 1e-6)
    assert_close(got[2], want[2].sum(axis=2, keepdims=True), 1e-5)


# ----------------------------------------------------------------------------- isolation

def _two_docs_with_padding(n=64):
    sampler = orders.parse_sampler("random_sizes(1,4)")
    rng = np.random.default_rng(3)
    docs = [rng.integers(2, 50, size=20), rng.integers(2, 50, size=25)]
    groups = [sampler(len(d), rng) for d in docs]
    layouts = stack_layouts([build_layout(docs, groups, n, bos_id=BOS, pad_id=PAD)])
    return layouts, rng


def test_packed_documents_are_isolated():
    n = 64
    layouts, rng = _two_docs_with_padding(n)
    seg = layouts["segment_ids"][0]
    rows_a = np.concatenate([seg == 1, seg == 1])
    rows_b = np.concatenate([seg == 2, seg == 2])
    start, end = (jnp.asarray(r) for r in _ranges_of(layouts))
    q, k, v = random_qkv(rng, 1, n, 2, 1, 16)
    cot = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
    base = out_and_grads(q, k, v, start, end, cot, fn="kernel")
    noise = lambda x, rows: x + jnp.asarray(rows, x.dtype)[None, :, None, None] * 3.0
    pert = out_and_grads(noise(q, rows_a), noise(k, seg == 1), noise(v, seg == 1), start, end,
                         cot, fn="kernel")
    assert not np.array_equal(base[0][0, rows_a], pert[0][0, rows_a])
    for i in (0, 1):  # outputs and dq of document B's rows: bit-identical
        np.testing.assert_array_equal(base[i][0, rows_b], pert[i][0, rows_b])
    for i in (2, 3):  # dk, dv of document B's keys
        np.testing.assert_array_equal(base[i][0, seg == 2], pert[i][0, seg == 2])
    want = out_and_grads(q, k, v, start, end, cot, fn="dense")
    for g, w in zip(base, want):
        assert_close(g, w, 1e-4)


def test_padding_never_visible():
    n = 64
    layouts, rng = _two_docs_with_padding(n)
    seg = layouts["segment_ids"][0]
    real = np.concatenate([seg > 0, seg > 0])
    assert (seg == 0).sum() > 10
    start, end = (jnp.asarray(r) for r in _ranges_of(layouts))
    q, k, v = random_qkv(rng, 1, n, 2, 2, 16)
    cot = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
    base = out_and_grads(q, k, v, start, end, cot, fn="kernel")
    pad_keys = jnp.asarray(seg == 0, jnp.float32)[None, :, None, None]
    pert = out_and_grads(q, k + 1e3 * pad_keys, v - 1e3 * pad_keys, start, end, cot, fn="kernel")
    np.testing.assert_array_equal(base[0][0, real], pert[0][0, real])
    np.testing.assert_array_equal(base[1][0, real], pert[1][0, real])
    np.testing.assert_array_equal(base[2][0, seg > 0], pert[2][0, seg > 0])


# ----------------------------------------------------------------------------- empty rows

def test_empty_rows_give_exact_zeros():
    rng = np.random.default_rng(5)
    n, s = 40, 80
    start = rng.integers(0, n, size=(2, s))
    end = np.minimum(start + rng.integers(1, 20, size=(2, s)), n)
    empty = rng.random((2, s)) < 0.4
    empty[:, 16:48] = True  # whole q blocks without keys
    end = np.where(empty, start - rng.integers(0, 3, size=(2, s)), end)  # end <= start
    start, end = jnp.asarray(start, jnp.int32), jnp.asarray(end, jnp.int32)
    q, k, v = random_qkv(rng, 2, n, 2, 1, 16)
    cot = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
    got = out_and_grads(q, k, v, start, end, cot, fn="kernel", block_q=16, block_k=16)
    for g in got:
        assert np.all(np.isfinite(np.asarray(g)))
    assert np.all(np.asarray(got[0])[empty] == 0.0)
    assert np.all(np.asarray(got[1])[empty] == 0.0)
    want = out_and_grads(q, k, v, start, end, cot, fn="dense")
    for g, w in zip(got, want):
        assert_close(g, w, 1e-4)
    # Every row empty: zeros everywhere, including dk and dv.
    none = out_and_grads(q, k, v, start, start, cot, fn="kernel", block_q=16, block_k=16)
    for g in none:
        assert np.all(np.asarray(g) == 0.0)


# ----------------------------------------------------------------------------- transformations

def test_vmap():
    rng = np.random.default_rng(11)
    n = 50
    ranges = [_ranges_of(random_layouts(rng, 2, n, "random_sizes(1,5)")) for _ in range(2)]
    start = jnp.asarray(np.stack([r[0] for r in ranges]))
    end = jnp.asarray(np.stack([r[1] for r in ranges]))
    q, k, v = random_qkv(rng, 2, n, 2, 1, 16, extra=(2,))
    cot = jnp.asarray(rng.normal(size=q.shape), jnp.float32)
    got = jax.jit(jax.vmap(functools.partial(out_and_grads, fn="kernel")))(q, k, v, start, end, cot)
    want = jax.vmap(functools.partial(out_and_grads, fn="dense"))(q, k, v, start, end, cot)
    for g, w in zip(got, want):
        assert_close(g, w, 1e-4)


def test_scan_with_remat():
    """Two layers under lax.scan with jax.checkpoint, gradients w.r.t. weights and input."""
    rng = np.random.default_rng(13)
    n, n_heads, n_kv, d = 50, 2, 1, 16
    start, end = (jnp.asarray(r) for r in _ranges_of(random_layouts(rng, 2, n, "random_sizes(1,5)")))
    x = jnp.asarray(rng.normal(size=(2, 2 * n, n_heads, d)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(2, 3, d, d)) / np.sqrt(d), jnp.float32)
    cot = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

    def loss(x, weights, attend):
        @jax.checkpoint
        def layer(x, w):
            kv_in = x[:, :n, :n_kv]
            return x + attend(x @ w[0], kv_in @ w[1], kv_in @ w[2], start, end), None

        return jnp.sum(jax.lax.scan(layer, x, weights)[0] * cot)

    kernel = functools.partial(range_attention, block_q=32, block_k=16)
    got = jax.jit(jax.value_and_grad(functools.partial(loss, attend=kernel), (0, 1)))(x, weights)
    want = jax.jit(jax.value_and_grad(functools.partial(loss, attend=dense), (0, 1)))(x, weights)
    assert_close(got[0], want[0], 1e-3)
    for g, w in zip(got[1], want[1]):
        assert_close(g, w, 2e-4)


# ----------------------------------------------------------------------------- block skipping

def test_visited_blocks_match_analytic_count_and_skip_half():
    rng = np.random.default_rng(17)
    n, block = 256, 32
    layouts = random_layouts(rng, 2, n, "random_sizes(1,5)", max_docs=1, fill=(0.85, 1.0))
    start_np, end_np = _ranges_of(layouts)
    start, end = jnp.asarray(start_np), jnp.asarray(end_np)
    q, k, v = random_qkv(rng, 2, n, 2, 1, 16)
    out, visits = range_attention(q, k, v, start, end, block_q=block, block_k=block,
                                  return_visits=True)
    assert visits.shape == (2, 2, 2 * n // block)
    analytic = block_visits(start_np, end_np, block, block, n)
    for h in range(2):
        assert int(visits[:, h].sum()) == analytic
    ratio = analytic / dense_block_count(start_np, end_np, block, block, n)
    assert 0.4 <= ratio <= 0.65, ratio
    assert_close(out, dense(q, k, v, start, end), 1e-4)


def test_visits_count_with_ragged_sizes():
    rng = np.random.default_rng(19)
    n = 50
    start_np, end_np = _ranges_of(random_layouts(rng, 3, n, "random_sizes(1,5)"))
    q, k, v = random_qkv(rng, 3, n, 2, 2, 16)
    _, visits = range_attention(q, k, v, jnp.asarray(start_np), jnp.asarray(end_np), block_q=16,
                                block_k=32, return_visits=True)
    analytic = block_visits(start_np, end_np, 16, 32, n)
    assert [int(visits[:, h].sum()) for h in range(2)] == [analytic, analytic]
    assert analytic < dense_block_count(start_np, end_np, 16, 32, n)


def test_dkdv_lists_cover_exactly_the_touched_pairs():
    rng = np.random.default_rng(23)
    n, bq, bk = 100, 16, 32
    start_np, end_np = _ranges_of(random_layouts(rng, 2, n, "random_sizes(1,5)"))
    s_pad, n_kb = 208, 4  # 2n padded to 16, n padded to 32
    start = np.pad(start_np, ((0, 0), (0, s_pad - 2 * n)))
    end = np.pad(end_np, ((0, 0), (0, s_pad - 2 * n)))
    count, blocks = _key_block_lists(jnp.asarray(start), jnp.asarray(end), bq, bk, n_kb)
    count, blocks = np.asarray(count), np.asarray(blocks)
    cols = np.arange(n_kb * bk)
    for b in range(2):
        sees = (cols >= start[b, :, None]) & (cols < end[b, :, None])  # [S, keys]
        touched = sees.reshape(s_pad // bq, bq, n_kb, bk).any(axis=(1, 3))  # [nQ, nK]
        for j in range(n_kb):
            expected = np.flatnonzero(touched[:, j])
            assert count[b, j] == expected.size
            np.testing.assert_array_equal(blocks[b, j, : count[b, j]], expected)
    assert count.sum() < 2 * n_kb * (s_pad // bq)


def test_rejects_bad_block_sizes():
    q, k, v = random_qkv(np.random.default_rng(0), 1, 8, 1, 1, 16)
    ranges = jnp.zeros((1, 16), jnp.int32)
    with pytest.raises(ValueError, match="power of two"):
        range_attention(q, k, v, ranges, ranges, block_q=24)
    with pytest.raises(ValueError, match="power of two"):
        range_attention(q, k, v, ranges, ranges, block_k=8)
