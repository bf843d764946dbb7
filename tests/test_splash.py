"""The TPU splash backend (static block-causal mask over grid-aligned rows), run in Pallas
interpret mode on CPU, against the dense XLA reference: values, gradients, empty rows, packing,
under jit / vmap / scan + remat, sharded, and in training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_group_grid import aligned_rows

from a3jax.kernels.splash import TwoStreamBlockMask, splash_two_stream
from a3jax.layout import grid_violations
from a3jax.model.attention import resolve_backend, two_stream_attention
from a3jax.train.loop import train
from a3jax.train.metrics import read_metrics

from conftest import fast_compile_options, micro_config

TOL = {jnp.float32: 1e-4, jnp.bfloat16: 2e-2}


def fast_jit(fn):
    """jax.jit(fn), compiled when first called. Interpret-mode kernels make big graphs whose
    compile dominates the test time: on CPU they (reference and kernel alike) compile without the
    backend optimisations (conftest.fast_compile_options)."""
    def call(*args):
        return jax.jit(fn).lower(*args).compile(compiler_options=fast_compile_options())(*args)

    return call


def inputs(seed, b, n, h, kv, d, dtype):
    keys = jax.random.split(jax.random.key(seed), 4)
    return (jax.random.normal(keys[0], (b, n, h, d), dtype), jax.random.normal(keys[1], (b, n, h, d), dtype),
            jax.random.normal(keys[2], (b, n, kv, d), dtype), jax.random.normal(keys[3], (b, n, kv, d), dtype))


def attend(backend, streams, qc, qq, k, v, seg, grp, g):
    out = two_stream_attention(qc if streams[0] else None, qq if streams[1] else None, k, v, seg, grp,
                               backend=backend, group_size=g if backend == "splash" else None)
    return [o for o in out if o is not None]


def jit_attention(backend, g):
    """Jitted two_stream_attention (interpret-mode Pallas is slow op by op, fast compiled)."""
    return fast_jit(lambda *xs: two_stream_attention(*xs, backend=backend, group_size=g))


def real_rows(seg, streams):
    real = np.asarray(seg) > 0
    return [real for used in streams if used]


CASES = [  # n, g, spec, heads, kv heads, dtype, streams
    (256, 4, "random(4)", 4, 2, jnp.float32, (True, True)),
    (200, 1, "ar", 4, 4, jnp.float32, (True, True)),      # N not a multiple of 128, GQA 1
    (256, 2, "blocks(2)", 4, 1, jnp.bfloat16, (True, True)),  # GQA 4, bf16
    (384, 128, "random(128)", 2, 1, jnp.float32, (True, True)),  # g >= block: whole blocks empty
    (160, 8, "random(8)", 2, 1, jnp.float32, (True, False)),   # content stream only
    (160, 3, "random(3)", 2, 2, jnp.float32, (False, True)),   # query stream only, odd g
]


@pytest.mark.parametrize("n,g,spec,h,kv,dtype,streams", CASES,
                         ids=[f"n{c[0]}-g{c[1]}-h{c[3]}kv{c[4]}-{jnp.dtype(c[5]).name}-{int(c[6][0])}{int(c[6][1])}"
                              for c in CASES])
def test_matches_dense_values_and_gradients(n, g, spec, h, kv, dtype, streams):
    rows = aligned_rows(np.random.default_rng(n + g), n, g, spec, batch=2)
    assert not grid_violations(rows["segment_ids"], rows["groups"], g).any()
    seg, grp = jnp.asarray(rows["segment_ids"]), jnp.asarray(rows["groups"])
    qc, qq, k, v = inputs(g, 2, n, h, kv, 32, dtype)
    weights = [jax.random.normal(jax.random.key(i + 10), (2, n, h, 32), jnp.float32) * r[:, :, None, None]
               for i, r in enumerate(real_rows(seg, streams))]

    def loss(backend, *xs):
        outs = attend(backend, streams, *xs, seg, grp, g)
        return sum(jnp.sum(o.astype(jnp.float32) * w) for o, w in zip(outs, weights))

    tol = TOL[dtype]
    ref = fast_jit(lambda *xs: attend("xla", streams, *xs, seg, grp, g))(qc, qq, k, v)
    got = fast_jit(lambda *xs: attend("splash", streams, *xs, seg, grp, g))(qc, qq, k, v)
    for r, o, real in zip(ref, got, real_rows(seg, streams)):
        np.testing.assert_allclose(np.asarray(o, np.float32)[real], np.asarray(r, np.float32)[real], atol=tol, rtol=tol)
        assert np.isfinite(np.asarray(o, np.float32)).all()
    grads_ref = fast_jit(jax.grad(lambda *xs: loss("xla", *xs), argnums=(0, 1, 2, 3)))(qc, qq, k, v)
    grads = fast_jit(jax.grad(lambda *xs: loss("splash", *xs), argnums=(0, 1, 2, 3)))(qc, qq, k, v)
    for name, a, b, used in zip(("dq_content", "dq_query", "dk", "dv"), grads, grads_ref, streams + (True, True)):
        if used:
            scale = max(1.0, float(jnp.abs(b.astype(jnp.float32)).max()))
            np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                       atol=tol * scale, rtol=tol, err_msg=name)


@pytest.mark.parametrize("g,n", [(4, 256), (128, 384)])
def test_rows_that_see_nothing_give_zeros_and_zero_gradients(g, n):
    rows = aligned_rows(np.random.default_rng(3), n, g, f"random({g})", batch=2)
    seg, grp = jnp.asarray(rows["segment_ids"]), jnp.asarray(rows["groups"])
    qc, qq, k, v = inputs(0, 2, n, 2, 1, 32, jnp.float32)
    empty_query = (rows["segment_ids"] == 0) | (rows["groups"] == 0)  # padding, BOS: no key
    assert empty_query.sum() > 2
    out_c, out_q = jit_attention("splash", g)(qc, qq, k, v, seg, grp)
    assert np.all(np.asarray(out_q)[empty_query] == 0)
    assert np.all(np.asarray(out_c)[rows["segment_ids"] == 0] == 0)

    def loss(qq, k, v):
        return jnp.sum(two_stream_attention(qc, qq, k, v, seg, grp, backend="splash", group_size=g)[1] ** 2)

    dq, dk, dv = fast_jit(jax.grad(loss, argnums=(0, 1, 2)))(qq, k, v)
    assert all(np.isfinite(np.asarray(x)).all() for x in (dq, dk, dv))
    assert np.all(np.asarray(dq)[empty_query] == 0)
    padding = rows["segment_ids"] == 0
    assert np.all(np.asarray(dk)[padding] == 0) and np.all(np.asarray(dv)[padding] == 0)  # never visible


def test_packed_documents_are_isolated():
    rows = aligned_rows(np.random.default_rng(5), 256, 4, "random(4)", batch=1)
    seg = rows["segment_ids"][0]
    assert len(set(seg.tolist()) - {0}) >= 2
    qc, qq, k, v = inputs(1, 1, 256, 2, 1, 32, jnp.float32)
    args = (jnp.asarray(rows["segment_ids"]), jnp.asarray(rows["groups"]))
    attention = jit_attention("splash", 4)
    before = attention(qc, qq, k, v, *args)
    doc_a = jnp.asarray(seg == 1)[None, :, None, None]
    bump = lambda x: jnp.where(doc_a, x + 3.0, x)  # noqa: E731
    after = attention(bump(qc), bump(qq), bump(k), bump(v), *args)
    others = seg != 1
    for b, a in zip(before, after):
        np.testing.assert_array_equal(np.asarray(a)[0, others], np.asarray(b)[0, others])
        assert not np.allclose(np.asarray(a)[0, seg == 1], np.asarray(b)[0, seg == 1])


def test_under_jit_vmap_and_scan_with_remat():
    n, g = 128, 4
    rows = aligned_rows(np.random.default_rng(7), n, g, "blocks(4)", batch=2)
    seg, grp = jnp.asarray(rows["segment_ids"]), jnp.asarray(rows["groups"])
    qc, qq, k, v = inputs(2, 2, n, 2, 1, 16, jnp.float32)
    real = np.asarray(seg) > 0

    def layers(backend, qc, qq):
        def body(carry, _):
            c, q = two_stream_attention(carry[0], carry[1], k, v, seg, grp, backend=backend,
                                        group_size=g if backend == "splash" else None)
            return (c + carry[0], q + carry[1]), None

        (c, q), _ = jax.lax.scan(jax.checkpoint(body), (qc, qq), None, length=2)
        return jnp.sum(c * real[:, :, None, None]) + jnp.sum(q * real[:, :, None, None])

    for fn in (lambda b: fast_jit(jax.value_and_grad(lambda *x: layers(b, *x), argnums=(0, 1))),):
        (val_s, grads_s), (val_x, grads_x) = fn("splash")(qc, qq), fn("xla")(qc, qq)
        np.testing.assert_allclose(val_s, val_x, rtol=1e-4)
        for a, b in zip(grads_s, grads_x):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)
    # vmap over an extra leading axis (two independent batches)
    stacked = [jnp.stack([x, x * 0.5]) for x in (qc, qq, k, v)]
    out = fast_jit(jax.vmap(lambda a, b, c, d: two_stream_attention(a, b, c, d, seg, grp, backend="splash",
                                                                    group_size=g)))(*stacked)
    ref = fast_jit(jax.vmap(lambda a, b, c, d: two_stream_attention(a, b, c, d, seg, grp, backend="xla")))(*stacked)
    for o, r in zip(out, ref):
        np.testing.assert_allclose(np.asarray(o)[:, real], np.asarray(r)[:, real], atol=1e-4)


def test_mask_blocks_skip_what_the_static_mask_never_needs():
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask_info as info

    n, g = 1024, 4
    mask = TwoStreamBlockMask(n, g, (True, True))
    dense = mask[0:2 * n, 0:n]
    block = 128
    counts = dense.reshape(2 * n // block, block, n // block, block).any(axis=(1, 3))
    # about half of the 2N x N blocks are visited: (nb(nb+1)/2) per stream, nb = N / block
    nb = n // block
    assert counts.sum() == 2 * nb * (nb + 1) // 2
    fwd, _ = info.process_mask(info.mask_lib.MultiHeadMask([mask]), (block, block))
    visited = int((np.asarray(fwd.block_mask) > 0).sum())
    assert visited == counts.sum() and visited / counts.size == pytest.approx((nb + 1) / (2 * nb))


def test_backend_resolution():
    assert resolve_backend("splash", "tpu", True) == "splash"
    assert resolve_backend("splash", "tpu", False) == "xla"  # eval / scoring batches are not aligned
    assert resolve_backend("auto", "tpu", True) == "splash"
    assert resolve_backend("auto", "tpu", False) == "xla"
    assert resolve_backend("auto", "gpu", True) == "cudnn"
    with pytest.raises(ValueError, match="splash' is the TPU kernel"):
        resolve_backend("splash", "gpu", True)
    with pytest.raises(ValueError, match="rows but streams"):
        splash_two_stream(jnp.zeros((1, 10, 1, 8)), jnp.zeros((1, 8, 1, 8)), jnp.zeros((1, 8, 1, 8)),
                          jnp.ones((1, 8), jnp.int32), group_size=2, streams=(True, True))


SPLASH_TRAIN = ["data.align_groups=True", "orders.group_size_scope=batch",
                "orders.curriculum=ar until 2; random(4)", "model.n_heads=4", "model.n_kv_heads=2",
                "train.steps=4", "train.eval_every=1000", "train.checkpoint_every=1000",
                "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]


@pytest.mark.slow
def test_splash_trains_like_xla_inside_the_sharded_step(tmp_path, small_corpus):
    """On 8 fake devices, mesh (2, 2, 2): splash runs in shard_map over batch and heads, through
    a change of group size (ar, then random(4)); its losses equal the xla backend's."""
    runs = {}
    for name, extra in [("xla", ["model.attention=xla"]), ("splash", ["model.attention=splash"])]:
        train(micro_config(*SPLASH_TRAIN, *extra), tmp_path / name, corpus=small_corpus, progress=False)
        runs[name] = [r["train/loss"] for r in read_metrics(tmp_path / name) if "train/loss" in r]
    assert len(runs["splash"]) == 4
    np.testing.assert_allclose(runs["splash"], runs["xla"], atol=1e-5, rtol=0)
