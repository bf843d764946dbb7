"""The masked-diffusion control (model.variant='mdlm'): its L/m (1/t) ELBO weighting, the bound
it reports, MASK inputs that never leak a target, packing invariance, config checks, training and
recompute decoding."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from a3jax import orders
from a3jax.configs import ConfigError
from a3jax.decode import SampleConfig, generate
from a3jax.layout import build_layout, stack_layouts
from a3jax.loss import mdlm_weights
from a3jax.model import ModelConfig, Transformer
from a3jax.model.transformer import rms_norm

from conftest import micro_config
from support import model_eval_totals, model_log_probs, model_loss

V = 7  # ids 0..3 text, PAD 4, BOS 5, MASK 6 (= vocab_size - 1)
PAD, BOS, MASK = 4, 5, 6


def mdlm_model(seed=0, context_free=False, **overrides):
    kwargs = dict(variant="mdlm", vocab_size=V, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=32,
                  dtype="float32", init_std=0.5)
    kwargs.update(overrides)
    model = Transformer(ModelConfig(**kwargs), rngs=nnx.Rngs(seed))
    if context_free:
        silence_residual_branches(model)
    return model


def silence_residual_branches(model):
    """Zero o_proj and down_proj: row i's output then depends only on its own input token."""
    for name in ("wo", "w_down"):
        model.layers[name][...] = jnp.zeros_like(model.layers[name][...])


def as_batch(layouts):
    return {k: jnp.asarray(v) for k, v in stack_layouts(layouts).items()}


def mask_groups(length, masked):
    groups = np.zeros(length, np.int32)
    groups[list(masked)] = 1
    return groups


log_probs_fn = nnx.jit(model_log_probs)


# ---- the sampler ---------------------------------------------------------------------------------

def test_mdlm_sampler_draws_m_uniformly_and_the_set_uniformly():
    sampler = orders.parse_sampler("mdlm")
    rng = np.random.default_rng(0)
    draws = np.stack([sampler(5, rng) for _ in range(4000)])
    assert set(np.unique(draws)) == {0, 1}
    counts = np.bincount(draws.sum(axis=1), minlength=6)
    assert counts[0] == 0  # at least one target per document
    assert np.all(np.abs(counts[1:] / 4000 - 0.2) < 0.03), counts  # m ~ Uniform{1..5}
    assert np.all(np.abs(draws.mean(axis=0) - 0.6) < 0.04)  # E[m] / L = 3 / 5 at every position
    assert sampler(0, rng).shape == (0,) and sampler(1, rng).tolist() == [1]
    assert orders.is_bound_order(" mdlm ") and not orders.is_bound_order("ar")
    assert orders.uses_mdlm(orders.parse_sampler("0.5*ar + 0.5*mdlm"))
    with pytest.raises(ValueError, match="mdlm takes 0 argument"):
        orders.parse_sampler("mdlm(2)")


# ---- the weighting ---------------------------------------------------------------------------------

def test_elbo_weighting_equals_a_hand_computed_loss_on_a_packed_row():
    model = mdlm_model()
    doc_a, doc_b = np.array([0, 1, 2, 3, 0, 1]), np.array([2, 2, 3])
    grp_a = mask_groups(6, [1, 4])  # L = 6, m = 2: weight 3
    grp_b = mask_groups(3, [0, 1, 2])  # L = 3, m = 3: weight 1
    layout = build_layout([doc_a, doc_b], [grp_a, grp_b], 14, bos_id=BOS, pad_id=PAD)
    batch = as_batch([layout])
    logits, (loss, aux), weights = nnx.jit(lambda m, b: (m(b), model_loss(m, b), mdlm_weights(b)))(model, batch)
    logits = np.asarray(logits, np.float64)[0]
    top = logits.max(-1, keepdims=True)
    log_softmax = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    nll = {}
    for row, (seg, pos) in enumerate(zip(layout["segment_ids"], layout["positions"])):
        nll[(int(seg), int(pos))] = -log_softmax[row, layout["tokens"][row]]
    hand_sum = 3.0 * (nll[(1, 2)] + nll[(1, 5)]) + 1.0 * (nll[(2, 1)] + nll[(2, 2)] + nll[(2, 3)])
    assert float(aux["n_targets"]) == pytest.approx(6 + 3)  # the weights of a document sum to L
    assert float(aux["nll_sum"]) == pytest.approx(hand_sum, rel=1e-5)
    assert float(loss) == pytest.approx(hand_sum / 9, rel=1e-5)
    weights = np.asarray(weights)[0]
    np.testing.assert_allclose(weights[layout["loss_mask"] > 0], [3, 3, 1, 1, 1])
    assert np.all(weights[layout["loss_mask"] == 0] == 0)


def test_packing_gives_the_same_per_document_weighted_loss():
    model = mdlm_model(seed=1)
    rng = np.random.default_rng(5)
    sampler = orders.parse_sampler("mdlm")
    docs = [rng.integers(0, 4, 7), rng.integers(0, 4, 4)]
    groups = [sampler(7, rng), sampler(4, rng)]
    packed = build_layout(docs, groups, 16, bos_id=BOS, pad_id=PAD)
    swapped = build_layout(docs[::-1], groups[::-1], 16, bos_id=BOS, pad_id=PAD)
    alone = [build_layout([d], [g], 16, bos_id=BOS, pad_id=PAD) for d, g in zip(docs, groups)]
    log_probs, weights = log_probs_fn(model, as_batch([packed, swapped] + alone))
    per_row_doc, weights = np.asarray(-log_probs * weights), np.asarray(weights)
    rows = [packed, swapped] + alone
    segment_of = [[1, 2], [2, 1], [1, None], [None, 1]]
    for doc in range(2):
        in_doc = [(r, rows[r]["segment_ids"] == segment_of[r][doc]) for r in range(4) if segment_of[r][doc]]
        values = [per_row_doc[r][rows_of_doc].sum() for r, rows_of_doc in in_doc]
        np.testing.assert_allclose(values, values[0], rtol=1e-5)
        for r, rows_of_doc in in_doc:  # the same weights, summing to the document's length
            np.testing.assert_allclose(np.sort(weights[r][rows_of_doc]), np.sort(weights[in_doc[0][0]][in_doc[0][1]]))
            assert weights[r][rows_of_doc].sum() == pytest.approx(len(docs[doc]))


def _enumerated_bound(model, doc):
    """E over m ~ U{1..L} and a uniform masked set of size m of the weighted loss, computed exactly
    through the loss by enumerating every masked subset (one row each); also n_targets per row."""
    length = len(doc)
    subsets = [s for m in range(1, length + 1) for s in itertools.combinations(range(length), m)]
    layouts = [build_layout([doc], [mask_groups(length, s)], length + 1, bos_id=BOS, pad_id=PAD)
               for s in subsets]
    log_probs, weights = log_probs_fn(model, as_batch(layouts))
    per_row = np.asarray(-(log_probs * weights).sum(axis=1), np.float64)
    expected = sum(per_row[i] / length / math.comb(length, len(s)) for i, s in enumerate(subsets))
    return expected, np.asarray(weights.sum(axis=1))


def test_the_bound_is_exact_for_a_context_free_model():
    model = mdlm_model(seed=2, context_free=True)
    doc = np.array([0, 3, 3, 1, 2])
    bound, weight_sums = _enumerated_bound(model, doc)
    np.testing.assert_allclose(weight_sums, len(doc), rtol=1e-6)
    # The model's (unigram) distribution at a MASK row; its exact NLL of the document.
    layout = build_layout([doc], [np.ones(5, np.int32)], 6, bos_id=BOS, pad_id=PAD)
    logits = np.asarray(model(as_batch([layout])), np.float64)[0, 1]
    log_q = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    assert log_q[MASK] < -1e6  # MASK is never predicted
    exact = -log_q[doc].sum()
    assert bound == pytest.approx(exact, rel=1e-5)


def test_the_bound_is_the_any_order_bound_and_upper_bounds_the_exact_likelihood():
    """For every sequence x of length 3 (6 non-MASK ids): with p_s(x) = prod_t p(x_s(t) | x_s(<t)) the
    model's likelihood under order s (others MASK), the enumerated L/m-weighted loss equals
    E_s[-log p_s(x)] >= -log E_s[p_s(x)] (Jensen), and the mixture E_s[p_s] sums to 1 over x."""
    model = mdlm_model(seed=3)
    length, ids = 3, range(6)
    sequences = list(itertools.product(ids, repeat=length))
    known_sets = [k for r in range(length) for k in itertools.combinations(range(length), r)]
    layouts, index = [], {}
    for x in sequences:
        for known in known_sets:
            masked = [i for i in range(length) if i not in known]
            index[(x, known)] = len(layouts)
            layouts.append(build_layout([np.array(x)], [mask_groups(length, masked)], length + 1,
                                        bos_id=BOS, pad_id=PAD))
    batch = as_batch(layouts)
    log_probs, weights = log_probs_fn(model, batch)
    log_probs = np.asarray(log_probs, np.float64)
    weights = np.asarray(weights, np.float64)
    positions = np.asarray(batch["positions"])

    def cond(x, known, i):  # log p(x_i | x_known), the others MASK
        row = index[(x, tuple(sorted(known)))]
        return log_probs[row][positions[row] == i + 1][0]

    orders_ = list(itertools.permutations(range(length)))
    mixture, bounds, expected_nll = [], [], []
    for x in sequences:
        per_order = np.array([sum(cond(x, order[:t], order[t]) for t in range(length)) for order in orders_])
        mixture.append(np.exp(per_order).mean())
        expected_nll.append(-per_order.mean())
        rows = [index[(x, k)] for k in known_sets]  # m = length - len(k) masked, each set w.p. 1/C(L, m) / L
        bounds.append(sum(-(log_probs[r] * weights[r]).sum() / length / math.comb(length, length - len(k))
                          for r, k in zip(rows, known_sets)))
    mixture, bounds, expected_nll = map(np.array, (mixture, bounds, expected_nll))
    assert mixture.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(bounds, expected_nll, rtol=1e-5)
    gap = bounds + np.log(mixture)
    assert np.all(gap >= -1e-5)
    assert gap.max() > 1e-3  # a model that uses context: the bound is not tight


# ---- MASK inputs and visibility --------------------------------------------------------------------

def test_sampled_layouts_mask_exactly_the_targets(small_corpus):
    from a3jax.data import ByteTokenizer
    from a3jax.data.pipeline import train_dataset

    config = micro_config("model.variant=mdlm", "model.vocab_size=260", "orders.curriculum=mdlm",
                          "orders.eval=mdlm")
    mask = 259
    model = Transformer(ModelConfig.from_mapping(config.model.to_dict()), rngs=nnx.Rngs(0))
    assert model.cfg.mask_token_id == mask and not hasattr(model, "query_embed")
    silence_residual_branches(model)
    dataset = train_dataset(config, small_corpus, ByteTokenizer())
    layouts = [dataset[i] for i in range(8)]
    batch = as_batch(layouts)
    real = np.asarray(batch["segment_ids"]) > 0
    targets = np.asarray(batch["loss_mask"]) > 0
    groups = np.asarray(batch["groups"])
    assert targets.sum() > 50 and (real & ~targets).sum() > 50
    assert np.all(groups[targets] == 1) and np.all(groups[real & ~targets] == 0)
    assert np.all(np.asarray(batch["tokens"])[targets] != mask)  # MASK is never a target
    for row in range(8):  # every document: m in 1..L, BOS visible
        for seg in set(layouts[row]["segment_ids"]) - {0}:
            in_doc = layouts[row]["segment_ids"] == seg
            assert 1 <= targets[row][in_doc].sum() <= in_doc.sum() - 1
            assert not targets[row][in_doc & (layouts[row]["positions"] == 0)].any()
    # With the residual branches off, the hidden state is the normed embedding of each row's input.
    hidden = np.asarray(model.hidden_states(batch)["content"])
    embed, norm = model.embed[...], model.final_norm[...]
    visible_in = np.asarray(rms_norm(embed[batch["tokens"]], norm, model.cfg.norm_eps))
    mask_in = np.asarray(rms_norm(embed[mask], norm, model.cfg.norm_eps))
    np.testing.assert_allclose(hidden[real & ~targets], visible_in[real & ~targets], atol=1e-5)
    np.testing.assert_allclose(hidden[targets], np.broadcast_to(mask_in, hidden[targets].shape), atol=1e-5)


def test_targets_never_influence_any_logit_and_visible_tokens_do():
    seed = 1
    rng = np.random.default_rng(seed)
    sampler = orders.parse_sampler("mdlm")
    docs = [rng.integers(0, 4, size=7), rng.integers(0, 4, size=5)]
    groups = [sampler(len(d), rng) for d in docs]
    groups[0][[0, 6]] = [1, 0]  # doc 0: a target at position 1 and a visible token after it
    layout = build_layout(docs, groups, 16, bos_id=BOS, pad_id=PAD)
    batch = as_batch([layout])
    model = mdlm_model(seed=seed)
    embeds = model.embed_tokens(batch["tokens"])[0]

    def logits_of(embeds_NxD):
        return model(batch, inputs_embeds=embeds_NxD[None])[0]

    jac = jax.jit(jax.jacrev(logits_of))(embeds)  # [N, V, N, D]
    influence = np.abs(np.asarray(jac)).sum(axis=(1, 3))  # [row i, key j]
    seg, pos = layout["segment_ids"], layout["positions"]
    real, targets = seg > 0, layout["loss_mask"] > 0
    same_doc = (seg[:, None] == seg[None, :]) & real[:, None]
    # A target's own token (and every other target's) influences no logit at all: its input is MASK.
    assert np.all(influence[:, targets] == 0.0)
    # Padding never influences real rows, nor other documents.
    assert np.all(influence[np.ix_(real, ~real)] == 0.0)
    assert np.all(influence[real[:, None] & ~same_doc & real[None, :]] == 0.0)
    # Every visible token of the document (earlier or LATER: bidirectional) influences its targets.
    visible_to_target = same_doc & targets[:, None] & (real & ~targets)[None, :]
    assert visible_to_target.sum() >= 5 and np.all(influence[visible_to_target] > 0)
    later = visible_to_target & (pos[None, :] > pos[:, None])
    assert later.any() and np.all(influence[later] > 0)


def test_eval_totals_report_the_bound_per_token_and_exact_byte_counts():
    model = mdlm_model(seed=4)
    eos = 3
    doc_a, doc_b = np.array([0, 1, 2, 3]), np.array([1, 3, 3])  # 3 and 1 non-EOS tokens
    layout = build_layout([doc_a, doc_b], [mask_groups(4, [3]), mask_groups(3, [0])], 12, bos_id=BOS, pad_id=PAD)
    batch = as_batch([layout])
    totals, (_, aux) = nnx.jit(lambda m, b: (model_eval_totals(m, b, eos), model_loss(m, b)))(model, batch)
    assert float(totals["nll_sum"]) == pytest.approx(float(aux["nll_sum"]), rel=1e-6)
    assert float(totals["n_targets"]) == pytest.approx(7)
    assert float(totals["n_bytes"]) == 4  # exact, although only an EOS and one byte are masked
    a3 = Transformer(ModelConfig(vocab_size=V, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=8,
                                 dtype="float32"), rngs=nnx.Rngs(0))
    a3_totals = nnx.jit(lambda m, b: model_eval_totals(m, b, eos))(a3, batch)  # other variants: targets but EOS
    assert float(a3_totals["n_targets"]) == 2 and float(a3_totals["n_bytes"]) == 1


# ---- configs, training, decoding ---------------------------------------------------------------

MDLM_CONFIG = ("model.variant=mdlm", "model.vocab_size=260", "orders.curriculum=mdlm", "orders.eval=mdlm")


@pytest.mark.parametrize("overrides, message", [
    (("orders.curriculum=ar",), r"trains only under the 'mdlm' order.*orders.curriculum=mdlm"),
    (("orders.curriculum=mdlm until 5; random(4)",), r"trains only under the 'mdlm' order"),
    (("orders.eval=('mdlm', 'ar')",), r"evaluated only under the 'mdlm' order.*orders.eval=mdlm"),
    (("model.vocab_size=259",), r"vocab_size - 1 = 258.*MASK.*byte tokenizer uses ids up to 258.*"
                                r"model.vocab_size=260"),
])
def test_validate_errors_for_mdlm(overrides, message):
    with pytest.raises(ConfigError, match=message):
        micro_config(*MDLM_CONFIG, *overrides)


def test_validate_rejects_the_mdlm_order_for_other_variants():
    micro_config(*MDLM_CONFIG)  # valid
    with pytest.raises(ConfigError, match=r"'mdlm' order is the masked-diffusion control's.*variant='a3'"):
        micro_config("orders.curriculum=0.5*ar + 0.5*mdlm")
    with pytest.raises(ConfigError, match=r"variant='a3' has it in orders \['mdlm'\]"):
        micro_config("orders.eval=mdlm")
    with pytest.raises(ValueError, match="model.variant='diffusion' is not one of"):
        ModelConfig(variant="diffusion")


@pytest.mark.slow
def test_micro_training_run_reports_the_bound(tmp_path, small_corpus):
    """Needs the lead's loop.py/step.py change: eval keys mdlm/nll_bound, exact n_bytes."""
    from a3jax.train.loop import train
    from a3jax.train.metrics import read_metrics
    from a3jax.train.step import make_eval_step

    config = micro_config(*MDLM_CONFIG, "train.steps=10", "train.eval_every=10", "train.checkpoint_every=10",
                          "model.n_layers=1", "mesh.devices=1")  # one layer, one device: a quick compile
    summary = train(config, tmp_path, corpus=small_corpus, progress=False)
    curve = [r["train/loss"] for r in read_metrics(tmp_path) if "train/loss" in r]
    assert len(curve) == 10 and all(np.isfinite(curve))
    assert np.mean(curve[-3:]) < np.mean(curve[:3]) - 0.3  # from ~log(259) towards the unigram entropy
    assert set(summary["eval"]) == {"mdlm/nll_bound", "mdlm/bits_per_byte_bound"}
    assert all(np.isfinite(v) and v > 0 for v in summary["eval"].values())
    # The eval step counts bytes exactly (not through the L/m weights): 2 bytes and an EOS.
    from a3jax.model.params import abstract_params

    model_def, _ = abstract_params(ModelConfig.from_mapping(config.model.to_dict()))
    layout = build_layout([np.array([10, 20, 258])], [np.array([0, 1, 1])], 8, bos_id=257, pad_id=256)
    totals = make_eval_step(model_def, 258)(summary["params"], as_batch([layout]))
    assert float(totals["n_bytes"]) == 2 and float(totals["n_targets"]) == pytest.approx(3)


def test_recompute_decoding_fills_a_gap_and_cached_mode_errors():
    from a3jax.model.params import init_model

    model_def, params = init_model(ModelConfig(variant="mdlm", vocab_size=12, d_model=16, n_layers=1, n_heads=2,
                                               n_kv_heads=1, ffn_dim=32, dtype="float32", init_std=0.5), 0)
    bos, pad = 10, 9  # EOS = 8, MASK = 11
    doc = np.array([1, 2, 0, 0, 0, 0, 3, 4], np.int32)
    known = np.array([1, 1, 0, 0, 0, 0, 1, 1], bool)
    model = model_def.bind(params)
    assert model.cfg.mask_token_id == 11
    for plan in ("random(2)", "confidence(2)"):  # a static plan and the usual MDLM sampler
        result = generate(model_def, params, [doc], [known], bos_id=bos, pad_id=pad,
                          sampling=SampleConfig(plan=plan, mode="recompute", temperature=0.0))
        filled = result.tokens[0]
        assert filled.shape == doc.shape and np.array_equal(filled[known], doc[known])
        assert np.all((filled[~known] >= 0) & (filled[~known] < 11))  # never MASK, never unfilled
        assert np.all(result.steps[0][~known] >= 1)
        # Step 1 predicted from the given tokens only, the rest MASK: the full forward's log-probs.
        first = result.steps[0] == 1
        layout = build_layout([np.where(known, doc, filled)], [(~known).astype(np.int32)], 10, bos_id=bos,
                              pad_id=pad)
        log_probs, _ = log_probs_fn(model, as_batch([layout]))
        by_position = dict(zip(layout["positions"].tolist(), np.asarray(log_probs[0]).tolist()))
        for position in np.flatnonzero(first) + 1:
            assert result.log_probs[0][position - 1] == pytest.approx(by_position[int(position)], abs=1e-5)
    with pytest.raises(ValueError, match="masked diffusion recomputes every step; use mode='recompute'"):
        generate(model_def, params, [doc], [known], bos_id=bos, pad_id=pad, sampling=SampleConfig(plan="random(2)"))
