"""Any-order decoding: the KV cache is exact, sampling follows the model's distribution, the
sampler's options do what they say, and bad input fails with a message naming it."""

import contextlib
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from a3jax.data import ByteTokenizer
from a3jax.decode import SampleConfig, extend, generate, init_cache, parse_plan, parse_prompt
from a3jax.decode.sampler import recompute_groups
from a3jax.decode.sampling import SAMPLE_BLOCK, filter_logits, sample_probs
from a3jax.eval.score import score_documents
from a3jax.layout import build_layout
from a3jax.model import ModelConfig
from a3jax.model.attention import two_stream_attention
from a3jax.model.params import init_model
from a3jax.model.transformer import LAYER_PARAMS, layer, rope_for

from support import model_log_probs

BOS, PAD, EOS = 10, 11, 9


def _model(variant="a3", vocab=12, seed=0, init_std=0.3, query_input="vector"):
    cfg = ModelConfig(vocab_size=vocab, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=64,
                      dtype="float32", init_std=init_std, variant=variant, query_input=query_input)
    return init_model(cfg, seed)


QUERY_INPUTS = ["vector", "shift"]  # model.query_input: every decoding property holds for both


def _batch(layout):
    return {k: jnp.asarray(v)[None] for k, v in layout.items()}


def _full_log_probs(model_def, params, doc, groups, seq_len=16, bos=BOS, pad=PAD):
    """{position: log p(token)} of one document's targets from one uncached forward pass."""
    layout = build_layout([doc], [groups], seq_len, bos_id=bos, pad_id=pad)
    log_probs, weights = model_log_probs(model_def.bind(params), _batch(layout))
    return {int(p): float(lp) for p, lp, w in zip(layout["positions"], np.asarray(log_probs[0]),
                                                  np.asarray(weights[0])) if w > 0}


# ---- cache exactness ------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("variant", ["a3", "causal"])
def test_training_and_decoding_run_the_same_layer(variant, monkeypatch):
    """Decoding calls the model's own layer function (model/transformer.layer): a deliberately
    perturbed layer changes the training forward and the cached decoder alike, and they still agree."""
    from a3jax.decode import sampler
    from a3jax.model import transformer

    model_def, params = _model(variant)
    doc = np.random.default_rng(3).integers(0, 9, 8).astype(np.int32)
    known = np.array([1, 0, 0, 1, 0, 0, 0, 1], bool)
    plan = "random(2)" if variant == "a3" else "ar"

    def decoded_and_full():
        sampler._step.cache_clear()  # retrace: a compiled step would keep the old layer
        jax.clear_caches()
        result = generate(model_def, params, [doc], [known], bos_id=BOS, pad_id=PAD, forced=[doc],
                          sampling=SampleConfig(plan=plan, seed=2))
        full = _full_log_probs(model_def, params, doc, result.groups[0])
        scored = np.flatnonzero(result.steps[0] > 0) + 1
        return result.log_probs[0][scored - 1], np.array([full[p] for p in scored])

    decoded, full = decoded_and_full()
    np.testing.assert_allclose(decoded, full, atol=1e-5)
    original = transformer.layer

    def perturbed(*args, **kwargs):  # every layer's output rows scaled: a different model
        content, query = original(*args, **kwargs)
        return content * 1.5, None if query is None else query * 1.5

    monkeypatch.setattr(transformer, "layer", perturbed)
    try:
        decoded_perturbed, full_perturbed = decoded_and_full()
    finally:  # no compiled step of the perturbed model may outlive this test
        monkeypatch.undo()
        sampler._step.cache_clear()
        jax.clear_caches()
    np.testing.assert_allclose(decoded_perturbed, full_perturbed, atol=1e-5)
    assert np.abs(decoded_perturbed - decoded).max() > 1e-2  # the perturbation reached decoding
    assert np.abs(full_perturbed - full).max() > 1e-2  # ... and training's forward



@pytest.mark.parametrize("variant, query_input", [("a3", "vector"), ("a3", "shift"), ("causal", "vector")])
def test_cached_logits_equal_the_full_forward(variant, query_input):
    model_def, params = _model(variant, query_input=query_input)
    model = model_def.bind(params)
    doc = np.random.default_rng(0).integers(0, 9, 10).astype(np.int32)
    groups = np.array([0, 2, 1, 0, 3, 3, 2, 1, 4, 4]) if variant == "a3" else np.arange(1, 11)
    layout = build_layout([doc], [groups], 12, bos_id=BOS, pad_id=PAD)
    full = np.asarray(model(_batch(layout)))[0]
    row_of = {int(p): i for i, (p, seg) in enumerate(zip(layout["positions"], layout["segment_ids"])) if seg}
    cache = init_cache(model.cfg, 1, 24)
    call = jax.jit(lambda params, cache, *rows: extend(model_def.bind(params), cache, *rows))
    given = np.flatnonzero(groups == 0)
    commit = (np.concatenate([[BOS], doc[given]]), np.concatenate([[0], given + 1]))
    for g in range(1, groups.max() + 1):
        query = np.flatnonzero(groups == g) + 1
        cache, logits = call(params, cache, jnp.asarray(commit[0])[None], jnp.asarray(commit[1])[None],
                             jnp.ones((1, commit[0].size), bool), jnp.asarray(query)[None])
        # a3: the query row of position p; causal: the content row of p - 1 predicts p
        rows = [row_of[p] if variant == "a3" else row_of[p - 1] for p in query]
        np.testing.assert_allclose(np.asarray(logits)[0], full[rows], atol=1e-5, rtol=0)
        commit = (doc[query - 1], query)


@pytest.mark.parametrize("per_row", [False, True])
def test_a_decode_call_writes_its_rows_into_the_cache_without_copying_it(per_row):
    """extend writes only the new rows, in place in the stacked cache (one length for every row,
    or one per row as speculative decoding keeps them), and reads each layer as it is stored: the
    compiled call's temporaries stay well below the cache's size. When the cache rode through the
    layer scan as a per-layer slice and a stacked output (and in a layout the attention did not
    read), they were 1.4-1.5x the cache: a copy of all of it in every call."""
    cfg = ModelConfig(vocab_size=64, d_model=64, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=128,
                      dtype="float32", query_input="shift")
    model_def, params = init_model(cfg, 0)
    b, size, c, q = 4, 2048, 2, 2
    cache = init_cache(cfg, b, size, per_row=per_row)
    ones = jnp.ones((b, c), jnp.int32)
    call = jax.jit(lambda params, cache, *rows: extend(model_def.bind(params), cache, *rows), donate_argnums=1)
    compiled = call.lower(params, cache, ones, ones, jnp.ones((b, c), bool), ones[:, :q], ones, ones[:, :q]).compile()
    cache_bytes = cache.k.nbytes + cache.v.nbytes
    assert compiled.memory_analysis().temp_size_in_bytes < 0.5 * cache_bytes


@pytest.mark.parametrize("variant, query_input", [("a3", "vector"), ("a3", "shift"), ("causal", "vector")])
def test_per_layer_weights_and_fused_streams_compute_what_the_scanned_layers_do(variant, query_input):
    """decode_weights' one-buffer-per-layer weights run extend as an unrolled loop, and the cache's
    layer call fuses the two streams' shared GEMMs (transformer.layer(fuse_streams=True)): the
    same logits and cache as the scan over the stacked weights with the streams apart (the
    training layer), to float32 rounding."""
    from a3jax.decode.cache import decode_weights
    from a3jax.model import transformer

    model_def, params = _model(variant, query_input=query_input)
    cfg = model_def.bind(params).cfg
    rng = np.random.default_rng(0)
    b, c, q = 2, 5, 4
    rows = (jnp.asarray(rng.integers(0, 9, (b, c)), jnp.int32), jnp.tile(jnp.arange(c, dtype=jnp.int32), (b, 1)),
            jnp.asarray(rng.random((b, c)) < 0.8), jnp.asarray(rng.integers(c, 12, (b, q)), jnp.int32),
            jnp.asarray(rng.integers(0, 3, (b, c)), jnp.int32), jnp.asarray(rng.integers(1, 4, (b, q)), jnp.int32))
    weights = decode_weights(params, cfg)
    assert len(weights.layers) == cfg.n_layers and weights.params["layers"]["wq"].size == 0
    split = jax.jit(lambda w, cache, *r: extend(model_def.bind(w.params), cache, *r, layers=w.layers))
    cache_split, logits_split = split(weights, init_cache(cfg, b, 16), *rows)
    layer = transformer.layer
    try:  # the reference: the scan, and the streams apart as in training
        transformer.layer = lambda *a, fuse_streams=False, **kw: layer(*a, **kw)
        scanned = jax.jit(lambda params, cache, *r: extend(model_def.bind(params), cache, *r))
        cache_scan, logits_scan = scanned(params, init_cache(cfg, b, 16), *rows)
    finally:
        transformer.layer = layer
    np.testing.assert_allclose(np.asarray(logits_split), np.asarray(logits_scan), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(cache_split.k), np.asarray(cache_scan.k), atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(cache_split.v), np.asarray(cache_scan.v), atol=1e-5, rtol=0)


def test_a_decode_call_reads_each_layers_weights_without_copying_them():
    """With per-layer weight buffers (decode_weights) a decode call's temporaries stay below one
    layer's weights; the scan over the stacked weights copies each layer's slice out of the stack
    (XLA:CPU materialises it: about half of a SmolLM2 `ar` step before, BENCHMARKS.md), so its
    temporaries hold at least the largest weight (a check that can fail)."""
    from a3jax.decode.cache import decode_weights

    cfg = ModelConfig(vocab_size=64, d_model=256, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=1024,
                      dtype="float32", query_input="shift")
    model_def, params = init_model(cfg, 0)
    weights = decode_weights(params, cfg)
    b, c, q = 1, 1, 1
    cache = init_cache(cfg, b, 16)
    ones = jnp.ones((b, c), jnp.int32)
    rows = (ones, ones, jnp.ones((b, c), bool), ones[:, :q])
    split = jax.jit(lambda w, cache, *r: extend(model_def.bind(w.params), cache, *r, layers=w.layers),
                    donate_argnums=1).lower(weights, cache, *rows).compile()
    scanned = jax.jit(lambda p, cache, *r: extend(model_def.bind(p), cache, *r),
                      donate_argnums=1).lower(params, cache, *rows).compile()
    largest = max(w.nbytes for w in weights.layers[0].values())
    assert split.memory_analysis().temp_size_in_bytes < 0.5 * largest
    assert scanned.memory_analysis().temp_size_in_bytes >= largest


def _reference_keys_values(model, layout):
    """Per-layer content-stream K/V of the full sequence with its final groups: {position: [L,2,H,D]}."""
    cfg = model.cfg
    batch = _batch(layout)
    content = model.embed_tokens(batch["tokens"])
    query = jnp.broadcast_to(model.query_embed[...], content.shape)
    rope_rows = rope_for(cfg, batch["positions"])
    per_layer = []

    def attend(q_content, q_query, k, v):  # the whole row under its group masks, keeping K/V
        per_layer.append(np.stack([np.asarray(k[0]), np.asarray(v[0])], 1))
        return two_stream_attention(q_content, q_query, k, v, batch["segment_ids"], batch["groups"])

    for index in range(cfg.n_layers):
        p = {name: model.layers[name][...][index] for name in LAYER_PARAMS}
        content, query = layer(cfg, p, content, query, rope_rows, rope_rows, attend)
    kv = np.stack(per_layer)  # [L, N, 2, H, D]
    return {int(pos): kv[:, i] for i, (pos, seg) in enumerate(zip(layout["positions"], layout["segment_ids"]))
            if seg > 0}


@pytest.mark.slow
@pytest.mark.parametrize("plan, query_input", [("random(3)", "vector"), ("confidence(2)", "shift")])
def test_cached_keys_values_equal_a_recompute_after_all_groups(plan, query_input):
    model_def, params = _model(query_input=query_input)
    model = model_def.bind(params)
    rng = np.random.default_rng(1)
    docs = [rng.integers(0, 9, 10).astype(np.int32), rng.integers(0, 9, 7).astype(np.int32)]
    known = [np.array([1, 0, 0, 1, 0, 0, 0, 1, 0, 0], bool), np.array([0, 1, 0, 0, 1, 0, 0], bool)]
    result = generate(model_def, params, docs, known, bos_id=BOS, pad_id=PAD, eos_id=None,
                      sampling=SampleConfig(plan=plan, seed=3), keep_cache=True)
    cache = result.state
    checked = 0
    for b in range(2):
        layout = build_layout([result.tokens[b]], [result.groups[b]], 12, bos_id=BOS, pad_id=PAD)
        reference = _reference_keys_values(model, layout)
        for slot in np.flatnonzero(np.asarray(cache.valid[b])):
            position = int(cache.positions[b, slot])
            cached = np.stack([np.asarray(cache.k[:, b, :, slot]), np.asarray(cache.v[:, b, :, :, slot])], 1)
            np.testing.assert_allclose(cached, reference[position], atol=1e-5, rtol=0)
            checked += 1
    assert checked == 11 + 8  # every position of both documents and their BOS, each cached once


PLANS_AND_CONTEXTS = [
    ("ar", "ar"), ("blocks(2)", "group"), ("random(3)", "ar"), ("groups", "group"), ("confidence(2)", "ar"),
    ("entropy(steps=3)", "group"), ("margin(steps=4, schedule=cosine)", "ar"), ("random_pick(2)", "group")]


# Every plan with the paper's query input; the shifted one under a plan of each kind (fixed order,
# caller's groups, random, adaptive with a schedule), each context.
@pytest.mark.parametrize("plan, context, query_input", [(p, c, "vector") for p, c in PLANS_AND_CONTEXTS] + [
    ("ar", "ar", "shift"), ("groups", "group", "shift"), ("random(3)", "ar", "shift"),
    ("entropy(steps=3)", "group", "shift")])
def test_reported_log_probs_equal_the_full_forward_under_the_groups_used(plan, context, query_input):
    model_def, params = _model(query_input=query_input)
    rng = np.random.default_rng(2)
    docs = [rng.integers(0, 9, 10).astype(np.int32), rng.integers(0, 9, 7).astype(np.int32)]
    known = [np.array([1, 0, 0, 1, 0, 0, 0, 1, 0, 0], bool), np.array([0, 1, 0, 0, 1, 0, 0], bool)]
    user = [np.array([0, 3, 3, 0, 1, 2, 1, 0, 2, 2]), np.array([2, 0, 1, 1, 0, 1, 2])]
    result = generate(model_def, params, docs, known, bos_id=BOS, pad_id=PAD, eos_id=None,
                      groups=user if plan == "groups" else None,  # other plans refuse groups
                      sampling=SampleConfig(plan=plan, seed=5, context=context))
    for b in range(2):
        np.testing.assert_array_equal(result.tokens[b][known[b]], docs[b][known[b]])
        assert np.all(result.steps[b][~known[b]] >= 1) and np.all(result.steps[b][known[b]] == 0)
        if plan == "groups":
            order = np.unique(user[b][~known[b]], return_inverse=True)[1] + 1
            np.testing.assert_array_equal(result.steps[b][~known[b]], order)
        if context == "group":
            np.testing.assert_array_equal(result.groups[b], result.steps[b])
        else:  # given tokens 1..k left to right, then the steps
            assert sorted(result.groups[b][known[b]]) == list(range(1, known[b].sum() + 1))
            np.testing.assert_array_equal(result.groups[b][~known[b]], result.steps[b][~known[b]] + known[b].sum())
        reference = _full_log_probs(model_def, params, result.tokens[b], result.groups[b])
        for position in np.flatnonzero(~known[b]) + 1:  # every generated token
            assert abs(result.log_probs[b][position - 1] - reference[position]) < 1e-5


# ---- sampling follows the model's distribution ----------------------------------------------------

def _exact_distribution(model_def, params, groups):
    """P(x) of all 3^4 sequences under one grouping, from full forward passes (BOS = PAD = 0)."""
    model = model_def.bind(params)
    sequences = np.array(list(itertools.product(range(3), repeat=4)), np.int32)
    layouts = [build_layout([s], [groups], 5, bos_id=0, pad_id=0) for s in sequences]
    batch = {k: jnp.asarray(np.stack([lay[k] for lay in layouts])) for k in layouts[0]}
    log_probs, weights = model_log_probs(model, batch)
    return sequences, np.exp(np.asarray(jnp.sum(log_probs * weights, axis=1), np.float64))


@pytest.mark.slow
@pytest.mark.parametrize("plan, query_input", [("ar", "vector"), ("random(2)", "vector"), ("random(2)", "shift")])
def test_samples_follow_the_exact_distribution_chi_square(plan, query_input):
    model_def, params = _model(vocab=3, seed=4, init_std=1.0, query_input=query_input)
    n = 20_000
    docs = [np.zeros(4, np.int32)] * n
    known = [np.zeros(4, bool)] * n
    result = generate(model_def, params, docs, known, bos_id=0, pad_id=0, eos_id=None,
                      sampling=SampleConfig(plan=plan, seed=11, temperature=1.0))
    samples = np.stack(result.tokens)
    codes = samples @ (3 ** np.arange(3, -1, -1))
    observed = np.bincount(codes, minlength=81)
    # Each sample was drawn under its own grouping: expected counts sum P(x | grouping) over samples.
    groupings, counts = np.unique(np.stack(result.groups), axis=0, return_counts=True)
    assert (len(groupings) == 1) == (plan == "ar") and len(groupings) <= 6
    expected = np.zeros(81)
    for grouping, count in zip(groupings, counts):
        sequences, probs = _exact_distribution(model_def, params, grouping)
        assert abs(probs.sum() - 1) < 1e-5  # the model's P(x) is normalised under every grouping
        expected[sequences @ (3 ** np.arange(3, -1, -1))] += count * probs
    assert probs.max() / probs.min() > 20  # far from uniform, so the test has power
    keep = expected >= 5  # pool rare sequences into one bin
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    p_value = stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue
    assert p_value > 1e-3, p_value
    # the same test rejects samples drawn at the wrong temperature
    cold = generate(model_def, params, docs, known, bos_id=0, pad_id=0, eos_id=None,
                    sampling=SampleConfig(plan=plan, seed=11, temperature=0.7))
    cold_obs = np.bincount(np.stack(cold.tokens) @ (3 ** np.arange(3, -1, -1)), minlength=81)
    cold_obs = np.append(cold_obs[keep], cold_obs[~keep].sum())
    assert stats.chisquare(cold_obs, exp * cold_obs.sum() / exp.sum()).pvalue < 1e-3


# ---- options ----------------------------------------------------------------------------------------

def test_filter_logits_top_k_and_nucleus():
    logits = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))
    kept = lambda out: np.isfinite(np.asarray(out)).tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=2)) == [True, True, False, False]
    assert kept(filter_logits(logits, top_p=0.5)) == [True, False, False, False]
    assert kept(filter_logits(logits, top_p=0.79)) == [True, True, False, False]
    assert kept(filter_logits(logits, top_p=0.81)) == [True, True, True, False]
    assert kept(filter_logits(logits, top_p=1.0)) == [True] * 4


def test_blocked_inverse_cdf_draws_each_token_with_its_probability():
    """sampling.sample_probs (a two-level inverse CDF, blocks of SAMPLE_BLOCK words) against the
    distribution it samples: a vocabulary that is not a multiple of the block (padding), whole
    blocks and single words of zero mass (never drawn), a tiny mass in the last word of a block."""
    vocab = 3 * SAMPLE_BLOCK + 17
    rng = np.random.default_rng(1)
    probs = rng.gamma(0.3, size=vocab)
    probs[SAMPLE_BLOCK:2 * SAMPLE_BLOCK] = 0  # an empty block
    probs[rng.choice(vocab, 40, replace=False)] = 0
    probs[SAMPLE_BLOCK - 1] = 1e-3 * probs.sum()
    probs /= probs.sum()
    n = 200_000
    tokens = np.asarray(sample_probs(jax.random.key(0), jnp.broadcast_to(jnp.asarray(probs, jnp.float32),
                                                                         (n, vocab))))
    observed = np.bincount(tokens, minlength=vocab)
    assert tokens.max() < vocab and observed[probs == 0].sum() == 0
    keep = probs * n >= 5
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(probs[keep], probs[~keep].sum()) * n
    assert stats.chisquare(obs, exp).pvalue > 1e-3
    # a point mass (greedy rows, a resample where p has one word left) is always drawn
    one_hot = jnp.zeros((64, vocab)).at[:, vocab - 1].set(1.0)
    assert (np.asarray(sample_probs(jax.random.key(1), one_hot)) == vocab - 1).all()


@pytest.mark.slow
def test_greedy_top_k_1_and_tiny_top_p_agree_and_batching_does_not_change_results():
    model_def, params = _model()
    rng = np.random.default_rng(3)
    docs = [rng.integers(0, 9, 10).astype(np.int32), rng.integers(0, 9, 6).astype(np.int32)]
    known = [np.arange(10) % 3 == 0, np.array([1, 1, 0, 0, 0, 1], bool)]
    run = lambda d, k, **kw: generate(model_def, params, d, k, bos_id=BOS, pad_id=PAD, eos_id=None,  # noqa: E731
                                      sampling=SampleConfig(plan="random(2)", seed=2, **kw)).tokens
    greedy = run(docs, known, temperature=0.0)
    for other in (run(docs, known, top_k=1), run(docs, known, top_p=1e-6)):
        for a, b in zip(greedy, other):
            np.testing.assert_array_equal(a, b)
    # batched rows with different lengths and gaps decode as they would alone
    groups = generate(model_def, params, docs, known, bos_id=BOS, pad_id=PAD,
                      sampling=SampleConfig(plan="random(2)", seed=2)).steps
    batched = generate(model_def, params, docs, known, bos_id=BOS, pad_id=PAD, groups=groups,
                       sampling=SampleConfig(plan="groups", temperature=0.0))
    for b in range(2):
        alone = generate(model_def, params, docs[b:b + 1], known[b:b + 1], bos_id=BOS, pad_id=PAD,
                         groups=groups[b:b + 1], sampling=SampleConfig(plan="groups", temperature=0.0))
        np.testing.assert_array_equal(alone.tokens[0], batched.tokens[b])
        np.testing.assert_allclose(alone.log_probs[0], batched.log_probs[b], atol=1e-5)


def test_eos_ends_the_document_and_nothing_after_it_is_generated():
    model_def, params = _model()
    doc = np.array([1, 2, 3, 4, 5, 6, 7, 8], np.int32)
    known = np.array([1, 1, 0, 0, 0, 0, 0, 0], bool)
    forced = doc.copy()
    forced[4] = EOS  # position 5
    result = generate(model_def, params, [doc], [known], bos_id=BOS, pad_id=PAD, eos_id=EOS, forced=[forced],
                      sampling=SampleConfig(plan="ar"))
    np.testing.assert_array_equal(result.tokens[0], [1, 2, 3, 4])
    assert result.n_steps == 3  # the plan had 6 steps; the loop stops once the EOS cut every later one
    kept = generate(model_def, params, [doc], [known], bos_id=BOS, pad_id=PAD, eos_id=EOS, forced=[forced],
                    sampling=SampleConfig(plan="ar", stop_at_eos=False))
    np.testing.assert_array_equal(kept.tokens[0], forced)



def test_a_dynamic_plan_stops_when_an_eos_has_ended_every_row():
    """Dynamic plans run on the device and the host stops the loop a step or two late: the steps
    counted, the tokens and (keep_cache) the final cache are those of the steps that had work."""
    model_def, params = _model()
    doc = np.array([1, 2, 3, 4, 5, 6, 7, 8], np.int32)
    known = np.array([1, 1, 0, 0, 0, 0, 0, 0], bool)
    forced = doc.copy()
    forced[3] = EOS  # position 4: positions 5-8 are dropped once it is committed
    early = 0
    for seed in range(6):
        sampling = SampleConfig(plan="random_pick(1)", seed=seed)  # one position per step, random order
        plain, kept = (generate(model_def, params, [doc], [known], bos_id=BOS, pad_id=PAD, eos_id=EOS,
                                forced=[forced], sampling=sampling, keep_cache=keep) for keep in (False, True))
        np.testing.assert_array_equal(plain.tokens[0], [1, 2, 3])
        np.testing.assert_array_equal(kept.tokens[0], [1, 2, 3])
        assert plain.n_steps == kept.n_steps <= 6
        # every step committed one token: BOS + 2 given + one per step, nothing from a late step
        assert int(np.asarray(kept.state.valid).sum()) == 3 + kept.n_steps
        early += plain.n_steps < 6
    assert early  # some seed committed the EOS before positions 5-8: the loop stopped early

def test_recompute_mode_follows_the_official_semantics():
    """Each step: every known token (given or committed) is one context group; first step = cached."""
    model_def, params = _model()
    doc = np.random.default_rng(4).integers(0, 9, 9).astype(np.int32)
    known = np.array([1, 0, 0, 0, 1, 0, 0, 0, 1], bool)
    sampling = SampleConfig(plan="blocks(2)", temperature=0.0, mode="recompute")
    result = generate(model_def, params, [doc], [known], bos_id=BOS, pad_id=PAD, sampling=sampling)
    filled, steps = result.tokens[0], result.steps[0]
    model = model_def.bind(params)
    for step in range(1, steps.max() + 1):
        groups = np.where(steps < step, 0, np.where(steps == step, 1, 2))
        hidden_groups = np.where(groups == 2, 1, groups)  # later positions are unknown too
        tokens = np.where(groups == 2, PAD, filled)
        layout = build_layout([tokens], [hidden_groups], 12, bos_id=BOS, pad_id=PAD)
        logits = np.asarray(model(_batch(layout)))[0]
        for i, position in enumerate(layout["positions"]):
            if position and steps[position - 1] == step:
                assert np.argmax(logits[i]) == filled[position - 1]
    cached = generate(model_def, params, [doc], [known], bos_id=BOS, pad_id=PAD,
                      sampling=SampleConfig(plan="blocks(2)", temperature=0.0, context="group"))
    first = steps == 1
    np.testing.assert_array_equal(cached.tokens[0][first], filled[first])


def test_one_compile_for_the_prefill_and_one_for_all_steps():
    from a3jax.decode.sampler import _compiled_fields, _step

    model_def, params = _model()
    sampling = SampleConfig(plan="ar", seed=7)
    step = _step(model_def, _compiled_fields(sampling))  # the step every seed shares
    before = step._cache_size()
    generate(model_def, params, [np.zeros(12, np.int32)], [np.arange(12) < 2], bos_id=BOS, pad_id=PAD,
             eos_id=EOS, sampling=sampling)
    assert step._cache_size() - before == 2  # 10 decoding steps, 2 compiled shapes


def test_causal_model_decodes_left_to_right_with_the_cache():
    model_def, params = _model("causal")
    doc = np.random.default_rng(5).integers(0, 9, 8).astype(np.int32)
    known = np.array([1, 1, 0, 0, 1, 0, 0, 1], bool)
    result = generate(model_def, params, [doc], [known], bos_id=BOS, pad_id=PAD,
                      sampling=SampleConfig(plan="ar", seed=1), forced=[doc])
    # forced to the document itself: the reported log-probs are the causal model's own
    reference = _full_log_probs(model_def, params, doc, np.arange(1, 9))
    for position in np.flatnonzero(~known) + 1:
        assert abs(result.log_probs[0][position - 1] - reference[position]) < 1e-5
    with pytest.raises(ValueError, match="left to right"):
        generate(model_def, params, [doc], [known], bos_id=BOS, pad_id=PAD, sampling=SampleConfig(plan="random"))


# ---- prompts and bad input ------------------------------------------------------------------------

def test_prompt_with_gaps():
    tok = ByteTokenizer()
    prompt = parse_prompt("ab [gap:3] cd[gap:2]", tok, max_len=16)
    assert prompt.tokens.size == 3 + 3 + 3 + 2
    np.testing.assert_array_equal(prompt.known, [1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0])
    assert prompt.trailing_gap and not parse_prompt("[gap:2]x", tok, 8).trailing_gap


@pytest.mark.parametrize("call, message", [
    (lambda tok: parse_prompt("x" * 20 + "[gap:5]", tok, max_len=16), "max length is 16"),
    (lambda tok: parse_prompt("abc [gap:0] d", tok, max_len=16), "has no room"),
    (lambda tok: parse_prompt("abc [gap:x] d", tok, max_len=16), "must be an integer"),
    (lambda tok: parse_prompt("no gap here", tok, max_len=16), "no gap"),
    (lambda tok: parse_plan("sharpness(4)"), "unknown plan 'sharpness\\(4\\)'"),
    (lambda tok: parse_plan("confidence(4, steps=3)"), "either k"),
    (lambda tok: parse_plan("confidence(steps=3, schedule=exp)"), "schedule='exp'"),
    (lambda tok: parse_plan("blocks(0)"), "must be >= 1"),
    (lambda tok: SampleConfig(top_p=0.0).check(), "top_p=0.0 must be in \\(0, 1\\]"),
    (lambda tok: SampleConfig(top_p=1.5).check(), "top_p=1.5"),
    (lambda tok: SampleConfig(temperature=-1).check(), "temperature=-1"),
    (lambda tok: SampleConfig(mode="fast").check(), "mode='fast'"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call(ByteTokenizer())


def test_generate_rejects_documents_longer_than_max_len_and_full_documents():
    model_def, params = _model()
    with pytest.raises(ValueError, match="max length is 8"):
        generate(model_def, params, [np.zeros(9, np.int32)], [np.zeros(9, bool)], bos_id=BOS, pad_id=PAD, max_len=8)
    with pytest.raises(ValueError, match="no unknown position"):
        generate(model_def, params, [np.zeros(4, np.int32)], [np.ones(4, bool)], bos_id=BOS, pad_id=PAD)


@pytest.mark.parametrize("query_input", QUERY_INPUTS)
@pytest.mark.parametrize("plan", ["ar", "random(2)"])
def test_score_equals_the_sum_of_the_samplers_log_probs_when_forced(plan, query_input):
    from a3jax.eval.score import sequence_log_probs

    model_def, params = _model(query_input=query_input)
    rng = np.random.default_rng(6)
    docs = [rng.integers(0, 9, n).astype(np.int32) for n in (7, 4, 10)]
    result = generate(model_def, params, [np.zeros_like(d) for d in docs], [np.zeros(d.size, bool) for d in docs],
                      bos_id=BOS, pad_id=PAD, eos_id=None, forced=docs, sampling=SampleConfig(plan=plan, seed=9))
    for doc, tokens in zip(docs, result.tokens):
        np.testing.assert_array_equal(tokens, doc)
    groups = [np.arange(1, d.size + 1) for d in docs] if plan == "ar" else result.groups
    scores = sequence_log_probs(model_def, params, docs, groups, seq_len=16, bos_id=BOS, pad_id=PAD)
    for doc, log_probs, score in zip(docs, result.log_probs, scores):  # float32 rounding: 1e-5 a token
        np.testing.assert_allclose(log_probs.sum(), score, atol=1e-5 * doc.size)
    assert np.all(scores < 0)


# ---- API edges: groups read by plan 'groups' only; the groupings behind the log-probs; x64 ---------
# (vocab 12: the mdlm variant's MASK is 11, so these use PAD 9)

HOLES_PAD = 9


def _holes_docs():
    rng = np.random.default_rng(2)
    docs = [np.array([3, 0, 0, 0, 5], np.int32),  # three generated tokens between two given ones
            rng.integers(0, 9, 10).astype(np.int32), rng.integers(0, 9, 7).astype(np.int32)]
    known = [np.array([1, 0, 0, 0, 1], bool), np.array([1, 0, 0, 1, 0, 0, 0, 1, 0, 0], bool),
             np.array([0, 1, 0, 0, 1, 0, 0], bool)]
    return docs, known


# ---- 1. groups are read by plan 'groups' only -----------------------------------------------------

@pytest.mark.parametrize("plan", ["ar", "blocks(2)", "random(2)", "confidence(2)"])
def test_groups_with_another_plan_are_refused(plan):
    model_def, params = _model()
    docs, known = _holes_docs()
    user = [np.where(k, 0, np.arange(d.size) % 2 + 1) for d, k in zip(docs, known)]
    with pytest.raises(ValueError) as error:
        generate(model_def, params, docs, known, bos_id=BOS, pad_id=HOLES_PAD, groups=user,
                 sampling=SampleConfig(plan=plan))
    assert repr(plan) in str(error.value) and "plan='groups'" in str(error.value)
    # the fix the message names decodes in exactly those groups
    result = generate(model_def, params, docs, known, bos_id=BOS, pad_id=HOLES_PAD, groups=user,
                      sampling=SampleConfig(plan="groups"))
    for b in range(len(docs)):
        np.testing.assert_array_equal(result.steps[b], user[b])


# ---- 2. the groupings behind the log-probs, recompute and cached -----------------------------------

CASES = [("a3", "recompute", "ar"), ("a3", "recompute", "random(2)"), ("a3", "recompute", "confidence(2)"),
         ("mdlm", "recompute", "random(2)"), ("mdlm", "recompute", "entropy(steps=3)"),
         ("a3", "cached", "random(2)"), ("a3", "cached", "margin(2)"),
         ("a3-shift", "recompute", "random(2)"), ("a3-shift", "cached", "margin(2)")]


@pytest.mark.slow
@pytest.mark.parametrize("variant, mode, plan", CASES)
def test_groupings_reproduce_the_log_probs_in_a_full_forward(variant, mode, plan):
    variant, _, shift = variant.partition("-")
    model_def, params = _model(variant, query_input=shift or "vector")
    docs, known = _holes_docs()
    result = generate(model_def, params, docs, known, bos_id=BOS, pad_id=HOLES_PAD,
                      sampling=SampleConfig(plan=plan, mode=mode, seed=5))
    assert result.mode == mode
    for b in range(len(docs)):
        generated = ~known[b]
        pairs = result.groupings(b)
        scored = np.stack([s for _, s in pairs])
        np.testing.assert_array_equal(scored.sum(axis=0), generated)  # each generated token once
        if mode == "recompute":  # groups is the commit order; step t reads it as two groups
            np.testing.assert_array_equal(result.groups[b], result.steps[b])
            assert len(pairs) == result.steps[b].max()
            for t, (groups, _) in enumerate(pairs, start=1):
                np.testing.assert_array_equal(groups, result.steps[b] >= t)
        else:
            assert len(pairs) == 1 and np.array_equal(pairs[0][0], result.groups[b])
        for groups, positions in pairs:  # per token, against the model's own full forward
            reference = _full_log_probs(model_def, params, result.tokens[b], groups, pad=HOLES_PAD)
            for position in np.flatnonzero(positions) + 1:
                assert abs(result.log_probs[b][position - 1] - reference[position]) < 1e-4, (b, position)
    if variant == "mdlm":  # eval.score's sums are exact log-likelihoods for a3 models only
        return
    # the same through a3jax.eval.score: every (document, step) as one scored document
    documents, groups, targets, sums = [], [], [], []
    for b in range(len(docs)):
        for grouping, positions in result.groupings(b):
            documents.append(result.tokens[b])
            groups.append(grouping)
            targets.append(positions)
            sums.append(result.log_probs[b][positions].sum())
    scores = score_documents(model_def, params, documents, groups, targets=targets, seq_len=16, bos_id=BOS,
                             pad_id=HOLES_PAD)
    np.testing.assert_allclose(scores.log_prob, sums, atol=1e-4)


def test_recompute_log_probs_are_not_those_of_the_commit_order_as_one_grouping():
    """Why recompute needs one grouping per step: the commit order read as ONE grouping (what cached
    mode reports) gives different log-probs, by far more than float error."""
    model_def, params = _model()
    docs, known = _holes_docs()
    result = generate(model_def, params, docs[:1], known[:1], bos_id=BOS, pad_id=HOLES_PAD,
                      sampling=SampleConfig(plan="ar", mode="recompute", seed=1))
    reference = _full_log_probs(model_def, params, result.tokens[0], result.groups[0], pad=HOLES_PAD)
    later = list(np.flatnonzero(result.steps[0] > 1) + 1)  # step 1 reads the same layout either way
    assert later and max(abs(result.log_probs[0][p - 1] - reference[p]) for p in later) > 1e-2
    first = int(np.flatnonzero(result.steps[0] == 1)[0]) + 1
    assert abs(result.log_probs[0][first - 1] - reference[first]) < 1e-4


def test_recompute_groups_is_known_before_the_step_against_the_rest():
    order = np.array([0, 2, 1, 0, 3, 2])
    np.testing.assert_array_equal(recompute_groups(order, 1), [0, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(recompute_groups(order, 3), [0, 0, 0, 0, 1, 0])


# ---- 3. the KV cache under jax_enable_x64 ---------------------------------------------------------

@contextlib.contextmanager
def _x64(on: bool):
    """jax_enable_x64 set to `on` inside, restored after (the tests share one process)."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", on)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)


@pytest.mark.slow
@pytest.mark.parametrize("variant, plan", [("a3", "random(2)"), ("a3", "confidence(2)"), ("causal", "ar")])
def test_cached_generate_with_x64_gives_the_same_samples(variant, plan):
    model_def, params = _model(variant)
    docs, known = _holes_docs()

    def run():
        return generate(model_def, params, docs, known, bos_id=BOS, pad_id=HOLES_PAD, keep_cache=True,
                        sampling=SampleConfig(plan=plan, seed=3))

    before = jax.config.jax_enable_x64
    with _x64(False):
        reference = run()
    with _x64(True):
        result = run()
    assert jax.config.jax_enable_x64 == before  # restored for the other tests
    for a, b in zip(reference.tokens, result.tokens):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(reference.log_probs, result.log_probs):
        np.testing.assert_allclose(a, b, atol=1e-6)
    cache = result.state  # the cache keeps its int32 bookkeeping under x64
    assert {cache.positions.dtype, cache.groups.dtype, cache.length.dtype} == {np.dtype(np.int32)}
    np.testing.assert_array_equal(cache.positions, reference.state.positions)
    np.testing.assert_array_equal(cache.groups, reference.state.groups)




def test_a_new_seed_reuses_the_compiled_step():
    """The step is compiled once per model and sampling settings, not once per seed (a loop over
    seeds recompiled every call)."""
    from a3jax.decode import sampler

    model_def, params = _model()
    doc = np.array([BOS, 3, 4, 5, 6, 7, 8, 9], np.int32)
    known = np.arange(doc.size) < 3
    sampler._step.cache_clear()
    draws = [generate(model_def, params, [doc], [known], bos_id=BOS, pad_id=PAD,
                      sampling=SampleConfig(plan="ar", temperature=1.0, seed=seed)).tokens[0] for seed in range(4)]
    assert sampler._step.cache_info().currsize == 1
    assert len({tuple(d) for d in draws}) > 1  # the seeds still sample differently


@pytest.mark.parametrize("variant, query_input, plan", [
    ("a3", "shift", "random(2)"), ("a3", "vector", "speculative(2)"), ("causal", "vector", "ar")])
def test_weights_cast_once_per_generate_decode_bitwise_the_same(variant, query_input, plan, monkeypatch):
    """generate casts the float32 masters to the compute dtype once (transformer.compute_params)
    instead of in every call; a bfloat16 model then samples and scores bitwise as when every call
    casts them itself (final_norm, read in float32, stays float32: made non-trivial here)."""
    from a3jax.model import transformer

    cfg = ModelConfig(variant=variant, vocab_size=12, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                      ffn_dim=64, dtype="bfloat16", init_std=0.3, query_input=query_input)
    model_def, params = init_model(cfg, 0)
    params = {**params, "final_norm": 1 + 0.1 * jax.random.normal(jax.random.key(1), params["final_norm"].shape)}
    cast = transformer.compute_params(params, "bfloat16")
    assert cast["layers"]["w_up"].dtype == jnp.bfloat16 and cast["embed"].dtype == jnp.bfloat16
    assert cast["final_norm"].dtype == jnp.float32
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 9, 12).astype(np.int32) for _ in range(3)]
    known = [np.arange(12) < 4] * 3

    def run():
        return generate(model_def, params, docs, known, bos_id=BOS, pad_id=PAD,
                        sampling=SampleConfig(plan=plan, temperature=1.0, seed=3))

    once = run()
    monkeypatch.setattr(transformer, "compute_params", lambda p, dtype: p)  # every call casts
    each_call = run()
    for a, b in zip(once.tokens + once.log_probs, each_call.tokens + each_call.log_probs):
        np.testing.assert_array_equal(a, b)
