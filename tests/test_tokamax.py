"""The `tokamax` attention backend, run on the CPU through tokamax's own XLA reference
implementation with the same Mask object the GPU kernel gets, against the dense `xla` backend:
values and gradients, both streams, GQA, packed documents, padding, one giant group, singletons."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("tokamax")

from a3jax.layout import (  # noqa: E402
    build_layout,
    key_ranges,  # noqa: E402
    stack_layouts,
)
from a3jax.model.attention import resolve_backend, two_stream_attention  # noqa: E402
from tests.test_kernels import random_layouts  # noqa: E402

BOS, PAD = 1, 0


def _inputs(rng, batch, n, heads, kv_heads, head_dim=16):
    def draw(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    return (draw(batch, n, heads, head_dim), draw(batch, n, heads, head_dim),
            draw(batch, n, kv_heads, head_dim), draw(batch, n, kv_heads, head_dim))


@functools.partial(jax.jit, static_argnames=("backend", "fused", "streams"))
def _out_and_grads(qc, qq, k, v, segment_ids, groups, cot_c, cot_q, *, backend, fused=True,
                   streams=(True, True)):
    def f(qc, qq, k, v):
        oc, oq = two_stream_attention(qc if streams[0] else None, qq if streams[1] else None, k, v,
                                      segment_ids, groups, backend=backend, tokamax_fused=fused)
        return oc, oq

    outs, vjp = jax.vjp(f, qc, qq, k, v)
    cots = tuple(None if o is None else c for o, c in zip(outs, (cot_c, cot_q)))
    return outs, vjp(cots)


def _compare(layouts, heads, kv_heads, rng, fused=True, streams=(True, True)):
    seg = jnp.asarray(layouts["segment_ids"])
    groups = jnp.asarray(layouts["groups"])
    b, n = seg.shape
    qc, qq, k, v = _inputs(rng, b, n, heads, kv_heads)
    real = (seg > 0)[:, :, None, None]
    # Padding rows' outputs are unspecified: their cotangents are zero, and only real rows compare.
    cot_c = jnp.asarray(rng.normal(size=qc.shape), jnp.float32) * real
    cot_q = jnp.asarray(rng.normal(size=qq.shape), jnp.float32) * real
    got = _out_and_grads(qc, qq, k, v, seg, groups, cot_c, cot_q, backend="tokamax", fused=fused,
                         streams=streams)
    want = _out_and_grads(qc, qq, k, v, seg, groups, cot_c, cot_q, backend="xla", streams=streams)
    (got_outs, got_grads), (want_outs, want_grads) = got, want
    for g, w in zip(got_outs, want_outs):
        if w is None:
            assert g is None
            continue
        np.testing.assert_allclose(np.asarray(g * real), np.asarray(w * real), atol=1e-5, rtol=1e-5)
    for name, g, w in zip(("dq_content", "dq_query", "dk", "dv"), got_grads, want_grads):
        assert np.all(np.isfinite(np.asarray(g))), name
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=1e-5, err_msg=name)
    return got_outs


@pytest.mark.parametrize("kv_heads", [4, 2, 1])  # GQA 1, 2, 4
@pytest.mark.parametrize("fused", [True, False])
def test_packed_documents_with_padding_match_xla(kv_heads, fused):
    rng = np.random.default_rng(kv_heads + 10 * fused)
    layouts = random_layouts(rng, 2, 64, "random_sizes(1,5)", max_docs=3, fill=(0.6, 0.9))
    assert (layouts["segment_ids"] == 0).any() and layouts["segment_ids"].max() >= 2
    _compare(layouts, 4, kv_heads, rng, fused=fused)


@pytest.mark.parametrize("spec", ["ar", "two_group(0.9,0.9)", "random(4)", "span(0.3,0.6)"])
def test_singletons_and_giant_groups_match_xla(spec):
    rng = np.random.default_rng(7)
    layouts = random_layouts(rng, 2, 48, spec, max_docs=1, fill=(1.0, 1.0))
    groups = layouts["groups"]
    if spec.startswith("two_group"):  # one giant group holding ~90% of the targets
        assert np.bincount(groups[0])[1:].max() > 30
    _compare(layouts, 4, 2, rng)


@pytest.mark.parametrize("streams", [(True, False), (False, True)])
def test_single_stream_calls_match_xla(streams):
    rng = np.random.default_rng(3)
    layouts = random_layouts(rng, 2, 40, "random(3)", max_docs=2)
    _compare(layouts, 4, 2, rng, streams=streams)


def test_rows_that_see_nothing_are_zero_with_zero_gradients():
    """Query rows of the context group (BOS) and padding rows: output exactly 0, and the gradient
    they pass to q is exactly 0 for any cotangent."""
    rng = np.random.default_rng(5)
    doc = rng.integers(2, 50, size=20)
    layout = stack_layouts([build_layout([doc], [np.arange(1, 21)], 32, bos_id=BOS, pad_id=PAD)])
    seg = jnp.asarray(layout["segment_ids"])
    groups = jnp.asarray(layout["groups"])
    qc, qq, k, v = _inputs(rng, 1, 32, 4, 2)
    empty_query = np.asarray((seg == 0) | (groups == 0))[0]  # BOS query row and padding
    assert empty_query.sum() == 12

    def f(qq):
        return two_stream_attention(None, qq, k, v, seg, groups, backend="tokamax")[1]

    out, vjp = jax.vjp(f, qq)
    assert np.all(np.asarray(out)[0, empty_query] == 0)
    (dq,) = vjp(jnp.ones_like(out))
    assert np.all(np.isfinite(np.asarray(dq)))
    assert np.all(np.asarray(dq)[0, empty_query] == 0)
    assert np.any(np.asarray(dq)[0, ~empty_query] != 0)


def test_ranges_fed_to_tokamax_are_the_layout_ranges():
    """The Mask's k_start/k_end are the sorted layout's ranges (real rows untouched); only rows
    that see nothing get a one-key dummy at their own slot."""
    from a3jax.kernels.tokamax_attention import _safe_ranges

    rng = np.random.default_rng(1)
    layouts = random_layouts(rng, 2, 64, "random_sizes(1,4)", max_docs=3)
    seg, groups = jnp.asarray(layouts["segment_ids"]), jnp.asarray(layouts["groups"])
    key_start, content_end, query_end = key_ranges(seg, groups)
    for end in (content_end, query_end):
        start, stop, sees = _safe_ranges(key_start, end, seg > 0)
        sees = np.asarray(sees)
        np.testing.assert_array_equal(np.asarray(start)[sees], np.asarray(key_start)[sees])
        np.testing.assert_array_equal(np.asarray(stop)[sees], np.asarray(end)[sees])
        own = np.broadcast_to(np.arange(64), sees.shape)
        np.testing.assert_array_equal(np.asarray(start)[~sees], own[~sees])
        np.testing.assert_array_equal(np.asarray(stop)[~sees], own[~sees] + 1)


def test_a_leak_is_caught():
    """The comparison has power: widening every content range by one key changes the outputs."""
    from a3jax.kernels import tokamax_attention as ta

    rng = np.random.default_rng(2)
    layouts = random_layouts(rng, 1, 32, "random(4)", max_docs=1, fill=(1.0, 1.0))
    seg, groups = jnp.asarray(layouts["segment_ids"]), jnp.asarray(layouts["groups"])
    qc, _, k, v = _inputs(rng, 1, 32, 4, 2)
    key_start, content_end, _ = key_ranges(seg, groups)
    exact = ta.range_streams(qc, k, v, [key_start], [content_end], seg > 0, implementation="xla")
    leaky = ta.range_streams(qc, k, v, [key_start], [jnp.minimum(content_end + 1, 32)], seg > 0,
                             implementation="xla")
    assert not np.allclose(np.asarray(exact), np.asarray(leaky), atol=1e-3)


def test_tokamax_on_cpu_resolves_and_auto_does_not_pick_it():
    assert resolve_backend("tokamax", "cpu") == "tokamax"
    assert resolve_backend("auto", "cpu") == "xla"


def test_causal_variant_path_matches_the_group_rule_on_ar_layouts():
    """causal=True (the causal variant, 'ar' layouts only) runs tokamax's causal mask with
    k_start = document start: the same values and gradients as xla's group rule."""
    rng = np.random.default_rng(11)
    layouts = random_layouts(rng, 2, 64, "ar", max_docs=3, fill=(0.7, 0.9))
    seg, groups = jnp.asarray(layouts["segment_ids"]), jnp.asarray(layouts["groups"])
    qc, _, k, v = _inputs(rng, 2, 64, 4, 2)
    real = (seg > 0)[:, :, None, None]
    cot = jnp.asarray(rng.normal(size=qc.shape), jnp.float32) * real

    def run(backend, causal):
        def f(qc, k, v):
            return two_stream_attention(qc, None, k, v, seg, groups, backend=backend, causal=causal)[0]

        out, vjp = jax.vjp(f, qc, k, v)
        return (out * real,) + vjp(cot)

    for got, want in zip(run("tokamax", True), run("xla", False)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)


def test_half_precision_kernels_refuse_float32_on_a_gpu():
    """Measured on an H200: cuDNN and tokamax reject float32 inputs. auto computes float32 with xla
    there; an explicit choice is an error that names the fix."""
    assert resolve_backend("auto", "gpu", dtype="float32") == "xla"
    for name in ("tokamax", "cudnn"):
        with pytest.raises(ValueError, match="model.dtype=bfloat16"):
            resolve_backend(name, "gpu", dtype="float32")
    assert resolve_backend("pallas", "gpu", dtype="float32") == "pallas"
