"""Tests of a3jax.data: tokenizer, corpus split, packing and the Grain pipeline."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from ml_collections import ConfigDict

from a3jax.data import (
    ByteTokenizer,
    corpus_from_texts,
    eval_batch,
    infill_example,
    load_corpus,
    pack_documents,
    train_batches,
    train_dataset,
)
from a3jax.layout import unsort

TOK = ByteTokenizer()
SEQ_LEN = 32


def make_config(**overrides) -> ConfigDict:
    config = ConfigDict()
    config.seed = 7
    config.data = ConfigDict(dict(source="stdlib", seq_len=SEQ_LEN, eval_fraction=0.2,
                                  max_files=0, worker_count=0, shuffle=True))
    config.orders = ConfigDict(dict(curriculum="0.5*ar + 0.5*random_sizes(1,4)"))
    config.train = ConfigDict(dict(batch_size=4))
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (config[section] if section else config)[name] = value
    return config


def small_corpus():
    rng = np.random.default_rng(0)
    words = ["def", "return", "x", "ünïcode", "λ", "\n", "    ", "(", ")", ":", "#", "日本"]
    texts = [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(1, 40, size=24)]
    return corpus_from_texts(texts, TOK, eval_fraction=0.2)


def take(iterator, count):
    batches = list(itertools.islice(iterator, count))
    iterator.close()
    return batches


def assert_batches_equal(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right):
        assert a.keys() == b.keys()
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def row_key(layout):
    """The documents of one layout in original order, as bytes (identifies the packed row)."""
    segments = [s for s in np.unique(layout["segment_ids"]) if s]
    return tuple(unsort(layout["tokens"], layout, s).tobytes() for s in segments)


# Tokenizer ---------------------------------------------------------------------------------------

def test_tokenizer_round_trip_and_specials():
    text = "héllo wörld ✓ 日本語 \n\ttab"
    ids = TOK.encode(text)
    assert ids.dtype == np.int32 and ids.max() < 256
    assert TOK.decode(ids) == text
    assert np.array_equal(TOK.encode(text.encode()), ids)
    with_specials = np.concatenate([[TOK.bos_id], ids, [TOK.eos_id, TOK.pad_id, TOK.pad_id]])
    assert TOK.decode(with_specials) == text
    assert TOK.decode(ids[:2]) == "h\ufffd"  # cut inside a multi-byte char
    assert TOK.vocab_size == 259


def test_check_vocab_error_names_both_sizes():
    TOK.check_vocab(259)
    TOK.check_vocab(512)
    with pytest.raises(ValueError, match=r"vocab_size=100.*259"):
        TOK.check_vocab(100)


# Corpus ------------------------------------------------------------------------------------------

def test_stdlib_corpus_split():
    data = make_config(**{"data.max_files": 60, "data.eval_fraction": 0.02}).data
    corpus = load_corpus(data, TOK)
    names = corpus.train_names + corpus.eval_names
    assert len(names) == 60 and len(set(names)) == 60
    for name in names:
        parts = name.split("/")
        assert not {"test", "tests", "idle_test", "site-packages"} & set(parts[:-1]), name
        assert not parts[-1].startswith("test_") and name.endswith(".py")
    assert corpus.eval_docs and corpus.train_docs
    assert not set(corpus.train_names) & set(corpus.eval_names)
    assert all(d[-1] == TOK.eos_id and d.dtype == np.int32 for d in corpus.train_docs)
    again = load_corpus(data, TOK)
    assert again.eval_names == corpus.eval_names and again.train_names == corpus.train_names
    with pytest.raises(ValueError, match=r"'wiki'.*stdlib"):
        load_corpus(make_config(**{"data.source": "wiki"}).data, TOK)


def test_in_memory_split_always_has_both():
    for fraction in (0.0, 1.0):
        corpus = corpus_from_texts(["a", "b", "c"], TOK, eval_fraction=fraction)
        assert corpus.eval_docs and corpus.train_docs


# Packing -----------------------------------------------------------------------------------------

def test_packing_covers_every_token_once():
    rng = np.random.default_rng(1)
    lengths = [1, SEQ_LEN - 1, SEQ_LEN, 2 * (SEQ_LEN - 1), 3 * SEQ_LEN + 5]
    lengths += rng.integers(1, 80, size=60).tolist()
    rows = pack_documents(lengths, SEQ_LEN)
    seen = {}
    for row in rows:
        assert sum(stop - start + 1 for _, start, stop in row) <= SEQ_LEN
        for doc, start, stop in row:
            assert 1 <= stop - start <= SEQ_LEN - 1
            for index in range(start, stop):
                seen[(doc, index)] = seen.get((doc, index), 0) + 1
    expected = {(d, i) for d, n in enumerate(lengths) for i in range(n)}
    assert set(seen) == expected and set(seen.values()) == {1}
    assert pack_documents(lengths, SEQ_LEN) == rows  # deterministic


# Pipeline ----------------------------------------------------------------------------------------

def test_layouts_follow_the_contract():
    corpus = small_corpus()
    config = make_config(**{"data.shuffle": False})
    rows = pack_documents([d.size for d in corpus.train_docs], SEQ_LEN)
    dataset = train_dataset(config, corpus, TOK)
    for e in range(len(rows) + 3):
        layout = dataset[e]
        row = rows[e % len(rows)]
        assert all(v.shape == (SEQ_LEN,) and v.dtype == np.int32 for v in layout.values())
        seg = layout["segment_ids"]
        real = seg > 0
        assert np.all(np.diff(seg[real]) >= 0)
        assert np.array_equal(real, np.arange(SEQ_LEN) < real.sum())  # padding sorts last
        assert np.all(layout["loss_mask"][~real] == 0)
        assert np.all(layout["tokens"][~real] == TOK.pad_id)
        assert seg.max() == len(row)  # one segment per piece
        for s, (doc, start, stop) in enumerate(row, start=1):
            idx = np.flatnonzero(seg == s)
            first = idx[0]
            assert layout["positions"][first] == 0 and layout["tokens"][first] == TOK.bos_id
            assert layout["groups"][first] == 0 and layout["loss_mask"][first] == 0
            assert np.all(np.diff(layout["groups"][idx]) >= 0)
            assert np.all(layout["groups"][idx[1:]] >= 1)
            assert np.all(layout["loss_mask"][idx[1:]] == 1)
            original = unsort(layout["tokens"], layout, s)
            np.testing.assert_array_equal(original[1:], corpus.train_docs[doc][start:stop])


def test_resume_and_worker_count_give_same_batches():
    corpus = small_corpus()
    config = make_config()
    skipped = take(train_batches(config, corpus, TOK, 0), 6)[3:]
    resumed = take(train_batches(config, corpus, TOK, 3), 3)
    assert_batches_equal(skipped, resumed)
    assert skipped[0]["tokens"].shape == (4, SEQ_LEN)
    workers = make_config(**{"data.worker_count": 2})
    assert_batches_equal(take(train_batches(workers, corpus, TOK, 3), 3), resumed)


def test_process_slices_concatenate_to_global_batch():
    corpus = small_corpus()
    config = make_config()
    whole = take(train_batches(config, corpus, TOK, 1), 3)
    parts = [take(train_batches(config, corpus, TOK, 1, process_index=p, process_count=2), 3)
             for p in range(2)]
    for step, batch in enumerate(whole):
        for name in batch:
            assert parts[0][step][name].shape[0] == 2
            joined = np.concatenate([parts[0][step][name], parts[1][step][name]])
            np.testing.assert_array_equal(joined, batch[name])
    with pytest.raises(ValueError, match="divisible"):
        train_batches(config, corpus, TOK, process_count=3, process_index=0)


def test_epochs_shuffle_differently():
    corpus = small_corpus()
    config = make_config(**{"orders.curriculum": "ar"})
    count = len(pack_documents([d.size for d in corpus.train_docs], SEQ_LEN))
    dataset = train_dataset(config, corpus, TOK)
    epochs = [[row_key(dataset[e]) for e in range(k * count, (k + 1) * count)] for k in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1])  # each epoch is a permutation of the rows
    assert epochs[0] != epochs[1]
    unshuffled = train_dataset(make_config(**{"orders.curriculum": "ar", "data.shuffle": False}),
                               corpus, TOK)
    assert [row_key(unshuffled[e]) for e in range(count)] != epochs[0]


def test_curriculum_switches_by_step():
    corpus = small_corpus()
    config = make_config(**{"orders.curriculum": "ar until 2; blocks(4)"})
    batches = take(train_batches(config, corpus, TOK, 0), 4)
    for step, batch in enumerate(batches):
        real = batch["segment_ids"] > 0
        positions, groups = batch["positions"][real], batch["groups"][real]
        expected = positions if step < 2 else np.where(positions > 0, (positions - 1) // 4 + 1, 0)
        np.testing.assert_array_equal(groups, expected, err_msg=f"step {step}")
        if step < 2:  # AR: generation order is the original order
            for row in range(batch["positions"].shape[0]):
                for s in np.unique(batch["segment_ids"][row][real[row]]):
                    pos = batch["positions"][row][batch["segment_ids"][row] == s]
                    np.testing.assert_array_equal(pos, np.arange(pos.size))


def test_eval_batch_and_infill_example():
    corpus = small_corpus()
    config = make_config()
    batch = eval_batch(config, corpus, TOK, "random(4)", 3)
    assert batch["tokens"].shape[1] == SEQ_LEN and 1 <= batch["tokens"].shape[0] <= 3
    assert_batches_equal([batch], [eval_batch(config, corpus, TOK, "random(4)", 3)])
    assert eval_batch(config, corpus, TOK, "ar", 1000)["tokens"].shape[0] < 1000
    window, start, stop = infill_example(corpus, TOK, SEQ_LEN, 5, seed=0)
    assert 2 <= window.size <= SEQ_LEN - 1 and 1 <= start < stop <= window.size
    assert TOK.eos_id not in window
    assert any(np.array_equal(window, d[i : i + window.size])
               for d in corpus.eval_docs for i in range(d.size))
