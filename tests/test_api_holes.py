"""Public API edges: generate refuses `groups` its plan would ignore, recompute mode says under which
groupings its log-probs were computed (and they reproduce), the KV cache runs with jax_enable_x64,
layout.unsort un-permutes values with trailing dimensions, and hf_export.hf_state_dict gives the
tensors that the file export writes (tiny random models, CPU, float32)."""

import contextlib
import json

import jax
import numpy as np
import pytest

from a3jax.checkpoint import Checkpointer
from a3jax.decode import SampleConfig, generate
from a3jax.decode.sampler import recompute_groups
from a3jax.eval.score import score_documents
from a3jax.layout import build_layout, stack_layouts, unsort
from a3jax.loss import target_log_probs
from a3jax.model import ModelConfig
from a3jax.model.params import init_model

BOS, PAD = 10, 9  # vocab 12: the mdlm variant's MASK is 11


def _model(variant="a3", seed=0):
    cfg = ModelConfig(vocab_size=12, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=64,
                      dtype="float32", init_std=0.3, variant=variant)
    return init_model(cfg, seed)


def _docs():
    rng = np.random.default_rng(2)
    docs = [np.array([3, 0, 0, 0, 5], np.int32),  # three generated tokens between two given ones
            rng.integers(0, 9, 10).astype(np.int32), rng.integers(0, 9, 7).astype(np.int32)]
    known = [np.array([1, 0, 0, 0, 1], bool), np.array([1, 0, 0, 1, 0, 0, 0, 1, 0, 0], bool),
             np.array([0, 1, 0, 0, 1, 0, 0], bool)]
    return docs, known


def _full_log_probs(model_def, params, doc, groups, seq_len=16):
    """{position: log p(token)} of one document's targets from one uncached forward pass."""
    layout = build_layout([doc], [groups], seq_len, bos_id=BOS, pad_id=PAD)
    batch = {k: np.asarray(v)[None] for k, v in layout.items()}
    log_probs, weights = target_log_probs(model_def.bind(params), batch)
    return {int(p): float(lp) for p, lp, w in zip(layout["positions"], np.asarray(log_probs[0]),
                                                  np.asarray(weights[0])) if w > 0}


# ---- 1. groups are read by plan 'groups' only -----------------------------------------------------

@pytest.mark.parametrize("plan", ["ar", "blocks(2)", "random(2)", "confidence(2)"])
def test_groups_with_another_plan_are_refused(plan):
    model_def, params = _model()
    docs, known = _docs()
    user = [np.where(k, 0, np.arange(d.size) % 2 + 1) for d, k in zip(docs, known)]
    with pytest.raises(ValueError) as error:
        generate(model_def, params, docs, known, bos_id=BOS, pad_id=PAD, groups=user,
                 sampling=SampleConfig(plan=plan))
    assert repr(plan) in str(error.value) and "plan='groups'" in str(error.value)
    # the fix the message names decodes in exactly those groups
    result = generate(model_def, params, docs, known, bos_id=BOS, pad_id=PAD, groups=user,
                      sampling=SampleConfig(plan="groups"))
    for b in range(len(docs)):
        np.testing.assert_array_equal(result.steps[b], user[b])


# ---- 2. the groupings behind the log-probs, recompute and cached -----------------------------------

CASES = [("a3", "recompute", "ar"), ("a3", "recompute", "random(2)"), ("a3", "recompute", "confidence(2)"),
         ("mdlm", "recompute", "random(2)"), ("mdlm", "recompute", "entropy(steps=3)"),
         ("a3", "cached", "random(2)"), ("a3", "cached", "margin(2)")]


@pytest.mark.parametrize("variant, mode, plan", CASES)
def test_groupings_reproduce_the_log_probs_in_a_full_forward(variant, mode, plan):
    model_def, params = _model(variant)
    docs, known = _docs()
    result = generate(model_def, params, docs, known, bos_id=BOS, pad_id=PAD,
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
            reference = _full_log_probs(model_def, params, result.tokens[b], groups)
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
                             pad_id=PAD)
    np.testing.assert_allclose(scores.log_prob, sums, atol=1e-4)


def test_recompute_log_probs_are_not_those_of_the_commit_order_as_one_grouping():
    """Why recompute needs one grouping per step: the commit order read as ONE grouping (what cached
    mode reports) gives different log-probs, by far more than float error."""
    model_def, params = _model()
    docs, known = _docs()
    result = generate(model_def, params, docs[:1], known[:1], bos_id=BOS, pad_id=PAD,
                      sampling=SampleConfig(plan="ar", mode="recompute", seed=1))
    reference = _full_log_probs(model_def, params, result.tokens[0], result.groups[0])
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


@pytest.mark.parametrize("variant, plan", [("a3", "random(2)"), ("a3", "confidence(2)"), ("causal", "ar")])
def test_cached_generate_with_x64_gives_the_same_samples(variant, plan):
    model_def, params = _model(variant)
    docs, known = _docs()

    def run():
        return generate(model_def, params, docs, known, bos_id=BOS, pad_id=PAD, keep_cache=True,
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


# ---- 4. layout.unsort with trailing dimensions ----------------------------------------------------

def _manual_unsort(values, layout, segment):
    rows = [i for i in range(layout["segment_ids"].size) if layout["segment_ids"][i] == segment]
    out = [None] * len(rows)
    for i in rows:
        out[layout["positions"][i]] = values[i]
    return np.stack(out)


def test_unsort_un_permutes_the_first_axis_of_values_of_any_shape():
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 9, 6), rng.integers(0, 9, 4)]
    groups = [np.array([2, 0, 1, 3, 1, 2]), np.array([1, 1, 0, 2])]
    layout = build_layout(docs, groups, 14, bos_id=BOS, pad_id=PAD)
    assert not np.all(np.diff(layout["positions"][:7]) > 0)  # the row really is permuted
    n = layout["tokens"].size
    values = {"scalars": np.arange(n) * 10, "logits": rng.standard_normal((n, 5)),
              "hidden": rng.standard_normal((n, 2, 3)).astype(np.float32)}
    for segment, doc in enumerate(docs, start=1):
        np.testing.assert_array_equal(unsort(layout["tokens"], layout, segment), np.concatenate([[BOS], doc]))
        for name, value in values.items():
            got = unsort(value, layout, segment)
            assert got.shape == (doc.size + 1,) + value.shape[1:] and got.dtype == value.dtype, name
            np.testing.assert_array_equal(got, _manual_unsort(value, layout, segment))


def test_unsort_names_values_of_the_wrong_length():
    layout = build_layout([np.arange(3)], [np.array([1, 2, 1])], 6, bos_id=BOS, pad_id=PAD)
    with pytest.raises(ValueError, match=r"shape \(5, 4\).*6 slots"):
        unsort(np.zeros((5, 4)), layout, 1)
    # the batch axis must be taken off first: [B, N] is refused, the row [N] works
    batch = stack_layouts([layout])
    with pytest.raises(ValueError, match="6 slots"):
        unsort(batch["tokens"], layout, 1)
    assert unsort(batch["tokens"][0], layout, 1).shape == (4,)


# ---- 5. hf_state_dict: in-memory params -> the HF tensors of the file export ----------------------

EXPORTS = {
    "a3_untied_sharded_f32": (ModelConfig(variant="a3", vocab_size=61, d_model=32, n_layers=2, n_heads=4,
                                          n_kv_heads=2, ffn_dim=48, tie_embeddings=False, dtype="float32"),
                              "float32", "20KB"),
    "causal_tied_single_bf16": (ModelConfig(variant="causal", vocab_size=61, d_model=32, n_layers=1, n_heads=2,
                                            n_kv_heads=1, ffn_dim=48, dtype="float32"), "bfloat16", "5GB"),
}


@pytest.mark.parametrize("case", sorted(EXPORTS))
def test_hf_state_dict_equals_what_the_file_export_writes(case, tmp_path):
    pytest.importorskip("safetensors", reason="export needs safetensors: pip install -e '.[torch]'")
    from safetensors.numpy import load_file

    from a3jax.convert.hf_export import export_hf, hf_state_dict

    cfg, dtype, shard = EXPORTS[case]
    _, params = init_model(cfg, 1)  # jax arrays, as a training run holds them
    host = jax.tree.map(np.asarray, params)
    checkpointer = Checkpointer(tmp_path / "work", async_save=False)
    checkpointer.save(3, {"params": host, "opt_state": {}},
                      {"step": 3, "model": json.loads(json.dumps(cfg.to_dict())), "config": {}}, force=True)
    checkpointer.close()
    export_hf(tmp_path / "work", tmp_path / "hf", dtype=dtype, max_shard_size=shard, log=lambda m: None)
    files = sorted((tmp_path / "hf").glob("*.safetensors"))
    assert (len(files) > 1) == (shard == "20KB")
    written = {}
    for path in files:
        written.update(load_file(str(path)))

    state = hf_state_dict(params, cfg, dtype)
    assert sorted(state) == sorted(written)
    for name, array in state.items():
        assert array.dtype == written[name].dtype and array.shape == written[name].shape, name
        assert array.tobytes() == written[name].tobytes(), name
    # HF names and layout: Linear weights [out, in], query vector only for a3
    assert ("model.query_embed" in state) == (cfg.variant == "a3")
    assert ("lm_head.weight" in state) == (not cfg.tie_embeddings)
    q = state[f"model.layers.{cfg.n_layers - 1}.self_attn.q_proj.weight"]
    expected = host["layers"]["wq"][cfg.n_layers - 1].T
    np.testing.assert_array_equal(q.astype(np.float32), expected.astype(q.dtype).astype(np.float32))
    assert q.flags["C_CONTIGUOUS"]


def test_hf_state_dict_refuses_params_of_another_config():
    from a3jax.convert import ConversionError
    from a3jax.convert.hf_export import hf_state_dict

    cfg, _, _ = EXPORTS["a3_untied_sharded_f32"]
    _, params = init_model(cfg, 0)
    with pytest.raises(ConversionError, match=r"layers/attn_norm \(2, 32\) \(config: \(3, 32\)\)"):
        hf_state_dict(params, ModelConfig.from_mapping({**cfg.to_dict(), "n_layers": 3}))
    with pytest.raises(ConversionError, match="query_embed"):
        hf_state_dict(params, ModelConfig.from_mapping({**cfg.to_dict(), "variant": "causal"}))
    with pytest.raises(ConversionError, match="float16"):
        hf_state_dict(params, cfg, "float16")
