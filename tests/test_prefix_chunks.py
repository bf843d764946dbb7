"""Static prefix chunking (model/prefix_chunks.py) equals the unchunked dense masked attention."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from a3jax import layout as layout_lib
from a3jax import orders
from a3jax.model.attention import _masked_attention, visibility_masks
from a3jax.model.prefix_chunks import chunk_boundaries, prefix_chunked_streams

from conftest import fast_compile_options

N = 61  # not a multiple of any chunk count tested
CHUNKS = (1, 2, 3, 4, 7)
STREAMS = ((True, True), (True, False), (False, True))
BOS, PAD = 10, 11


def packed_layout(seed, batch=2, seq_len=N, giant=True):
    """Sorted rows of 1-3 packed documents and trailing padding; with giant=True the first row's
    first document is one giant group (all tokens in group 1), reaching far past any chunk."""
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(batch):
        if giant and b == 0:
            docs = [rng.integers(0, 9, size=40), rng.integers(0, 9, size=8)]
            specs = ["random(1000)", "random_sizes(1,4)"]
        else:
            docs = [rng.integers(0, 9, size=rng.integers(3, 18)) for _ in range(rng.integers(1, 4))]
            specs = ["random_sizes(1,5)"] * len(docs)
        groups = [orders.parse_sampler(s)(len(d), rng) for s, d in zip(specs, docs)]
        rows.append(layout_lib.build_layout(docs, groups, seq_len, bos_id=BOS, pad_id=PAD))
    return layout_lib.stack_layouts(rows)


def aligned_layout(seed, g, batch=2, seq_len=N):
    """Grid-aligned rows: each BOS at a slot = g - 1 (mod g), then its groups of exactly g tokens
    (`random(g)`, the last may be short) in the aligned blocks right after; padding elsewhere."""
    rng = np.random.default_rng(seed)
    sampler = orders.parse_sampler(f"random({g})")
    rows = []
    for _ in range(batch):
        row = {name: np.zeros(seq_len, np.int32) for name in layout_lib.FIELDS}
        row["tokens"][:] = PAD
        cursor, segment = 0, 1
        while True:
            length = int(rng.integers(1, 5 * g))
            bos = cursor + (g - 1 - cursor) % g
            if bos + length + 1 > seq_len:
                break
            doc = rng.integers(0, 9, size=length)
            one = layout_lib.build_layout([doc], [sampler(length, rng)], length + 1, bos_id=BOS, pad_id=PAD)
            for name in layout_lib.FIELDS:
                row[name][bos:bos + length + 1] = one[name]
            row["segment_ids"][bos:bos + length + 1] = segment
            cursor, segment = bos + length + 1, segment + 1
        rows.append(row)
    batch_layout = layout_lib.stack_layouts(rows)
    # the grid property itself: every real (segment, group) lies inside one aligned block
    seg, grp = batch_layout["segment_ids"], batch_layout["groups"]
    block = np.arange(seq_len) // g
    for b in range(batch):
        for s in set(seg[b][seg[b] > 0].tolist()):
            for k in set(grp[b][seg[b] == s].tolist()):
                assert len(set(block[(seg[b] == s) & (grp[b] == k)].tolist())) == 1
    assert (seg > 0).sum() > seq_len  # mostly real tokens across the batch
    if hasattr(layout_lib, "grid_violations"):  # and by layout.py's own definition
        assert not layout_lib.grid_violations(seg, grp, g).any()
    return batch_layout


def inputs(streams, dtype, seed=0, batch=2, seq_len=N, heads=4, kv_heads=2, head_dim=8):
    """q, k, v in dtype and a float32 cotangent for the output (numpy draws: nothing to compile)."""
    rng = np.random.default_rng(seed)
    rows = seq_len * sum(streams)
    shapes = [(batch, rows, heads, head_dim), (batch, seq_len, kv_heads, head_dim),
              (batch, seq_len, kv_heads, head_dim)]
    q, k, v = (rng.standard_normal(shape, np.float32).astype(dtype) for shape in shapes)
    return q, k, v, rng.standard_normal(shapes[0], np.float32)


def compiled(fn, *args):
    """jax.jit(fn) compiled for args. These graphs are tiny and compiling them dominates the test
    time: on CPU, compile without the backend optimisations (conftest.fast_compile_options; about
    3x faster; the numbers are checked against a reference compiled alike)."""
    return jax.jit(fn).lower(*args).compile(compiler_options=fast_compile_options())


def reference(streams, q, k, v, segment_ids, groups):
    content_mask, query_mask = visibility_masks(segment_ids, groups)
    masks = [m for m, used in zip((content_mask, query_mask), streams) if used]
    return _masked_attention(q, k, v, jnp.concatenate(masks, 1))


def value_and_grads(fn, q, k, v, cotangent):
    out, vjp = jax.vjp(fn, q, k, v)
    return (out,) + vjp(cotangent.astype(out.dtype))


def max_error(got, want):
    """Largest |got - want| over the output and the q, k, v gradients, relative to max(1, |want|)."""
    pairs = [(np.asarray(a, np.float32), np.asarray(b, np.float32)) for a, b in zip(got, want)]
    return max(float(np.max(np.abs(a - b))) / max(1.0, float(np.max(np.abs(b)))) for a, b in pairs)


TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}
ROWS = {(True, True): slice(None), (True, False): slice(0, N), (False, True): slice(N, None)}
NAME = {(True, True): "both", (True, False): "content", (False, True): "query"}


def check(layout, cases, group_size=None, real_rows_only=False):
    """Each case (streams, chunks, dtype): chunked output and q, k, v gradients (for a random
    cotangent) against the dense reference. One compiled reference of both streams per dtype
    serves the one-stream cases: slice its rows, and zero the other stream's cotangent for the
    k, v gradients. With real_rows_only, padding rows are left out of the output and the
    cotangent (the documented exception of the content stream with a group size)."""
    seg, grp = jnp.asarray(layout["segment_ids"]), jnp.asarray(layout["groups"])
    real = np.tile(layout["segment_ids"] > 0, (1, 2))[:, :, None, None]
    errors = {}
    for dtype in sorted({case[2] for case in cases}, key=str):
        q, k, v, cotangent = inputs((True, True), dtype)
        if real_rows_only:
            cotangent = cotangent * real
        ref_fn = functools.partial(value_and_grads, lambda q, k, v: reference((True, True), q, k, v, seg, grp))
        ref = compiled(ref_fn, q, k, v, cotangent)
        for streams, chunks, case_dtype in cases:
            if case_dtype != dtype:
                continue
            rows = ROWS[streams]
            stream_cotangent = np.zeros_like(cotangent)
            stream_cotangent[:, rows] = cotangent[:, rows]
            want = [np.asarray(x) for x in ref(q, k, v, stream_cotangent)]
            want[:2] = want[0][:, rows], want[1][:, rows]
            attend = functools.partial(prefix_chunked_streams, _masked_attention, streams,
                                       chunks=chunks, group_size=group_size)
            fn = functools.partial(value_and_grads, lambda q, k, v, attend=attend: attend(q, k, v, seg, grp))
            q_rows, cotangent_rows = q[:, rows], cotangent[:, rows]
            got = [np.asarray(x) for x in compiled(fn, q_rows, k, v, cotangent_rows)(q_rows, k, v, cotangent_rows)]
            assert got[0].shape == want[0].shape and got[0].dtype == dtype
            if real_rows_only:
                got[0], want[0] = got[0] * real[:, rows], want[0] * real[:, rows]
            error = max_error(got, want)
            assert error < TOLERANCE[dtype], (streams, chunks, group_size, dtype, error)
            errors[(NAME[streams], chunks, dtype.__name__)] = error
    print(f"\ngroup_size={group_size}: " + ", ".join(f"{k}: {e:.1e}" for k, e in errors.items()))
    return errors


def test_without_group_size_matches_dense_even_with_a_giant_group():
    layout = packed_layout(0)
    giant = (layout["segment_ids"][0] == 1) & (layout["groups"][0] == 1)
    assert giant.sum() == 40 and np.flatnonzero(giant).max() == 40  # content rows 1..40 see up to 40
    both, content, query = STREAMS
    check(layout, [(both, c, jnp.float32) for c in CHUNKS]
          + [(query, 2, jnp.float32), (query, 7, jnp.float32), (content, 4, jnp.float32),
             (both, 3, jnp.bfloat16), (query, 4, jnp.bfloat16)])


@pytest.mark.parametrize("g", [2, 4])
def test_with_group_size_matches_dense_on_a_grid_aligned_layout(g):
    both, content, query = STREAMS
    cases = {2: [(both, 2, jnp.float32), (both, 7, jnp.float32), (content, 3, jnp.float32),
                 (both, 4, jnp.bfloat16)],
             4: [(both, 3, jnp.float32), (both, 4, jnp.float32), (content, 7, jnp.float32),
                 (query, 2, jnp.float32), (content, 4, jnp.bfloat16)]}[g]
    check(aligned_layout(g, g), cases, group_size=g, real_rows_only=True)


def test_group_size_on_an_unaligned_layout_gives_a_different_answer():
    """The checks above have power: claiming a group size for a giant group drops visible keys."""
    layout = packed_layout(0)
    seg, grp = jnp.asarray(layout["segment_ids"]), jnp.asarray(layout["groups"])
    streams = (True, False)
    q, k, v, _ = inputs(streams, jnp.float32)
    want = compiled(lambda q, k, v: reference(streams, q, k, v, seg, grp), q, k, v)(q, k, v)
    chunked = lambda q, k, v: prefix_chunked_streams(_masked_attention, streams, q, k, v, seg, grp,
                                                     chunks=4, group_size=2)
    got = compiled(chunked, q, k, v)(q, k, v)
    assert np.max(np.abs(np.asarray(got) - np.asarray(want))) > 0.1


def test_under_jit_and_vmap():
    layout = packed_layout(1)
    seg, grp = jnp.asarray(layout["segment_ids"]), jnp.asarray(layout["groups"])
    streams = (True, True)
    extra = [inputs(streams, jnp.float32, seed=s) for s in range(2)]
    q, k, v = (np.stack([x[i] for x in extra]) for i in range(3))  # [E, B, ...]

    def grads(attention):
        loss = lambda q, k, v: jnp.sum(attention(streams, q, k, v) ** 2)
        return compiled(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1, 2))), q, k, v)

    chunked = functools.partial(prefix_chunked_streams, _masked_attention, segment_ids=seg, groups=grp, chunks=3)
    dense = lambda streams, q, k, v: reference(streams, q, k, v, seg, grp)
    (got_loss, got), (want_loss, want) = grads(chunked)(q, k, v), grads(dense)(q, k, v)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
    assert max_error(got, want) < 1e-5


def test_chunk_boundaries_rule():
    assert chunk_boundaries(61, 7) == (8, 16, 24, 32, 40, 56, 61)
    assert chunk_boundaries(4096, 4) == (1024, 2048, 3072, 4096)
    assert chunk_boundaries(100, 1) == (100,)
    assert chunk_boundaries(64, 4, group_size=3) == (24, 64)  # unit lcm(3, 8) = 24: fewer chunks
    for n, chunks, g in [(5, 4, None), (7, 100, None), (16, 100, 4), (1, 3, 2)]:  # degenerate
        ends = chunk_boundaries(n, chunks, g)
        assert ends[-1] == n and len(ends) == max(1, n // np.lcm(g or 8, 8))
    for n in range(1, 300, 7):
        for chunks in (2, 3, 5):
            for g in (None, 2, 3, 4):
                ends = chunk_boundaries(n, chunks, g)
                unit = int(np.lcm(g or 8, 8))
                assert ends[-1] == n and len(ends) <= chunks and list(ends) == sorted(set(ends))
                assert all(e % unit == 0 for e in ends[:-1])
    with pytest.raises(ValueError, match="chunks must be"):
        chunk_boundaries(64, 0)


def test_scored_elements_match_the_analytic_fraction():
    """Sum over dense calls of rows x keys: (1 + 1/C)/2 of N^2 per chunked stream."""

    def scored(streams, n, chunks, group_size):
        shapes = []

        def recording(q, k, v, mask):
            shapes.append(mask.shape[1:])
            return q

        seg = jax.ShapeDtypeStruct((1, n), jnp.int32)
        q = jax.ShapeDtypeStruct((1, n * sum(streams), 4, 8), jnp.float32)
        k = v = jax.ShapeDtypeStruct((1, n, 2, 8), jnp.float32)
        jax.eval_shape(lambda q, k, v, seg: prefix_chunked_streams(recording, streams, q, k, v, seg, seg,
                                                                   chunks=chunks, group_size=group_size),
                       q, k, v, seg)
        return len(shapes), sum(rows * keys for rows, keys in shapes)

    for chunks in (1, 2, 4, 8):
        fraction = (1 + 1 / chunks) / 2
        n = 512  # a multiple of 8 * chunks: exact
        assert scored((False, True), n, chunks, None) == (chunks, fraction * n * n)
        assert scored((True, True), n, chunks, None) == (chunks, (1 + fraction) * n * n)  # content full
        assert scored((True, True), n, chunks, 4) == (chunks, 2 * fraction * n * n)
        assert scored((True, False), n, chunks, 4) == (chunks, fraction * n * n)
        assert scored((True, False), n, chunks, None) == (1, n * n)
        n = 1001  # not a multiple: within rounding of the boundaries to 8
        calls, elements = scored((False, True), n, chunks, None)
        assert calls == chunks and abs(elements / (n * n) - fraction) < 8 / n


@pytest.mark.slow
def test_model_loss_and_gradients_with_chunks_equal_unchunked():
    """model.attention_chunks reaches the attention call: loss and parameter gradients of a
    micro model on grid-aligned rows equal the unchunked model's (with g the content stream
    is chunked too)."""
    from a3jax.model import ModelConfig
    from a3jax.train.step import abstract_params, init_model

    from support import model_loss

    rows = aligned_layout(3, 4, batch=2, seq_len=64)
    batch = {key: jnp.asarray(value) for key, value in rows.items()}
    base = dict(vocab_size=16, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64, dtype="float32")
    _, params = init_model(ModelConfig(**base), 0)  # the same parameters for both
    results = {}
    for chunks in (1, 4):
        model_def, _ = abstract_params(ModelConfig(**base, attention_chunks=chunks))
        loss = lambda p, d=model_def: model_loss(d.bind(p), batch, 4)[0]  # noqa: E731
        results[chunks] = jax.jit(jax.value_and_grad(loss))(params)
    np.testing.assert_allclose(results[4][0], results[1][0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(results[4][1]), jax.tree.leaves(results[1][1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
