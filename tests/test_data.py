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
from a3jax.layout import build_layout, stack_layouts, unsort

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


# Fast layout, group-size scope, 3-stage curriculum ----------------------------------------------

def reference_layout(pieces, groups, seq_len, bos, pad, align=1):
    """The sorted layout written plainly (one Python loop per slot): what build_layout's vectorised
    radix sort must reproduce."""
    fields = {name: np.zeros(seq_len, np.int32) for name in ("tokens", "positions", "groups", "segment_ids",
                                                             "loss_mask")}
    fields["tokens"][:] = pad
    cursor = 0
    for index, (piece, piece_groups) in enumerate(zip(pieces, groups)):
        while cursor % align != align - 1 and align > 1:
            cursor += 1
        slots = sorted(range(piece.size + 1), key=lambda p: (0 if p == 0 else int(piece_groups[p - 1]), p))
        for p in slots:
            group = 0 if p == 0 else int(piece_groups[p - 1])
            fields["tokens"][cursor] = bos if p == 0 else piece[p - 1]
            fields["positions"][cursor] = p
            fields["groups"][cursor] = group
            fields["segment_ids"][cursor] = index + 1
            fields["loss_mask"][cursor] = group > 0
            cursor += 1
    return fields


def test_build_layout_equals_a_plain_reference():
    from a3jax.layout import build_layout
    from a3jax.orders import example_rng, parse_sampler

    rng = np.random.default_rng(5)
    for spec in ("ar", "random(8)", "random_sizes(1,5)", "span(0.1,0.5)", "two_group(0.2,0.8)"):
        sampler = parse_sampler(spec)
        for trial in range(6):
            lengths = rng.integers(0, 12, size=rng.integers(1, 4))
            pieces = [rng.integers(0, 256, size=n).astype(np.int32) for n in lengths]
            groups = [sampler(int(n), example_rng(trial, int(n), 0)) for n in lengths]
            expected = reference_layout(pieces, groups, SEQ_LEN + 8, 1, 2)
            got = build_layout(pieces, groups, SEQ_LEN + 8, bos_id=1, pad_id=2)
            assert got.keys() == expected.keys()
            for name in expected:
                assert got[name].dtype == np.int32
                np.testing.assert_array_equal(got[name], expected[name], err_msg=f"{spec} {name}")
    with pytest.raises(ValueError, match="seq_len"):
        build_layout([np.zeros(40, np.int32)], [np.ones(40, np.int32)], SEQ_LEN, bos_id=1, pad_id=2)


def group_sizes(layout_row, segment):
    groups = layout_row["groups"][layout_row["segment_ids"] == segment]
    return np.bincount(groups)[1:]


def test_group_size_scope_batch_shares_one_draw_per_step():
    corpus = small_corpus()
    steps = 8
    batch_scope = make_config(**{"orders.curriculum": "random_sizes(1,6)",
                                 "orders.group_size_scope": "batch"})
    batches = take(train_batches(batch_scope, corpus, TOK, 0), steps)
    sizes_per_step = []
    for batch in batches:
        sizes = set()
        for row in range(batch["tokens"].shape[0]):
            layout = {k: v[row] for k, v in batch.items()}
            for segment in np.unique(layout["segment_ids"][layout["segment_ids"] > 0]):
                counts = group_sizes(layout, segment)
                assert np.all(counts[:-1] == counts[0]) and counts[-1] <= counts[0]
                if counts.size > 1:
                    sizes.add(int(counts[0]))
        assert len(sizes) == 1, sizes  # one group size across the whole batch
        sizes_per_step.append(sizes.pop())
    assert len(set(sizes_per_step)) > 1  # but drawn anew per step
    resumed = take(train_batches(batch_scope, corpus, TOK, 3), 2)
    assert_batches_equal(batches[3:5], resumed)
    workers = make_config(**{"orders.curriculum": "random_sizes(1,6)",
                             "orders.group_size_scope": "batch", "data.worker_count": 2})
    assert_batches_equal(take(train_batches(workers, corpus, TOK, 3), 2), resumed)
    # Mixtures: every example of a step uses the same component.
    mixed = make_config(**{"orders.curriculum": "0.5*ar + 0.5*blocks(4)",
                           "orders.group_size_scope": "batch"})
    kinds = []
    for batch in take(train_batches(mixed, corpus, TOK, 0), steps):
        real = batch["segment_ids"] > 0
        positions, groups = batch["positions"][real], batch["groups"][real]
        is_ar = np.array_equal(groups, positions)
        is_blocks = np.array_equal(groups, np.where(positions > 0, (positions - 1) // 4 + 1, 0))
        assert is_ar or is_blocks
        kinds.append(is_ar)
    assert len(set(kinds)) == 2
    with pytest.raises(ValueError, match="group_size_scope"):
        train_dataset(make_config(**{"orders.group_size_scope": "step"}), corpus, TOK)


def test_three_stage_curriculum_including_right_after_resume():
    corpus = small_corpus()
    config = make_config(**{"orders.curriculum": "ar until 2; blocks(3) until 4; random(2)"})

    def check(step, batch):
        real = batch["segment_ids"] > 0
        positions, groups = batch["positions"][real], batch["groups"][real]
        if step < 2:
            np.testing.assert_array_equal(groups, positions, err_msg=f"step {step}")
        elif step < 4:
            np.testing.assert_array_equal(
                groups, np.where(positions > 0, (positions - 1) // 3 + 1, 0), err_msg=f"step {step}")
        else:
            assert not np.array_equal(groups, positions)
            for row in range(batch["tokens"].shape[0]):
                layout = {k: v[row] for k, v in batch.items()}
                for segment in np.unique(layout["segment_ids"][layout["segment_ids"] > 0]):
                    counts = group_sizes(layout, segment)
                    assert np.all(counts[:-1] == 2) and 1 <= counts[-1] <= 2

    straight = take(train_batches(config, corpus, TOK, 0), 6)
    for step, batch in enumerate(straight):
        check(step, batch)
    for resume_at in (2, 4):  # right after each stage boundary
        resumed = take(train_batches(config, corpus, TOK, resume_at), 2)
        for offset, batch in enumerate(resumed):
            check(resume_at + offset, batch)
        assert_batches_equal(resumed, straight[resume_at : resume_at + 2])


def test_hf_tokenizer_feeds_the_pipeline(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from a3jax.data import load_tokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [f"def f{i}(x):\n    return x * {i}\n" for i in range(30)]
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=280, special_tokens=["<s>", "</s>", "<pad>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tokenizer.json"))
    hf = load_tokenizer(str(tmp_path / "tokenizer.json"))
    corpus = corpus_from_texts(texts, hf, eval_fraction=0.2)
    batch = take(train_batches(make_config(), corpus, hf, 0), 1)[0]
    first = batch["segment_ids"][0] == 1
    assert batch["tokens"][0][first][0] == hf.bos_id
    assert np.all(batch["tokens"][batch["segment_ids"] == 0] == hf.pad_id)
    decoded = hf.decode(unsort(batch["tokens"][0], {k: v[0] for k, v in batch.items()}, 1))
    assert decoded in "".join(texts)


@pytest.mark.slow
def test_worker_processes_stop_and_leave_no_shared_memory(tmp_path):
    """`a3jax train` with Grain worker processes (data.worker_count=2) ends without Python's
    resource tracker finding leaked shared_memory segments: the loop closes its stream, and batches
    come pickled from the workers, never through shared memory (which Grain left behind)."""
    import subprocess
    import sys

    args = [sys.executable, "-m", "a3jax.cli", "train", f"--workdir={tmp_path / 'w'}", "--config=tiny",
            "--no-progress", "--config.data.worker_count=2", "--config.train.steps=3",
            "--config.train.batch_size=4", "--config.data.max_files=30", "--config.train.eval_rows=2",
            "--config.model.n_layers=1", "--config.data.seq_len=64", "--config.mesh.devices=1"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "finished at step 3" in result.stdout
    assert "leaked shared_memory" not in result.stderr, result.stderr[-2000:]


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
    layout = build_layout(docs, groups, 14, bos_id=10, pad_id=9)
    assert not np.all(np.diff(layout["positions"][:7]) > 0)  # the row really is permuted
    n = layout["tokens"].size
    values = {"scalars": np.arange(n) * 10, "logits": rng.standard_normal((n, 5)),
              "hidden": rng.standard_normal((n, 2, 3)).astype(np.float32)}
    for segment, doc in enumerate(docs, start=1):
        np.testing.assert_array_equal(unsort(layout["tokens"], layout, segment), np.concatenate([[10], doc]))
        for name, value in values.items():
            got = unsort(value, layout, segment)
            assert got.shape == (doc.size + 1,) + value.shape[1:] and got.dtype == value.dtype, name
            np.testing.assert_array_equal(got, _manual_unsort(value, layout, segment))


def test_unsort_names_values_of_the_wrong_length():
    layout = build_layout([np.arange(3)], [np.array([1, 2, 1])], 6, bos_id=10, pad_id=9)
    with pytest.raises(ValueError, match=r"shape \(5, 4\).*6 slots"):
        unsort(np.zeros((5, 4)), layout, 1)
    # the batch axis must be taken off first: [B, N] is refused, the row [N] works
    batch = stack_layouts([layout])
    with pytest.raises(ValueError, match="6 slots"):
        unsort(batch["tokens"], layout, 1)
    assert unsort(batch["tokens"][0], layout, 1).shape == (4,)


