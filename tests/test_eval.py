"""Evaluation: exact scoring against independent computations, multiple choice and LAMBADA with a
memorising micro model, held-out NLL, metrics, the lm-eval adapter contract and `a3jax eval`."""

import functools
import itertools
import json
import math
import pathlib
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from a3jax import cli
from a3jax.data import ByteTokenizer
from a3jax.data.corpus import Corpus
from a3jax.errors import UserError
from a3jax.eval import cli as eval_cli
from a3jax.eval import lm_eval_adapter, metrics, score, tasks
from a3jax.inference import load_model
from a3jax.layout import build_layout, stack_layouts
from a3jax.loss import target_log_probs
from a3jax.model import ModelConfig
from a3jax.model.params import abstract_params
from a3jax.train.loop import train
from a3jax.variants import variant_of

from conftest import micro_config

TOK = ByteTokenizer()


V, BOS, PAD = 6, 4, 5  # tiny models: ids 0..3 are text, but every id may appear as a token
SEQ = 24


@functools.cache
def tiny_model(variant="a3"):
    """A random tiny model with large weights (sharp, varied predictions); numpy init, no compile.
    variant "a3-shift": the a3 model with model.query_input=shift."""
    variant, _, shift = variant.partition("-")
    cfg = ModelConfig(variant=variant, vocab_size=V, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1,
                      ffn_dim=32, dtype="float32", query_input=shift or "vector")
    model_def, shapes = abstract_params(cfg)
    rng = np.random.default_rng(3)

    def init(path, shape):
        name = jax.tree_util.keystr(path)
        if "norm" in name:
            return np.ones(shape.shape, np.float32)
        std = 0.25 if ("wo" in name or "w_down" in name) else 0.5
        return rng.normal(0.0, std, shape.shape).astype(np.float32)

    return model_def, jax.tree_util.tree_map_with_path(init, shapes)


@functools.cache
def forward(model_def):
    """The model's prediction logits, jitted once per model (and batch shape)."""
    return jax.jit(lambda params, batch: model_def.bind(params)(batch))


def reference_total(model_def, params, layout):
    """Summed target log-prob of one layout by `target_log_probs` (fed the jitted logits)."""
    batch = batch_of([layout])
    logits = forward(model_def)(params, batch)
    log_probs, weights = target_log_probs(logits, batch, variant_of(model_def.bind(params).cfg))
    return float(jnp.sum(log_probs[0] * weights[0]))



def batch_of(layouts, rows=8):
    """Stacked layouts, padded with empty rows to a fixed count (one compile per seq_len)."""
    empty = build_layout([], [], layouts[0]["tokens"].size, bos_id=0, pad_id=0)
    return {k: jnp.asarray(v) for k, v in stack_layouts(layouts + [empty] * (rows - len(layouts))).items()}


def explicit_continuation(model_def, params, context, continuation, *, seq_len, bos_id, pad_id,
                          context_order="group"):
    """(log p, argmax) of each continuation token from its OWN forward pass over only what it may
    see: the context and the earlier continuation tokens (the token itself is replaced by PAD)."""
    variant = model_def.bind(params).cfg.variant
    c = len(context)
    layouts, rows = [], []
    for j in range(len(continuation)):
        if variant == "a3":
            doc = np.concatenate([context, continuation[:j], [pad_id]]).astype(np.int32)
            first = np.zeros(c, np.int32) if context_order == "group" else np.arange(1, c + 1)
            offset = 0 if context_order == "group" else c
            groups = np.concatenate([first, np.arange(1, j + 2) + offset]).astype(np.int32)
            target_position = c + j + 1
        else:  # the row of the last visible token predicts the next one
            doc = np.concatenate([context, continuation[:j]]).astype(np.int32)
            groups = np.arange(1, doc.size + 1, dtype=np.int32)
            target_position = c + j
        layout = build_layout([doc], [groups], seq_len, bos_id=bos_id, pad_id=pad_id)
        layouts.append(layout)
        rows.append(int(np.flatnonzero((layout["positions"] == target_position) & (layout["segment_ids"] == 1))[0]))
    picked = []
    for first in range(0, len(layouts), 8):
        logits = np.asarray(forward(model_def)(params, batch_of(layouts[first:first + 8])), np.float64)
        picked += [logits[i, r] for i, r in enumerate(rows[first:first + 8])]
    picked = np.stack(picked)
    top = picked.max(-1, keepdims=True)
    log_softmax = picked - top - np.log(np.sum(np.exp(picked - top), -1, keepdims=True))
    return log_softmax[np.arange(len(rows)), np.asarray(continuation)], picked.argmax(-1)


# Exact scoring ------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant,groups", [("a3", [0, 2, 1, 2]), ("a3", [0, 1, 2, 3]), ("causal", [0, 1, 2, 3]),
                                            ("a3-shift", [0, 2, 1, 2]), ("a3-shift", [0, 1, 2, 3])])
def test_sequence_probabilities_sum_to_one(variant, groups):
    # Every id allowed as a token: P(x | context) summed over all 6**3 target strings is 1 exactly
    # when each target is predicted only from tokens of earlier groups.
    model_def, params = tiny_model(variant)
    groups = np.array(groups, np.int32)
    docs = [np.array((1,) + x, np.int32) for x in itertools.product(range(V), repeat=3)]
    log_p = score.sequence_log_probs(model_def, params, docs, [groups] * len(docs), seq_len=SEQ, bos_id=BOS,
                                     pad_id=PAD)
    assert log_p.dtype == np.float64 and log_p.shape == (V**3,)
    assert np.sum(np.exp(log_p)) == pytest.approx(1.0, abs=1e-5)
    # The same document scored by target_log_probs on its own hand-built layout.
    layout = build_layout([docs[37]], [groups], SEQ, bos_id=BOS, pad_id=PAD)
    assert log_p[37] == pytest.approx(reference_total(model_def, params, layout), abs=1e-5)


@pytest.mark.parametrize("variant", ["a3", "a3-shift"])
def test_sequence_log_probs_do_not_depend_on_packing_or_batch_size(variant):
    model_def, params = tiny_model(variant)
    rng = np.random.default_rng(0)
    lengths = (3, 9, 1, 14, 6, 2, 11, 5, 4, 7)
    docs = [rng.integers(0, V, size=n).astype(np.int32) for n in lengths]
    groups = [np.concatenate([[0], rng.permutation(n - 1) // 2 + 1]).astype(np.int32) for n in lengths]
    kwargs = dict(seq_len=SEQ, bos_id=BOS, pad_id=PAD)
    packed = score.sequence_log_probs(model_def, params, docs, groups, **kwargs)
    alone = score.sequence_log_probs(model_def, params, docs, groups, batch_size=1, pack=False, **kwargs)
    np.testing.assert_allclose(packed, alone, atol=1e-5)
    assert np.all(packed[[0, 1, 3, 4, 5, 6, 7, 8, 9]] < 0) and packed[2] == 0.0  # a lone context token
    with pytest.raises(ValueError, match=r"document 1 has 30 tokens.*seq_len=24"):
        score.sequence_log_probs(model_def, params, [docs[0], np.zeros(30, np.int32)],
                                 [groups[0], np.ones(30, np.int32)], **kwargs)


@pytest.mark.parametrize("variant", ["a3", "causal", "a3-shift"])
def test_loglikelihood_equals_per_token_forwards_and_greedy_flags(variant):
    model_def, params = tiny_model(variant)
    kwargs = dict(seq_len=SEQ, bos_id=BOS, pad_id=PAD)
    order = "ar"  # the default for both variants
    rng = np.random.default_rng(1)
    context = rng.integers(0, 4, size=6).astype(np.int32)
    continuation = rng.integers(0, 4, size=5).astype(np.int32)
    expected, _ = explicit_continuation(model_def, params, context, continuation, context_order=order, **kwargs)
    # The greedy continuation, one argmax at a time.
    greedy = np.zeros(0, np.int32)
    for _ in range(5):
        _, best = explicit_continuation(model_def, params, context, np.append(greedy, 0).astype(np.int32),
                                        context_order=order, **kwargs)
        greedy = np.append(greedy, best[-1]).astype(np.int32)
    not_greedy = greedy.copy()
    not_greedy[2] = (greedy[2] + 1) % V
    empty = np.zeros(0, np.int32)
    requests = [(context, continuation), (context, greedy), (context, not_greedy), (empty, greedy)]
    results = score.loglikelihood(model_def, params, requests, **kwargs)
    assert results[0][0] == pytest.approx(float(np.sum(expected)), abs=1e-4)
    assert results[1][1] is True and results[2][1] is False
    assert results[0][1] is bool(np.array_equal(continuation, greedy))
    from_bos, _ = explicit_continuation(model_def, params, empty, greedy, context_order=order, **kwargs)
    assert results[3][0] == pytest.approx(float(np.sum(from_bos)), abs=1e-4)
    if variant != "causal":  # the context as one group: a different (valid) conditional
        ar, _ = explicit_continuation(model_def, params, context, continuation, context_order="group", **kwargs)
        got = score.loglikelihood(model_def, params, requests[:1], context_order="group", **kwargs)[0][0]
        assert got == pytest.approx(float(np.sum(ar)), abs=1e-4)
        assert abs(got - results[0][0]) > 1e-3


def test_loglikelihood_truncates_the_context_from_the_left_and_rejects_long_continuations():
    model_def, params = tiny_model()
    rng = np.random.default_rng(2)
    context = rng.integers(0, 4, size=25).astype(np.int32)
    continuation = rng.integers(0, 4, size=5).astype(np.int32)
    short = dict(seq_len=SEQ, bos_id=BOS, pad_id=PAD)
    long = dict(seq_len=32, bos_id=BOS, pad_id=PAD)
    cut = score.loglikelihood(model_def, params, [(context, continuation)], **short)[0]
    kept = score.loglikelihood(model_def, params, [(context[-18:], continuation)], **long)[0]  # 24 - 1 - 5
    full = score.loglikelihood(model_def, params, [(context, continuation)], **long)[0]
    assert cut[0] == pytest.approx(kept[0], abs=1e-5)
    assert abs(full[0] - cut[0]) > 1e-4
    with pytest.raises(ValueError, match=r"request 1: the continuation has 24 tokens but seq_len=24"):
        score.loglikelihood(model_def, params, [(context, continuation), (context, np.zeros(24, np.int32))], **short)
    with pytest.raises(ValueError, match=r"request 0: the continuation is empty"):
        score.loglikelihood(model_def, params, [(context, np.zeros(0, np.int32))], **short)


# A memorising micro model -------------------------------------------------------------------------

QA = [("What color is the sky?", "blue", ["green", "loud"]),
      ("How many legs has a cat?", "four", ["nine", "zero"]),
      ("What do bees make?", "honey", ["steel", "paper"]),
      ("Where do fish live?", "water", ["desert", "attic"]),
      ("What melts ice?", "heat", ["dark", "salt water"]),
      ("Which animal barks?", "dog", ["owl", "snake"]),
      ("What is frozen water?", "ice", ["steam", "sand"]),
      ("What do you read?", "a book", ["a spoon", "a shoe"]),
      ("Who flies a plane?", "a pilot", ["a baker", "a fish"]),
      ("What opens a lock?", "a key", ["a leaf", "a cloud"])]
PASSAGES = ["she opened the door and saw the elephant", "he drank a cup of hot chocolate",
            "the train left the station at midnight"]
HELD_OUT = [f"def f{i}(x):\n    return x + {i}\n" for i in range(4)]
STEPS = 300


def _docs(texts):
    return [np.append(TOK.encode(t), TOK.eos_id).astype(np.int32) for t in texts]


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    """A micro a3 model trained to memorise the right answers and three LAMBADA passages."""
    workdir = tmp_path_factory.mktemp("oracle")
    corpus = Corpus(train_docs=_docs([f"Question: {q}\nAnswer: {a}" for q, a, _ in QA] + PASSAGES),
                    eval_docs=_docs(HELD_OUT), eval_names=[f"held{i}" for i in range(len(HELD_OUT))])
    config = micro_config(f"train.steps={STEPS}", "model.d_model=64", "model.ffn_dim=128", "train.lr=0.01",
                          "train.warmup_steps=20", "data.shuffle=False",
                          "orders.curriculum=0.75*ar + 0.25*random(4)",
                          f"train.eval_every={STEPS}", f"train.checkpoint_every={STEPS}", "train.log_every=50")
    summary = train(config, workdir, corpus=corpus, progress=False)
    return SimpleNamespace(workdir=workdir, corpus=corpus, config=config, summary=summary,
                           loaded=load_model(workdir))


def write_mc_file(path, labels=None):
    with open(path, "w") as f:
        for i, (q, a, wrong) in enumerate(QA):
            choices = [" " + w for w in wrong]
            choices.insert(i % 3, " " + a)
            f.write(json.dumps({"context": f"Question: {q}\nAnswer:", "choices": choices,
                                "label": i % 3 if labels is None else labels[i]}) + "\n")
    return path


@pytest.mark.slow
def test_multiple_choice_with_an_oracle_model_is_perfect(oracle, tmp_path):
    items = tasks.load_mc_jsonl(write_mc_file(tmp_path / "mc.jsonl"))
    assert len(items) == 10 and items[1]["choices"][1] == " four" and items[1]["label"] == 1
    for order in (None, "ar"):
        result = tasks.multiple_choice(oracle.loaded, items, batch_size=4, context_order=order)
        assert result == {"acc": 1.0, "acc_norm": 1.0, "items": 10, "requests": 30}
    # The same file with every label moved to a distractor: nothing is right.
    wrong = tasks.load_mc_jsonl(write_mc_file(tmp_path / "wrong.jsonl", labels=[(i % 3 + 1) % 3 for i in range(10)]))
    result = tasks.multiple_choice(oracle.loaded, wrong)
    assert result["acc"] == 0.0 and result["acc_norm"] == 0.0


def test_piqa_loader_and_bad_files(tmp_path):
    lines = [{"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid"},
             {"goal": "Dry hair", "sol1": "use water", "sol2": "use a towel"}]
    data = tmp_path / "valid.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in lines))
    (tmp_path / "valid-labels.lst").write_text("0\n1\n")
    items = tasks.load_mc_jsonl(data)  # labels found next to the file
    assert items[0] == {"context": "Question: Open a jar\nAnswer:", "choices": [" twist the lid", " eat the lid"],
                        "label": 0}
    assert items[1]["label"] == 1
    other = tmp_path / "other.lst"
    other.write_text("1\n0\n")
    assert [i["label"] for i in tasks.load_mc_jsonl(data, other)] == [1, 0]
    real = pathlib.Path("/work/shared/data/piqa/valid.jsonl")
    if real.is_file():  # a copy of the real file's first lines, in its own folder
        copy = tmp_path / "piqa"
        copy.mkdir()
        (copy / "valid.jsonl").write_text("".join(real.read_text().splitlines(True)[:20]))
        labels = real.with_name("valid-labels.lst").read_text().splitlines(True)[:20]
        (copy / "valid-labels.lst").write_text("".join(labels))
        real_items = tasks.load_mc_jsonl(copy / "valid.jsonl")
        assert len(real_items) == 20 and all(len(i["choices"]) == 2 for i in real_items)

    bad = tmp_path / "bad.lst"
    bad.write_text("0\n2\n")
    with pytest.raises(ValueError, match=r"bad.lst:2: label 2 is out of range for 2 choices"):
        tasks.load_mc_jsonl(data, bad)
    bad.write_text("0\n")
    with pytest.raises(ValueError, match=r"bad.lst has 1 labels but .*valid.jsonl has 2 items"):
        tasks.load_mc_jsonl(data, bad)
    bad.write_text("0\nx\n")
    with pytest.raises(ValueError, match=r"bad.lst:2: label 'x' is not an integer"):
        tasks.load_mc_jsonl(data, bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"goal": "a", "sol1": "b"}) + "\n")
    bad.write_text("0\n")
    with pytest.raises(ValueError, match=r"broken.jsonl:1: missing key 'sol2'"):
        tasks.load_mc_jsonl(broken, bad)
    broken.write_text(json.dumps({"context": "a", "choices": [" b", " c"], "label": 0}) + "\n"
                      + json.dumps({"context": "a", "label": 0}) + "\n")
    with pytest.raises(ValueError, match=r"broken.jsonl:2: missing key 'choices'"):
        tasks.load_mc_jsonl(broken)
    broken.write_text(json.dumps({"context": "a", "choices": [" b", " c"]}) + "\n")
    with pytest.raises(ValueError, match=r"broken.jsonl:1: no label"):
        tasks.load_mc_jsonl(broken)
    broken.write_text(json.dumps({"context": "a", "choices": [" b", " c"], "label": 5}) + "\n")
    with pytest.raises(ValueError, match=r"broken.jsonl:1: label 5 is out of range for 2 choices"):
        tasks.load_mc_jsonl(broken)
    broken.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"broken.jsonl:1: not valid JSON"):
        tasks.load_mc_jsonl(broken)
    with pytest.raises(ValueError, match=r"missing.jsonl does not exist"):
        tasks.load_mc_jsonl(tmp_path / "missing.jsonl")


def test_lambada_counts_each_passage_once(oracle, tmp_path):
    path = tmp_path / "lambada.txt"
    path.write_text("\n".join(PASSAGES + ["my favourite fruit is the zqxjvw"]) + "\n")
    passages = tasks.load_lambada(path)
    assert len(passages) == 4
    loaded = oracle.loaded
    seq_len = int(loaded.config.data.seq_len)
    correct, nll, greedy_tokens, tokens = [], [], 0, 0
    for text in passages:
        context, word = text.rsplit(" ", 1)
        log_probs, best = explicit_continuation(loaded.model_def, loaded.params, TOK.encode(context),
                                                TOK.encode(" " + word), seq_len=seq_len, bos_id=TOK.bos_id,
                                                pad_id=TOK.pad_id, context_order="ar")
        hits = best == TOK.encode(" " + word)
        correct.append(bool(hits.all()))
        nll.append(-float(log_probs.sum()))
        greedy_tokens += int(hits.sum())
        tokens += hits.size
    assert any(correct) and not all(correct)  # the memorised passages vs the unseen one
    result = tasks.lambada(loaded, passages, context_order="ar")
    assert result["acc"] == pytest.approx(np.mean(correct))
    assert result["acc"] != pytest.approx(greedy_tokens / tokens)  # not counted per token
    assert result["nll_last_word"] == pytest.approx(np.mean(nll), abs=1e-4)
    assert result["passages"] == 4 and result["target_tokens"] == tokens
    jsonl = tmp_path / "lambada.jsonl"
    jsonl.write_text("".join(json.dumps({"text": p}) + "\n" for p in passages))
    assert tasks.load_lambada(jsonl) == passages
    with pytest.raises(ValueError, match=r"passage 1 has no context"):
        tasks.lambada(loaded, ["a b", "single"])


def test_nll_under_orders_equals_the_training_eval(oracle):
    loaded = oracle.loaded
    result = tasks.nll_under_orders(oracle.config, oracle.corpus, TOK, loaded.model_def, loaded.params,
                                    ["ar", "random(4)"], int(oracle.config.train.eval_rows), batch_size=3)
    for name, value in oracle.summary["eval"].items():
        assert result[name] == pytest.approx(value, rel=1e-5), name
    assert result["rows"] >= 1 and result["ar/targets"] == sum(d.size for d in oracle.corpus.eval_docs)
    assert result["ar/bits_per_byte"] == pytest.approx(
        metrics.bits(result["ar/nll"] * result["ar/targets"], result["ar/targets"] - len(HELD_OUT)))
    with pytest.raises(ValueError, match=r"bogus"):
        tasks.nll_under_orders(oracle.config, oracle.corpus, TOK, loaded.model_def, loaded.params, ["bogus(3)"], 2)


# Infilling (the sampler's bookkeeping with a stand-in sampler; the real one when it exists) -------

class _Config:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


def test_infill_scores_the_filled_span(oracle, monkeypatch):
    windows = tasks.infill_windows(oracle.corpus, TOK, 64, 8, range(3))
    seen = []

    def oracle_generate(model_def, params, documents, known, *, bos_id, pad_id, eos_id, sampling):
        assert eos_id is None  # a fixed-length span does not end at EOS
        out = []
        for doc, mask in zip(documents, known):
            seen.append((doc.copy(), mask.copy()))
            match = [w for w, s, e in windows if np.array_equal(w[mask], doc[mask]) and w.size == doc.size]
            out.append(match[0].copy())
        return SimpleNamespace(tokens=out)

    monkeypatch.setattr(tasks, "_generate", lambda: (_Config, oracle_generate))
    perfect = tasks.infill(oracle.loaded, oracle.corpus, span=8, num_examples=3, batch_size=2)
    assert perfect["exact_match"] == 1.0 and perfect["rouge1"] == 1.0 and perfect["token_acc"] == 1.0
    assert perfect["examples"] == 3 and perfect["span_tokens"] == 24
    for (doc, mask), (_, start, stop) in zip(seen, windows):  # the answer never reaches the sampler
        assert np.all(doc[~mask] == TOK.pad_id) and np.flatnonzero(~mask).tolist() == list(range(start, stop))

    def blank_generate(model_def, params, documents, known, **_):
        return SimpleNamespace(tokens=[np.where(m, d, TOK.encode("#")[0]) for d, m in zip(documents, known)])

    monkeypatch.setattr(tasks, "_generate", lambda: (_Config, blank_generate))
    blank = tasks.infill(oracle.loaded, oracle.corpus, span=8, num_examples=3)
    assert blank["exact_match"] == 0.0 and blank["token_acc"] == 0.0


@pytest.mark.slow
def test_infill_with_the_real_sampler(oracle):
    result = tasks.infill(oracle.loaded, oracle.corpus, span=8, num_examples=2, plan="ar")
    assert result["examples"] == 2 and 0.0 <= result["exact_match"] <= 1.0
    assert 0.0 <= result["rougeL"] <= 1.0 and 0.0 <= result["token_acc"] <= 1.0
    lm = lm_eval_adapter.A3JaxLM(model=oracle.loaded)
    prompt = "Question: What color is the sky?\nAnswer:"
    out = lm.generate_until([req(prompt, {"until": ["\n"], "max_gen_toks": 8})])
    loaded, ids = oracle.loaded, TOK.encode(prompt)
    raw = greedy_infill(loaded.model_def, loaded.params, np.concatenate([ids, np.full(8, TOK.pad_id)]),
                        ids.size, ids.size + 8, seq_len=64, bos_id=TOK.bos_id, pad_id=TOK.pad_id)[ids.size:]
    end = np.flatnonzero(raw == TOK.eos_id)
    assert out == [TOK.decode(raw[: end[0]] if end.size else raw).split("\n")[0]]  # cached sampler = reference


def test_infill_items_fill_the_true_middle_between_prefix_and_suffix(oracle, monkeypatch, tmp_path):
    """JSONL items (prefix / middle / suffix, HumanEval's key names too): the middle is filled at its
    true token length, its tokens never reach the sampler, a window too long loses prefix and suffix
    tokens but never middle ones; an oracle sampler scores 1, a wrong one 0."""
    rows = [{"prefix": "Question: What color is the sky?\nAnswer: ", "middle": "blue", "suffix": "\nQuestion:"},
            {"prompt": "def f(x):\n    return ", "canonical_solution": "x + 1", "suffix": "\n", "task_id": "t/0"},
            {"prefix": "x" * 200, "middle": "middle words", "suffix": "y" * 200}]
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = tasks.load_infill_jsonl(path)
    assert [i["middle"] for i in items] == ["blue", "x + 1", "middle words"]
    windows = [tasks.infill_window(TOK, item, 64) for item in items]
    for (window, start, stop), item in zip(windows, items):
        assert window.size <= 63 and TOK.decode(window[start:stop]) == item["middle"]
        assert TOK.decode(window[:start]).endswith(item["prefix"][-min(start, 10):])
    assert windows[2][1] > 0 and windows[2][0].size == 63  # cut on both sides to fit
    seen = []

    def oracle_generate(model_def, params, documents, known, *, bos_id, pad_id, eos_id, sampling):
        out = []
        for doc, mask in zip(documents, known):
            seen.append((doc.copy(), mask.copy()))
            out.append(next(w for w, _, _ in windows if w.size == doc.size and np.array_equal(w[mask], doc[mask])))
        return SimpleNamespace(tokens=out)

    monkeypatch.setattr(tasks, "_generate", lambda: (_Config, oracle_generate))
    perfect = tasks.infill_items(oracle.loaded, items, seq_len=64)
    assert perfect["exact_match"] == 1.0 and perfect["rougeL"] == 1.0 and perfect["token_acc"] == 1.0
    assert perfect["items"] == 3 and perfect["middle_tokens"] == sum(stop - start for _, start, stop in windows)
    for (doc, mask), (_, start, stop) in zip(seen, windows):
        assert np.all(doc[~mask] == TOK.pad_id) and np.flatnonzero(~mask).tolist() == list(range(start, stop))
    monkeypatch.setattr(tasks, "_generate", lambda: (_Config, lambda model_def, params, documents, known, **_: (
        SimpleNamespace(tokens=[np.where(m, d, TOK.encode("#")[0]) for d, m in zip(documents, known)]))))
    assert tasks.infill_items(oracle.loaded, items, seq_len=64)["exact_match"] == 0.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prefix": "a", "suffix": "b"}) + "\n")
    with pytest.raises(UserError, match="no string 'middle' or 'canonical_solution' or 'target'"):
        tasks.load_infill_jsonl(bad)
    with pytest.raises(UserError, match="does not fit seq_len=8"):
        tasks.infill_window(TOK, {"prefix": "", "middle": "z" * 20, "suffix": ""}, 8)


def test_cli_infill_reads_prefix_middle_suffix_items(oracle, tmp_path, capsys):
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps({"prefix": "Question: What color is the sky?\nAnswer: ", "middle": "blue",
                                "suffix": "\n"}) + "\n")
    out = tmp_path / "infill.json"
    code = cli.main(["eval", "--workdir", str(oracle.workdir), "--task", "infill", "--data", str(path),
                     "--plan", "ar", "--out", str(out), "--no-progress"])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["metrics"]["items"] == 1 and record["metrics"]["middle_tokens"] == len(TOK.encode("blue"))
    assert set(record["metrics"]) >= {"exact_match", "rouge1", "rouge2", "rougeL", "token_acc"}


# Metrics ------------------------------------------------------------------------------------------

def test_exact_match_rouge_and_bits_on_known_strings():
    assert metrics.exact_match("  a b\n", "a b") == 1.0 and metrics.exact_match("a", "b") == 0.0
    assert metrics.mean_exact_match(["x", " y "], ["x", "z"]) == 0.5
    one = metrics.rouge_scores("the cat sat", "the cat sat on the mat")
    # unigrams: 3 of 3 predicted, 3 of 6 reference -> F1 2/3; bigrams 2 of 2, 2 of 5 -> 4/7; LCS 3
    assert one["rouge1"] == pytest.approx(2 / 3) and one["rouge2"] == pytest.approx(4 / 7)
    assert one["rougeL"] == pytest.approx(2 / 3)
    two = metrics.rouge_scores("a b c", "c b a")  # all unigrams, no bigram, LCS 1
    assert two == pytest.approx({"rouge1": 1.0, "rouge2": 0.0, "rougeL": 1 / 3})
    both = metrics.rouge(["the cat sat", "a b c"], ["the cat sat on the mat", "c b a"])
    assert both == pytest.approx({"rouge1": 5 / 6, "rouge2": 2 / 7, "rougeL": 1 / 2})
    assert metrics.bits(10 * math.log(2), 5) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        metrics.rouge(["a", "b"], ["a"])


# lm-evaluation-harness adapter --------------------------------------------------------------------

def req(*args):
    return SimpleNamespace(args=args)


def test_adapter_loglikelihood_and_rolling(oracle):
    loaded = oracle.loaded
    lm = lm_eval_adapter.A3JaxLM(model=loaded, batch_size=4)
    pairs = [("Question: What do bees make?\nAnswer:", " honey"), ("Question: What do bees make? ", "steel"),
             ("", "he drank")]
    got = lm.loglikelihood([req(c, x) for c, x in pairs])
    encoded = [tasks.encode_pair(TOK, c, x) for c, x in pairs]
    assert encoded[1][1].tolist() == TOK.encode(" steel").tolist()  # trailing space moves over
    want = score.loglikelihood(loaded.model_def, loaded.params, encoded, seq_len=64, bos_id=TOK.bos_id,
                               pad_id=TOK.pad_id)
    assert got == [(pytest.approx(w[0], abs=1e-6), w[1]) for w in want]
    assert got[0][1] is True  # memorised

    short, long = "he drank a cup", "".join(PASSAGES) * 2 + "ok"  # 14 and 220 bytes; 63 tokens fit a window
    rolled = lm.loglikelihood_rolling([req(short), req(long), req("")])
    ids = TOK.encode(short)
    ar = score.sequence_log_probs(loaded.model_def, loaded.params, [ids], [np.arange(1, ids.size + 1)],
                                  seq_len=64, bos_id=TOK.bos_id, pad_id=TOK.pad_id)
    assert rolled[0] == pytest.approx(ar[0], abs=1e-4)
    ids = TOK.encode(long)
    assert ids.size == 220
    # the last window scores its last 31 tokens after 32 of context, all left to right: under AR a
    # prefix's log-prob does not depend on what follows, so it is the window's minus the prefix's
    docs = [ids[0:63], ids[63:126], ids[126:189], ids[157:220], ids[157:189]]
    groups = [np.arange(1, d.size + 1) for d in docs]
    windows = score.sequence_log_probs(loaded.model_def, loaded.params, docs, groups, seq_len=64,
                                       bos_id=TOK.bos_id, pad_id=TOK.pad_id)
    assert rolled[1] == pytest.approx(float(windows[:4].sum() - windows[4]), abs=1e-3)
    assert rolled[2] == 0.0


def greedy_infill(model_def, params, doc, start, stop, *, seq_len, bos_id, pad_id):
    """Reference greedy infill by full forward passes: the visible tokens left to right, then the gap
    [start, stop) one token per pass (later gap tokens invisible: they are PAD and come later)."""
    from a3jax.layout import build_layout
    from a3jax.orders import span_groups

    groups = span_groups(doc.size, start, stop)
    filled = np.asarray(doc, np.int32).copy()
    filled[start:stop] = pad_id
    model = model_def.bind(params)
    for position in range(start, stop):
        layout = build_layout([filled], [groups], seq_len, bos_id=bos_id, pad_id=pad_id)
        row = int(np.flatnonzero((layout["positions"] == position + 1) & (layout["segment_ids"] == 1))[0])
        logits = model({k: jnp.asarray(v)[None] for k, v in layout.items()})[0]
        filled[position] = int(jnp.argmax(logits[row]))
    return filled


def test_adapter_generate_until_cuts_at_stop_strings(oracle, monkeypatch):
    loaded = oracle.loaded

    def greedy_generate(model_def, params, documents, known, *, bos_id, pad_id, eos_id, sampling):
        assert sampling.plan == "ar" and sampling.temperature == 0.0
        out = []
        for doc, mask in zip(documents, known):
            start = int(np.flatnonzero(~mask)[0])
            assert not mask[start:].any()  # one trailing gap
            out.append(greedy_infill(model_def, params, doc, start, doc.size, seq_len=64, bos_id=bos_id,
                                     pad_id=pad_id))
        return SimpleNamespace(tokens=out)

    monkeypatch.setattr(lm_eval_adapter, "_generate", lambda: (_Config, greedy_generate))
    lm = lm_eval_adapter.A3JaxLM(model=loaded)
    prompt = "Question: What color is the sky?\nAnswer:"
    outputs = lm.generate_until([req(prompt, {"until": ["\n"], "max_gen_toks": 8}),
                                 req(prompt, {"until": "l", "max_gen_toks": 8})])
    ids = TOK.encode(prompt)
    raw = greedy_infill(loaded.model_def, loaded.params, np.concatenate([ids, np.full(8, TOK.pad_id)]).astype(np.int32),
                        ids.size, ids.size + 8, seq_len=64, bos_id=TOK.bos_id, pad_id=TOK.pad_id)[ids.size:]
    end = np.flatnonzero(raw == TOK.eos_id)
    text = TOK.decode(raw[: end[0]] if end.size else raw)
    assert text.startswith(" blue")  # the memorised answer
    assert outputs[0] == text.split("\n")[0]
    assert outputs[1] == " b"
    assert lm_eval_adapter.cut_at("abc<|x|>def\n", ["\n", "<|x|>"]) == "abc"


# `a3jax eval` -------------------------------------------------------------------------------------

def test_cli_writes_json_and_rejects_bad_arguments(oracle, tmp_path, capsys):
    parser = eval_cli.build_parser()
    data = write_mc_file(tmp_path / "mc.jsonl")
    workdir = str(oracle.workdir)
    args = parser.parse_args(["--workdir", workdir, "--task", "mc", "--data", str(data), "--limit", "6",
                              "--no-progress"])
    assert eval_cli.main(args) == 0
    record = json.loads((oracle.workdir / "eval" / "mc.json").read_text())
    assert record["task"] == "mc" and record["step"] == STEPS
    assert record["metrics"]["acc"] == 1.0 and record["metrics"]["items"] == 6
    assert "| acc | 1.0000 |" in capsys.readouterr().out

    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"text": t}) + "\n" for t in HELD_OUT))
    out = tmp_path / "nll.json"
    args = parser.parse_args(["--workdir", workdir, "--task", "nll", "--data", str(held), "--orders", "ar,random(4)",
                              "--out", str(out), "--no-progress"])
    assert eval_cli.main(args) == 0
    nll = json.loads(out.read_text())["metrics"]
    direct = tasks.nll_under_orders(oracle.config, Corpus([], _docs(HELD_OUT), []), TOK, oracle.loaded.model_def,
                                    oracle.loaded.params, ["ar", "random(4)"], int(oracle.config.train.eval_rows))
    assert nll["ar/nll"] == pytest.approx(direct["ar/nll"], rel=1e-6)
    assert set(nll) >= {"ar/nll", "ar/bits_per_byte", "random(4)/nll", "random(4)/bits_per_byte"}

    for argv, message in [(["--task", "bogus"], r"--task 'bogus' is unknown"),
                          (["--task", "mc", "--data", str(data), "--limit", "0"], r"--limit 0 must be >= 1"),
                          (["--task", "mc", "--data", str(tmp_path / "none.jsonl")], r"none.jsonl does not exist"),
                          (["--task", "lambada"], r"--task lambada needs --data")]:
        with pytest.raises(ValueError, match=message):
            eval_cli.main(parser.parse_args(["--workdir", workdir] + argv))


def test_adapter_subclasses_and_registers_when_lm_eval_is_present(monkeypatch):
    import importlib.util
    import sys
    import types

    registry = {}

    class LM:  # the part of lm_eval.api.model.LM the adapter relies on
        def __init__(self):
            self._rank, self._world_size = 0, 1

    def register_model(name):
        def decorate(cls):
            registry[name] = cls
            return cls
        return decorate

    modules = {name: types.ModuleType(name) for name in ("lm_eval", "lm_eval.api", "lm_eval.api.model",
                                                          "lm_eval.api.registry")}
    modules["lm_eval.api.model"].LM = LM
    modules["lm_eval.api.registry"].register_model = register_model
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("adapter_with_lm_eval", lm_eval_adapter.__file__)
    adapter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(adapter)
    assert registry == {"a3jax": adapter.A3JaxLM} and issubclass(adapter.A3JaxLM, LM)
    assert not issubclass(lm_eval_adapter.A3JaxLM, LM)  # the plain class when lm_eval is absent
    model_def, params = tiny_model()
    lm = adapter.A3JaxLM(model=(model_def, params, TOK, SEQ), batch_size="auto", device="cpu")
    assert lm.max_length == SEQ and lm.batch_size == 8 and lm.rolling_stride == SEQ - 1
