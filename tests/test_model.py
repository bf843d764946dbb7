"""The A3 model's defining properties: exact normalisation, no mask leaks, layout invariance,
AR equivalence of the content stream, and loss hygiene."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from a3jax import layout as layout_lib
from a3jax import orders
from a3jax.layout import build_layout, stack_layouts
from a3jax.model import ModelConfig, Transformer

from support import model_log_probs, model_loss

BOS, PAD = 4, 3  # vocabulary of 5 including BOS


def tiny_model(variant="a3", seed=0, **overrides):
    kwargs = dict(variant=variant, vocab_size=5, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2,
                  ffn_dim=32, dtype="float32", init_std=0.5)
    kwargs.update(overrides)
    return Transformer(ModelConfig(**kwargs), rngs=nnx.Rngs(seed))


log_probs_fn = nnx.jit(model_log_probs)


def as_batch(layouts):
    return {k: jnp.asarray(v) for k, v in stack_layouts(layouts).items()}


GROUPINGS = {
    "ar": np.array([1, 2, 3, 4]),
    "blocks2": np.array([1, 1, 2, 2]),
    "random2": np.array([2, 1, 1, 2]),
    "variable": np.array([2, 1, 2, 2]),
    "one_group": np.array([1, 1, 1, 1]),
}


@pytest.mark.parametrize("query_input", ["vector", "shift"])
@pytest.mark.parametrize("name", sorted(GROUPINGS))
def test_probabilities_sum_to_one_over_all_sequences(name, query_input):
    model = tiny_model(query_input=query_input)
    groups = GROUPINGS[name]
    sequences = np.array(list(itertools.product(range(5), repeat=4)), np.int32)
    batch = as_batch([build_layout([seq], [groups], 6, bos_id=BOS, pad_id=PAD) for seq in sequences])
    log_probs, weights = log_probs_fn(model, batch)
    assert np.asarray(weights).sum(axis=1).tolist() == [4.0] * len(sequences)
    seq_log_prob = np.asarray(jnp.sum(log_probs * weights, axis=1), np.float64)
    probs = np.exp(seq_log_prob)
    assert abs(probs.sum() - 1.0) < 1e-5, probs.sum()
    # The check means something only if the model is far from uniform.
    assert probs.max() / probs.min() > 10


def test_causal_variant_normalises_too():
    model = tiny_model("causal")
    sequences = np.array(list(itertools.product(range(5), repeat=4)), np.int32)
    batch = as_batch([build_layout([s], [GROUPINGS["ar"]], 5, bos_id=BOS, pad_id=PAD) for s in sequences])
    log_probs, weights = log_probs_fn(model, batch)
    probs = np.exp(np.asarray(jnp.sum(log_probs * weights, axis=1), np.float64))
    assert abs(probs.sum() - 1.0) < 1e-5


def leak_influence(seed, query_input="vector"):
    """(influence [row i, key j] of the logits on the input embeddings, layout) of two random
    documents in random groups."""
    rng = np.random.default_rng(seed)
    sampler = orders.parse_sampler("random_sizes(1,3)")
    docs = [rng.integers(0, 3, size=7), rng.integers(0, 3, size=5)]
    groups = [sampler(len(d), rng) for d in docs]
    layout = build_layout(docs, groups, 16, bos_id=BOS, pad_id=PAD)
    batch = as_batch([layout])
    model = tiny_model(seed=seed, query_input=query_input)
    embeds = model.embed_tokens(batch["tokens"])[0]

    def logits_of(embeds_NxD):
        return model(batch, inputs_embeds=embeds_NxD[None])[0]

    jac = jax.jit(jax.jacrev(logits_of))(embeds)  # [N, V, N, D]
    return np.abs(np.asarray(jac)).sum(axis=(1, 3)), layout


@pytest.mark.parametrize("query_input", ["vector", "shift"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_mask_leak_in_gradients(seed, query_input):
    """A target's logits depend on no token of its own or a later group (for the shifted query
    stream: token i - 1 never reaches the row of position i unless i - 1 is in an earlier group)."""
    influence, layout = leak_influence(seed, query_input)
    seg, grp = layout["segment_ids"], layout["groups"]
    real = seg > 0
    visible = (seg[:, None] == seg[None, :]) & (grp[None, :] < grp[:, None])
    targets = layout["loss_mask"] > 0
    forbidden = targets[:, None] & ~visible
    assert forbidden.sum() > 20
    assert np.all(influence[forbidden] == 0.0), np.argwhere(influence * forbidden)
    # Padding never influences real rows; visible earlier groups do influence targets.
    assert np.all(influence[np.ix_(real, ~real)] == 0.0)
    assert np.all(influence[targets[:, None] & visible] > 0)


def test_the_leak_check_has_power_against_a_shift_that_ignores_groups(monkeypatch):
    """A shifted query stream that read token i - 1 whatever its group would leak: the gradient
    check above finds it."""
    from a3jax.model import transformer

    def leaky(segment_ids, positions, groups):
        previous, _ = layout_lib.previous_slots(segment_ids, positions, groups)
        return previous, (segment_ids > 0) & (positions > 0)  # "known" regardless of the groups

    monkeypatch.setattr(transformer, "previous_slots", leaky)
    influence, layout = leak_influence(0, "shift")
    seg, grp = layout["segment_ids"], layout["groups"]
    visible = (seg[:, None] == seg[None, :]) & (grp[None, :] < grp[:, None])
    forbidden = (layout["loss_mask"] > 0)[:, None] & ~visible
    assert np.any(influence[forbidden] > 0)


def test_previous_slots_finds_the_previous_position_and_whether_it_is_known():
    docs = [np.array([5, 6, 7, 8]), np.array([9, 9])]
    groups = [np.array([2, 1, 1, 3]), np.array([1, 1])]
    layout = build_layout(docs, groups, 10, bos_id=BOS, pad_id=PAD, align=1)
    previous, known = (np.asarray(a)[0] for a in layout_lib.previous_slots(
        layout["segment_ids"][None], layout["positions"][None], layout["groups"][None]))
    for slot in range(10):
        segment, position = layout["segment_ids"][slot], layout["positions"][slot]
        if segment == 0 or position == 0:
            assert not known[slot]
            continue
        prev = previous[slot]
        assert layout["segment_ids"][prev] == segment and layout["positions"][prev] == position - 1
        assert known[slot] == (layout["groups"][prev] < layout["groups"][slot])
    # doc 0 (groups 2 1 1 3): position 1 (after BOS), 4 (after 3: group 1 < 3); not 2 (after 1, a
    # later group) nor 3 (same group); doc 1: position 1 only
    assert known.sum() == 3


def test_logprobs_invariant_to_packing_and_document_order():
    rng = np.random.default_rng(3)
    model = tiny_model(vocab_size=5)
    doc_a, doc_b = rng.integers(0, 3, size=9), rng.integers(0, 3, size=6)
    sampler = orders.parse_sampler("random(2)")
    grp_a, grp_b = sampler(9, rng), sampler(6, rng)
    packings = [
        build_layout([doc_a, doc_b], [grp_a, grp_b], 20, bos_id=BOS, pad_id=PAD),
        build_layout([doc_b, doc_a], [grp_b, grp_a], 20, bos_id=BOS, pad_id=PAD),
        build_layout([doc_a], [grp_a], 20, bos_id=BOS, pad_id=PAD),
    ]
    logp, _ = log_probs_fn(model, as_batch(packings))
    logp = np.asarray(logp)
    by_position = []
    for row, a_segment in zip(range(3), [1, 2, 1]):
        mask = packings[row]["segment_ids"] == a_segment
        values = np.zeros(10)
        values[packings[row]["positions"][mask]] = logp[row][mask]
        by_position.append(values)
    np.testing.assert_allclose(by_position[0], by_position[1], atol=1e-6, rtol=0)
    np.testing.assert_allclose(by_position[0], by_position[2], atol=1e-6, rtol=0)
    assert np.all(by_position[0][1:] < 0)


@pytest.mark.parametrize("tie", [True, False])
def test_content_stream_equals_causal_model_under_ar_groups(tie):
    a3 = tiny_model("a3", tie_embeddings=tie, init_std=0.2)
    causal = tiny_model("causal", seed=7, tie_embeddings=tie, init_std=0.2)
    shared = nnx.state(a3, nnx.Param)
    del shared["query_embed"]
    nnx.update(causal, shared)
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 3, size=11), rng.integers(0, 3, size=4)]
    layout = build_layout(docs, [np.arange(1, 12), np.arange(1, 5)], 20, bos_id=BOS, pad_id=PAD)
    batch = as_batch([layout])
    content = a3.hidden_states(batch, full_content=True)["content"]
    reference = causal.hidden_states(batch)["content"]
    real = layout["segment_ids"] > 0
    np.testing.assert_allclose(np.asarray(content)[0][real], np.asarray(reference)[0][real], atol=1e-5)


def test_pad_tokens_change_no_loss_or_gradient():
    model = tiny_model()
    rng = np.random.default_rng(1)
    layout = build_layout([rng.integers(0, 3, size=6)], [np.array([1, 2, 1, 3, 2, 1])], 12,
                          bos_id=BOS, pad_id=PAD)
    other = dict(layout)
    other["tokens"] = np.where(layout["segment_ids"] == 0, 1, layout["tokens"]).astype(np.int32)
    assert not np.array_equal(other["tokens"], layout["tokens"])
    grad_fn = nnx.jit(nnx.value_and_grad(lambda m, b: model_loss(m, b)[0]))
    loss_a, grads_a = grad_fn(model, as_batch([layout]))
    loss_b, grads_b = grad_fn(model, as_batch([other]))
    assert float(loss_a) == float(loss_b)
    for a, b in zip(jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _, weights = log_probs_fn(model, as_batch([layout]))
    weights = np.asarray(weights)[0]
    assert np.all(weights[layout["segment_ids"] == 0] == 0)
    assert np.all(weights[layout["groups"] == 0] == 0)
    assert np.all(weights[(layout["groups"] > 0) & (layout["segment_ids"] > 0)] == 1)


def test_empty_rows_give_finite_zero_gradients():
    """Padding rows see no key and are seen by no real row, and the query row of BOS sees no key: the
    loss's gradient is finite everywhere and EXACTLY zero at the padding rows' inputs (no leak
    through a fully masked softmax), while the real rows that later groups read get gradients (the
    check has power)."""
    model = tiny_model()
    layout = build_layout([np.array([0, 1, 2])], [np.array([1, 1, 2])], 8, bos_id=BOS, pad_id=PAD)
    batch = as_batch([layout])
    embeds = model.embed_tokens(batch["tokens"])
    grads = nnx.jit(jax.grad(lambda e, m, b: model_loss_of_embeds(m, b, e)))(embeds, model, batch)
    grads = np.asarray(grads)[0]
    assert np.all(np.isfinite(grads))
    padding = layout["segment_ids"] == 0
    assert padding.sum() == 4
    assert np.all(grads[padding] == 0.0)
    read = ~padding & (layout["groups"] < layout["groups"].max())  # the last group's content is read by no one
    assert np.all(np.abs(grads[read]).max(axis=-1) > 0)
    params = nnx.jit(nnx.grad(lambda m, b: model_loss(m, b)[0]))(model, batch)
    for leaf in jax.tree.leaves(params):
        assert np.all(np.isfinite(np.asarray(leaf)))


def model_loss_of_embeds(model, batch, embeds):
    return model_loss_from(model, batch, model(batch, inputs_embeds=embeds))


def model_loss_from(model, batch, logits):
    from a3jax.loss import mean_loss

    return mean_loss(logits, batch, model.facts)[0]


def test_bfloat16_compute_tracks_float32():
    rng = np.random.default_rng(2)
    docs = [rng.integers(0, 3, size=12)]
    batch = as_batch([build_layout(docs, [orders.parse_sampler("random(3)")(12, rng)], 16,
                                   bos_id=BOS, pad_id=PAD)])
    f32 = tiny_model(init_std=0.1)
    bf16 = tiny_model(init_std=0.1, dtype="bfloat16")
    jit_loss = nnx.jit(model_loss)
    loss32, loss16 = float(jit_loss(f32, batch)[0]), float(jit_loss(bf16, batch)[0])
    assert abs(loss32 - loss16) < 2e-2 * abs(loss32)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16, nnx.Param)))


def _dots(jaxpr):
    """Every dot_general of a jaxpr, inner jaxprs (scan, remat, custom_vjp, jit) included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn
        for value in eqn.params.values():
            for inner in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(inner, "jaxpr", inner)
                if hasattr(inner, "eqns"):
                    yield from _dots(inner)


@pytest.mark.parametrize("variant, loss_chunk, remat", [
    ("a3", 0, "dots"), ("a3", 8, "none"), ("causal", 8, "dots"), ("mdlm", 0, "dots")])
def test_bfloat16_training_runs_every_projection_gemm_in_bfloat16(variant, loss_chunk, remat):
    """The train step's projection and head GEMMs, forward and backward, take bfloat16 operands
    (float32 accumulation is the backends'); a float32 x float32 one is what a float32 result
    type on a bf16 dot makes of its transpose: TF32 GEMMs on a GPU (BENCHMARKS.md, "Half-precision
    backward"). Attention's own dots (with batch dimensions) may stay float32 on the dense path."""
    from a3jax.train.step import model_loss as step_loss

    model = tiny_model(variant, dtype="bfloat16", remat=remat, d_model=24, ffn_dim=40, vocab_size=7)
    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 5, size=10)]
    batch = as_batch([build_layout(docs, [orders.parse_sampler("random(3)")(10, rng)], 12, bos_id=BOS,
                                   pad_id=PAD)])

    def loss(p):
        return step_loss(nnx.merge(graphdef, p), batch, loss_chunk=loss_chunk)[0]

    dots = list(_dots(jax.make_jaxpr(jax.grad(loss))(params).jaxpr))
    projections = [e for e in dots if not e.params["dimension_numbers"][1][0]]  # no batch dims
    assert len(projections) >= 7 * 3 + 3  # the scanned layer's 7 projections and the head, each forward + 2 backward
    wide = [(tuple(v.aval.dtype.name for v in e.invars), tuple(v.aval.shape for v in e.invars))
            for e in projections if any(v.aval.dtype != jnp.bfloat16 for v in e.invars)]
    assert not wide, f"float32 GEMMs in the bf16 step: {wide[:4]}"
    head = [e for e in projections if e.invars[1].aval.shape == (24, 7) and e.outvars[0].aval.shape[-1] == 7]
    assert head and all(e.outvars[0].aval.dtype == jnp.float32 for e in head)  # logits stay float32


def test_model_config_errors_name_the_value():
    with pytest.raises(ValueError, match="n_heads=7 does not divide model.d_model=128"):
        ModelConfig(d_model=128, n_heads=7)
    with pytest.raises(ValueError, match="n_kv_heads=3"):
        ModelConfig(n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match=r"unknown config key model.d_modle \(did you mean model.d_model\?\)"):
        ModelConfig.from_mapping({"d_modle": 3})
    with pytest.raises(ValueError, match=r"model.query_input='shift' shapes the query stream.*variant='causal'"):
        ModelConfig(variant="causal", query_input="shift")
    with pytest.raises(ValueError, match=r"model.query_input='previous' is not one of \('vector', 'shift'\)"):
        ModelConfig(query_input="previous")


def test_model_config_defaults_to_float32_compute():
    """A bare ModelConfig() computes in float32 (what every CPU config uses); the accelerator
    presets ask for bfloat16 explicitly."""
    from a3jax.configs import load_config, model_config

    assert ModelConfig().dtype == "float32"
    assert model_config(load_config("llama3_1b")).dtype == "bfloat16"


# ---- the shifted query stream: a converted causal model, exactly ---------------------------------

def _causal_and_shifted(dtype="float32", seed=0):
    """A random causal model and the same weights as a shifted-query a3 model (plus a query vector)."""
    from a3jax.model.params import abstract_params, causal_to_a3, init_model

    causal_cfg = ModelConfig(variant="causal", vocab_size=50, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2,
                             ffn_dim=64, dtype=dtype, init_std=0.3)
    causal_def, causal_params = init_model(causal_cfg, seed)
    a3_def, _ = abstract_params(ModelConfig(**{**causal_cfg.to_dict(), "rope_scaling": causal_cfg.rope_scaling,
                                               "variant": "a3", "query_input": "shift"}))
    a3_params, _ = causal_to_a3(jax.tree.map(np.asarray, causal_params), seed)
    return causal_def.bind(causal_params), a3_def.bind(a3_params)


def _ar_log_probs(model, docs):
    layout = build_layout(docs, [np.arange(1, d.size + 1) for d in docs], 40, bos_id=48, pad_id=49)
    log_probs, weights = model_log_probs(model, as_batch([layout]))
    return np.asarray(log_probs)[0], np.asarray(weights)[0]


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-4), ("float64", 1e-10)])
def test_a_causal_model_converted_to_shifted_a3_is_the_causal_model_under_ar(dtype, tolerance):
    """Under 'ar', right after conversion, the shifted A3 model's query row of position i computes
    what the causal model's row i - 1 computes: the same log-probs at every position (float32 to
    1e-4, float64 to 1e-10). The paper's query vector does not (the control)."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", dtype == "float64")
    try:
        causal, shifted = _causal_and_shifted(dtype)
        rng = np.random.default_rng(1)
        docs = [rng.integers(0, 48, 21), rng.integers(0, 48, 12)]  # two documents packed in one row
        causal_lp, causal_w = _ar_log_probs(causal, docs)
        shifted_lp, shifted_w = _ar_log_probs(shifted, docs)
        vector = Transformer(ModelConfig(**{**shifted.cfg.to_dict(), "rope_scaling": shifted.cfg.rope_scaling,
                                            "query_input": "vector"}), rngs=nnx.Rngs(0))
        nnx.update(vector, nnx.state(shifted, nnx.Param))
        vector_lp, _ = _ar_log_probs(vector, docs)
    finally:
        jax.config.update("jax_enable_x64", before)
    np.testing.assert_array_equal(causal_w, shifted_w)  # the same targets: every token after BOS
    assert causal_w.sum() == 33 and causal_lp.dtype == np.dtype(dtype)
    assert np.abs(shifted_lp - causal_lp).max() <= tolerance
    assert np.abs(vector_lp - causal_lp).max() > 1.0  # the paper's conversion loses the AR model
