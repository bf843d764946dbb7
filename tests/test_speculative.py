"""Exact parallel decoding (plan speculative(k), decode/speculative.py): its samples follow the
model's one-position-at-a-time joint along the order exactly, in fewer model calls."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from a3jax.decode import SampleConfig, generate, parse_plan
from a3jax.decode.sampling import shaped_probs
from a3jax.layout import build_layout, unsort
from a3jax.model import ModelConfig
from a3jax.model.params import init_model

from support import model_log_probs

CONTEXT = 1  # the known token at position 1; positions 2..5 are generated
ORDERS = {"ar": None, "scrambled": np.array([0, 3, 1, 4, 2])}  # group ids rank positions 2..5: 4, 2, 5, 3


def _model(vocab=3, seed=4, init_std=1.0, query_input="vector"):
    cfg = ModelConfig(vocab_size=vocab, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=64,
                      dtype="float32", init_std=init_std, query_input=query_input)
    return init_model(cfg, seed)


def _sample(model_def, params, plan, n, order, temperature=1.0, top_p=1.0, seed=11):
    docs = [np.array([CONTEXT, 0, 0, 0, 0], np.int32)] * n
    known = [np.array([1, 0, 0, 0, 0], bool)] * n
    groups = None if ORDERS[order] is None else [ORDERS[order]] * n
    if ORDERS[order] is not None and not plan.startswith("speculative"):
        plan = "groups"
    result = generate(model_def, params, docs, known, bos_id=0, pad_id=0, eos_id=None, groups=groups,
                      sampling=SampleConfig(plan=plan, seed=seed, temperature=temperature, top_p=top_p))
    return result


def _joint(model_def, params, groups, temperature=1.0, top_p=1.0):
    """P of all 3^4 continuations under one singleton grouping (the one-at-a-time joint of its
    order), with each conditional shaped like the sampler's: one forward pass per sequence."""
    model = model_def.bind(params)
    sequences = np.array(list(itertools.product(range(3), repeat=4)), np.int32)
    layouts = [build_layout([np.concatenate([[CONTEXT], s])], [groups], 6, bos_id=0, pad_id=0) for s in sequences]
    batch = {k: jnp.asarray(np.stack([lay[k] for lay in layouts])) for k in layouts[0]}
    logits = np.asarray(model(batch))  # query-stream logits in generation order
    probs = np.ones(len(sequences))
    for i, lay in enumerate(layouts):
        shaped = np.asarray(shaped_probs(jnp.asarray(unsort(logits[i], lay, 1)), temperature, 0, top_p))
        tokens = unsort(lay["tokens"], lay, 1)
        for pos in range(2, 6):  # original positions of the generated tokens (BOS = 0, context = 1)
            probs[i] *= shaped[pos, tokens[pos]]
    return sequences, probs


def _chi_square(samples, expected):
    codes = samples @ (3 ** np.arange(3, -1, -1))
    observed = np.bincount(codes, minlength=81)
    if observed[expected == 0].sum():  # a sequence the joint gives probability 0 was drawn
        return 0.0
    keep = expected >= 5  # pool rare sequences into one bin
    obs, exp = observed[keep], expected[keep]
    if expected[~keep].sum() > 0:
        obs, exp = np.append(obs, observed[~keep].sum()), np.append(exp, expected[~keep].sum())
    return stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue


@pytest.mark.slow
@pytest.mark.parametrize("order, k, query_input", [
    ("ar", 2, "vector"), ("scrambled", 2, "vector"), ("scrambled", 4, "vector"),
    ("ar", 4, "shift"), ("scrambled", 2, "shift"), ("ar", "3, chain", "shift")])
def test_samples_follow_the_one_at_a_time_joint_exactly(order, k, query_input):
    model_def, params = _model(query_input=query_input)
    n = 12_000
    result = _sample(model_def, params, f"speculative({k}, order={'ar' if order == 'ar' else 'groups'})", n, order)
    if "chain" in str(k):  # chained proposals: a pass per drafted position
        assert result.stats["passes"] > result.stats["calls"]
    groupings = np.unique(np.stack(result.groups), axis=0)
    assert len(groupings) == 1  # one order for every sample: singletons in it, context first
    grouping = groupings[0]
    assert sorted(grouping[1:]) == [2, 3, 4, 5]
    sequences, probs = _joint(model_def, params, grouping)
    assert abs(probs.sum() - 1) < 1e-5 and probs.max() / probs.min() > 20  # normalised, far from uniform
    samples = np.stack(result.tokens)[:, 1:]
    expected = np.zeros(81)
    expected[sequences @ (3 ** np.arange(3, -1, -1))] = probs * n
    assert _chi_square(samples, expected) > 1e-3
    # fewer calls than one per position: 5 per row one at a time, the prompt's call included (the
    # batch's calls are its slowest row's: out of 12,000 rows, some reject every draft)
    assert result.stats["row_calls"].mean() < 4.5
    by_source = result.stats["by_source"]  # every draft offered is counted once, under its source
    assert sum(v["offered"] for v in by_source.values()) == result.stats["offered"].sum()
    assert sum(v["accepted"] for v in by_source.values()) == result.stats["accepted"].sum()
    # the same test rejects independent sampling within groups of k (blocks(k) / k-wide groups)
    if order == "ar":
        blocky = _sample(model_def, params, f"blocks({str(k)[0]})", n, order)
    else:  # groups of k in the same order: the caller's ranks, k per group
        blocky = generate(model_def, params, [np.array([CONTEXT, 0, 0, 0, 0], np.int32)] * n,
                          [np.array([1, 0, 0, 0, 0], bool)] * n, bos_id=0, pad_id=0, eos_id=None,
                          groups=[np.array([0, 2, 1, 2, 1]) if k == 2 else np.array([0, 1, 1, 1, 1])] * n,
                          sampling=SampleConfig(plan="groups", seed=11, temperature=1.0))
    assert _chi_square(np.stack(blocky.tokens)[:, 1:], expected) < 1e-6


@pytest.mark.slow
def test_shaped_sampling_follows_the_shaped_joint():
    """Temperature and top-p shape p and q alike: the samples follow the joint of the shaped
    one-at-a-time conditionals (and not the unshaped one)."""
    model_def, params = _model(init_std=0.6)
    n = 12_000
    result = _sample(model_def, params, "speculative(4)", n, "ar", temperature=1.5, top_p=0.95)
    grouping = np.stack(result.groups)[0]
    sequences, shaped = _joint(model_def, params, grouping, temperature=1.5, top_p=0.95)
    assert (shaped > 0).sum() > 10 and (shaped == 0).sum() > 10  # the nucleus cut some, kept many
    expected = np.zeros(81)
    expected[sequences @ (3 ** np.arange(3, -1, -1))] = shaped * n
    samples = np.stack(result.tokens)[:, 1:]
    assert _chi_square(samples, expected) > 1e-3
    _, plain = _joint(model_def, params, grouping)
    expected[sequences @ (3 ** np.arange(3, -1, -1))] = plain * n
    assert _chi_square(samples, expected) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("plan", ["speculative(3)", "speculative(4, adaptive)", "speculative(2, order=random)"])
def test_log_probs_equal_a_full_forward_under_the_singletons_used(plan):

    model_def, params = _model(vocab=12, init_std=0.3)
    rng = np.random.default_rng(2)
    docs = [rng.integers(1, 9, 10).astype(np.int32), rng.integers(1, 9, 7).astype(np.int32)]
    known = [np.array([1, 0, 0, 1, 0, 0, 0, 1, 0, 0], bool), np.array([0, 1, 0, 0, 1, 0, 0], bool)]
    result = generate(model_def, params, docs, known, bos_id=10, pad_id=11, eos_id=None,
                      sampling=SampleConfig(plan=plan, seed=5))
    model = model_def.bind(params)
    for b in range(2):
        groups, scored = result.groupings(b)[0]
        assert len(np.unique(groups)) == groups.size  # singletons
        layout = build_layout([result.tokens[b]], [groups], 12, bos_id=10, pad_id=11)
        log_probs, _ = model_log_probs(model, {k: jnp.asarray(v)[None] for k, v in layout.items()})
        full = unsort(np.asarray(log_probs[0]), layout, 1)[1:result.tokens[b].size + 1]
        np.testing.assert_allclose(result.log_probs[b][scored], full[scored], atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("order, plan", [(o, p) for o in ("ar", "random") for p in (
    "speculative(1)", "speculative(2)", "speculative(4)", "speculative(4, adaptive)")] + [
    ("ar", "speculative(4, draft=ngram)")])
def test_greedy_speculative_equals_greedy_one_at_a_time(order, plan):
    model_def, params = _model(vocab=12, init_std=0.5)
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 9, 12).astype(np.int32), rng.integers(0, 9, 9).astype(np.int32)]
    known = [np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0], bool), np.array([0, 1, 0, 0, 0, 0, 1, 0, 0], bool)]
    ref = generate(model_def, params, docs, known, bos_id=10, pad_id=11,
                   sampling=SampleConfig(plan=order, temperature=0, seed=3))
    spec = plan[:-1] + f", order={order})"
    drafter = None
    if "ngram" in plan:
        from a3jax.decode.ngram import NgramDrafter

        drafter = NgramDrafter([rng.integers(0, 9, 400)], 12, max_order=3)
    res = generate(model_def, params, docs, known, bos_id=10, pad_id=11,
                   sampling=SampleConfig(plan=spec, temperature=0, seed=3), drafter=drafter)
    for a, b in zip(ref.tokens, res.tokens):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(ref.log_probs, res.log_probs):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_bad_uses_are_refused():
    model_def, params = _model(vocab=12, init_std=0.3)
    docs, known = [np.arange(6, dtype=np.int32)], [np.array([1, 0, 0, 1, 0, 0], bool)]
    kwargs = dict(bos_id=10, pad_id=11)
    with pytest.raises(ValueError, match="mode='cached'"):
        generate(model_def, params, docs, known, sampling=SampleConfig(plan="speculative(2)", mode="recompute"),
                 **kwargs)
    with pytest.raises(ValueError, match="pass groups="):
        generate(model_def, params, docs, known, sampling=SampleConfig(plan="speculative(2, order=groups)"),
                 **kwargs)
    with pytest.raises(ValueError, match="forced= and keep_cache="):
        generate(model_def, params, docs, known, forced=[np.zeros(6, np.int32)],
                 sampling=SampleConfig(plan="speculative(2)"), **kwargs)
    # a chain reads the token just proposed as the next row's previous token: the shifted query
    # stream in the order ar, with model drafts; elsewhere it is refused, not silently one-pass
    with pytest.raises(ValueError, match="query_input='vector'"):
        generate(model_def, params, docs, known, sampling=SampleConfig(plan="speculative(2, chain)"), **kwargs)
    for plan, why in [("speculative(2, chain, order=random)", "order=random"),
                      ("speculative(2, chain, draft=ngram)", "draft=ngram")]:
        with pytest.raises(ValueError, match=why):
            parse_plan(plan)


@pytest.mark.slow
def test_the_same_seed_samples_the_same_with_x64_on():
    """The acceptance uniforms are float32 whatever jax_enable_x64 says: the same seed gives the same
    samples (with float64 uniforms under x64 the accept/reject decisions, and so the samples, differ)."""
    model_def, params = _model(vocab=12, init_std=0.5)
    rng = np.random.default_rng(7)
    docs = [rng.integers(0, 9, 12).astype(np.int32) for _ in range(16)]
    known = [np.arange(12) % 5 == 0 for _ in range(16)]

    def run():
        return generate(model_def, params, docs, known, bos_id=10, pad_id=11,
                        sampling=SampleConfig(plan="speculative(4)", seed=3))

    before = jax.config.jax_enable_x64
    try:
        jax.config.update("jax_enable_x64", False)
        reference = run()
        jax.config.update("jax_enable_x64", True)
        result = run()
    finally:
        jax.config.update("jax_enable_x64", before)
    for a, b in zip(reference.tokens, result.tokens):
        np.testing.assert_array_equal(a, b)


def _completion_joint(model_def, params, template, known, grouping):
    """P of every completion of `template`'s unknown positions under `grouping` (the one the
    sampler used: given tokens left to right, then the generated ones one at a time)."""
    model = model_def.bind(params)
    gaps = np.flatnonzero(~known)
    sequences = np.array(list(itertools.product(range(3), repeat=gaps.size)), np.int32)
    docs = []
    for s in sequences:
        doc = template.copy()
        doc[gaps] = s
        docs.append(doc)
    layouts = [build_layout([d], [grouping], template.size + 2, bos_id=0, pad_id=0) for d in docs]
    batch = {k: jnp.asarray(np.stack([lay[k] for lay in layouts])) for k in layouts[0]}
    log_probs, _ = model_log_probs(model, batch)
    log_probs = np.asarray(log_probs)
    probs = np.array([np.exp(unsort(log_probs[i], lay, 1)[gaps + 1].sum()) for i, lay in enumerate(layouts)])
    return sequences, probs


def _tiny_drafter():
    """An n-gram drafter over the 3-token vocabulary that disagrees with the model often enough
    for every branch (accept, reject, no continuation) to be taken."""
    from a3jax.decode.ngram import NgramDrafter

    return NgramDrafter([np.array([1, 2, 1, 2, 0, 1, 2, 2, 1, 0, 0, 2, 1, 2, 1, 1])], 3, max_order=3)


@pytest.mark.slow
@pytest.mark.parametrize("draft, query_input", [("copy", "vector"), ("auto", "shift"), ("ngram", "shift"),
                                                ("ngram", "vector")])
def test_copied_and_mixed_drafts_sample_the_joint_exactly(draft, query_input):
    """Point-mass drafts copied from the known text (a right-hand context that repeats the left)
    or from an n-gram table, alone or mixed with the model's drafts, still sample the
    one-at-a-time joint exactly; the same test rejects blocks(4)."""
    model_def, params = _model(query_input=query_input)
    template = np.array([1, 2, 0, 0, 0, 0, 1, 2, 1, 2], np.int32)
    known = np.array([1, 1, 0, 0, 0, 0, 1, 1, 1, 1], bool)
    n = 12_000
    result = generate(model_def, params, [template] * n, [known] * n, bos_id=0, pad_id=0, eos_id=None,
                      sampling=SampleConfig(plan=f"speculative(4, draft={draft})", seed=3),
                      drafter=_tiny_drafter() if draft == "ngram" else None)
    by_source = result.stats["by_source"]
    copied = by_source["ngram" if draft == "ngram" else "copy"]
    assert copied["offered"] > n  # copying really happened
    if draft == "ngram":  # rejected and accepted table drafts, the model's exact first drafts, and
        # its fallback drafts after a rejection (accepted or not)
        assert copied["accepted"] > n // 100 and copied["offered"] - copied["accepted"] > n // 100
        fallback = result.stats["fallback"]
        assert 0 < fallback["accepted"] < fallback["offered"]
        exact = by_source["model"]["offered"] - fallback["offered"]
        # (round 0 drafts from the table too, with the prompt: the model's exact drafts are the
        # rarer branch, about 1% of rows)
        assert by_source["model"]["accepted"] - fallback["accepted"] == exact > n // 1000
        assert result.stats["passes"] == result.stats["calls"]  # one pass per round: nothing chained
    if draft == "auto":
        assert by_source["model"]["offered"] > n // 10
    groupings = np.unique(np.stack(result.groups), axis=0)
    assert len(groupings) == 1
    sequences, probs = _completion_joint(model_def, params, template, known, groupings[0])
    assert abs(probs.sum() - 1) < 1e-5 and probs.max() / probs.min() > 20
    samples = np.stack([t[~known] for t in result.tokens])
    expected = np.zeros(81)
    expected[sequences @ (3 ** np.arange(3, -1, -1))] = probs * n
    assert _chi_square(samples, expected) > 1e-3
    blocky = generate(model_def, params, [template] * n, [known] * n, bos_id=0, pad_id=0, eos_id=None,
                      sampling=SampleConfig(plan="blocks(4)", seed=3))
    assert _chi_square(np.stack([t[~known] for t in blocky.tokens]), expected) < 1e-6


# Each plan runs under one query input (the two each compiling every plan took two minutes): the
# shifted stream where the n-gram lead and the next-token proposal matter, the vector for the rest.
DEVICE_ROUND_PLANS = {"shift": [("speculative(4)", 1.0, 3), ("speculative(4, draft=ngram)", 1.0, 3)],
                      "vector": [("speculative(3, draft=copy)", 0.0, 3), ("speculative(4, adaptive)", 1.0, None),
                                 ("speculative(2, draft=model, order=random)", 1.0, 3)]}


@pytest.mark.slow
def test_one_pass_rounds_take_every_branch_and_never_spend_more_passes_than_ar():
    """Every round is one pass that decides at least one token per row (the resampled token, or
    the accepted drafts), so no plan without `chain` spends more passes than `ar` -- with copies,
    n-gram drafts, adaptive counts, rejections and their fallback drafts, random orders and EOS
    cuts all taking place (their exactness: the chi-square tests above)."""
    from a3jax.decode.ngram import NgramDrafter

    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 6, 24).astype(np.int32) for _ in range(8)]
    docs[1][:12] = docs[1][12:]  # a row that repeats itself: copies to draft
    known = [rng.random(24) < 0.4 for _ in range(8)]
    longest = max(int((~m).sum()) for m in known)
    drafter = NgramDrafter([rng.integers(0, 6, 300), np.tile([1, 2, 3, 4], 20)], 12, max_order=3)
    copies = cut = rejected = table = fallback = 0
    for query_input, plans in DEVICE_ROUND_PLANS.items():
        model_def, params = _model(vocab=12, init_std=0.5, query_input=query_input)
        for plan, temperature, eos in plans:
            result = generate(model_def, params, docs, known, bos_id=10, pad_id=11, eos_id=eos,
                              sampling=SampleConfig(plan=plan, seed=5, temperature=temperature), drafter=drafter)
            stats = result.stats
            # round 0 (the prompt) + one pass a token at most
            assert stats["passes"] == stats["calls"] <= 1 + longest, plan
            assert (stats["row_calls"] <= 1 + np.array([(~m).sum() for m in known])).all(), plan
            copies += stats["by_source"]["copy"]["offered"]
            cut += sum(t.size < d.size for t, d in zip(result.tokens, docs))
            rejected += stats["offered"].sum() - stats["accepted"].sum()
            table += stats["by_source"]["ngram"]["accepted"]
            fallback += stats["fallback"]["accepted"]
    assert copies > 0 and cut > 0 and rejected > 0 and table > 0 and fallback > 0  # every branch was taken


def _copy_reference(text, position, k, shortest=2, longest=8):
    """The copy rule written plainly: for each suffix length, longest first, every match in the
    text; the nearest before `position` wins, else the nearest after."""
    for n in range(longest, shortest - 1, -1):
        suffix = text[position - n:position]
        if position - n < 1 or np.any(suffix < 0):
            continue
        ends = [e for e in range(n, text.size) if e != position and text[e] >= 0
                and np.array_equal(text[e - n:e], suffix)]
        if not ends:
            continue
        before = [e for e in ends if e < position]
        begin = max(before) if before else min(ends)
        run = text[begin:begin + k]
        cut = np.flatnonzero(run < 0)
        return run[:cut[0]] if cut.size else run
    return text[:0]


def test_copy_drafts_follow_the_longest_nearest_match():
    from a3jax.decode.rounds import copy_run
    from a3jax.decode.speculative import MAX_MATCH, MIN_MATCH

    assert (MIN_MATCH, MAX_MATCH) == (2, 8)
    rng = np.random.default_rng(0)
    found, cases = 0, []
    for _ in range(3000):
        length, vocab = int(rng.integers(3, 50)), int(rng.integers(2, 5))
        text = rng.integers(0, vocab, length + 1)
        text[0] = 9  # BOS: never part of a suffix
        text[rng.random(length + 1) < rng.random() * 0.5] = -1
        text[0] = 9
        position, k = int(rng.integers(1, length + 1)), int(rng.integers(1, 6))
        got = _copy_reference(text, position, k)
        found += got.size > 0
        cases.append((text, position, k, got))
    assert found > 600  # the cases exercise matches, not only misses (980 of 3000)
    # the device rounds' jnp rule (decode/rounds.py), every case at once as one batch of rows
    width = max(c[0].size for c in cases)
    texts = np.stack([np.pad(c[0], (0, width - c[0].size), constant_values=-1) for c in cases]).astype(np.int32)
    positions = np.array([c[1] for c in cases], np.int32)
    rooms = np.array([c[2] for c in cases], np.int32)
    tokens, counts = jax.device_get(jax.jit(copy_run, static_argnums=(3, 4, 5))(
        texts, positions, rooms, 5, MIN_MATCH, MAX_MATCH))
    for (_, _, _, got), row, count in zip(cases, tokens, counts):
        np.testing.assert_array_equal(row[:count], got)
    # the right-hand context of a gap: `x = f(` [gap] `x = f(a)` copies `a)`
    text = np.array([[9, 1, 2, 3, -1, -1, -1, 1, 2, 3, 4, 5]], np.int32)
    tokens, count = copy_run(jnp.asarray(text), jnp.array([4]), jnp.array([3]), 3, MIN_MATCH, MAX_MATCH)
    np.testing.assert_array_equal(np.asarray(tokens)[0, :int(count[0])], [4, 5])


def _ngram_reference(docs, context, min_count=2):
    """The n-gram rule written plainly: the longest known context (up to 3 tokens) seen at least
    min_count times in the documents; its most frequent next token (the smallest on a tie)."""
    import collections

    for c in range(3, 0, -1):
        if len(context) < c:
            continue
        counts = collections.Counter(int(doc[i + c]) for doc in docs for i in range(len(doc) - c)
                                     if tuple(doc[i:i + c]) == tuple(context[-c:]))
        total = sum(counts.values())
        if total >= min_count:
            token, count = max(counts.items(), key=lambda kv: (kv[1], -kv[0]))
            return token, count / total
    return -1, 0.0


def test_ngram_drafts_follow_the_most_frequent_continuation():
    from a3jax.decode.ngram import NgramDrafter

    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 5, rng.integers(1, 60)) for _ in range(40)]
    drafter = NgramDrafter(docs, 5, max_order=4)
    found, rows = 0, []
    for _ in range(300):
        context = list(rng.integers(0, 5, rng.integers(1, 4)))
        row = np.full(3, -1)
        row[3 - len(context):] = context
        token, share = drafter.next_tokens(row[None])
        expected = _ngram_reference(docs, context)
        assert (int(token[0]), float(share[0])) == pytest.approx(expected)
        found += token[0] >= 0
        rows.append(row)
    assert found > 250
    # the device rounds' lookup (decode/rounds.py: binary searches over the spelled-out contexts)
    from a3jax.decode.rounds import device_ngram_tables, ngram_next

    rows = np.array(rows + [[-1, -1, -1], [4, 4, 4]], np.int32)  # no context; a context never seen
    expected = drafter.next_tokens(rows)
    got = jax.device_get(jax.jit(ngram_next)(device_ngram_tables(drafter), rows))
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    # documents are never crossed: "1 2" continues as 3 or 5 twice each (the smaller on the tie),
    # never as the 4 that begins the next document
    drafter = NgramDrafter([np.array([1, 2, 3, 1, 2, 3, 1, 2]), np.array([4, 1, 2, 5, 1, 2, 5])], 9, max_order=3)
    token, share = drafter.next_tokens(np.array([[-1, 1, 2]]))
    assert (token[0], share[0]) == (3, 0.5)
    token, share = drafter.next_tokens(np.array([[-1, 4, 1]]))  # "4 1" seen once: back off to "1" -> 2
    assert (token[0], share[0]) == (2, 1.0)
    # chains continue the drafts; the chance of a chain (0.5 per "1 2") stops it below min_chance
    text = np.array([8, 1, 2, -1, -1, -1, -1])  # BOS 8, then 1 2 and four unknown positions
    from a3jax.decode.rounds import ngram_run

    for lead, min_chance, room, expected in [(-1, 0.0, 4, [3, 1, 2, 3]), (-1, 0.3, 4, [3, 1, 2]), (-1, 0.0, 2, [3, 1]),
                                             (3, 0.0, 4, [3, 1, 2, 3]), (2, 0.0, 4, [2, 3, 1, 2]), (5, 0.0, 3, [5])]:
        drafts, count = ngram_run(device_ngram_tables(drafter), 2, jnp.asarray(text[None], jnp.int32),
                                  jnp.array([3]), jnp.array([max(lead, 0)]), jnp.array([lead >= 0]),
                                  jnp.array([room]), 4, min_chance)
        np.testing.assert_array_equal(np.asarray(drafts)[0, :int(count[0])], expected)
    # an excluded token splits a document like a boundary
    split = NgramDrafter([np.array([1, 2, 7, 1, 2, 7, 1, 2])], 9, max_order=3, exclude=(7,))
    whole = NgramDrafter([np.array([1, 2])] * 3, 9, max_order=3)
    for c in whole.tables:
        for x, y in zip(split.tables[c], whole.tables[c]):
            np.testing.assert_array_equal(x, y)


def test_ngram_drafts_need_a_drafter_and_the_ar_order():
    model_def, params = _model(vocab=12, init_std=0.3)
    docs, known = [np.arange(6, dtype=np.int32)], [np.array([1, 0, 0, 1, 0, 0], bool)]
    with pytest.raises(ValueError, match="drafter="):
        generate(model_def, params, docs, known, bos_id=10, pad_id=11,
                 sampling=SampleConfig(plan="speculative(2, draft=ngram)"))
    with pytest.raises(ValueError, match="left to right"):
        generate(model_def, params, docs, known, bos_id=10, pad_id=11,
                 sampling=SampleConfig(plan="speculative(2, draft=ngram, order=random)"))

