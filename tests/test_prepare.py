"""Tests of `prepare` (ArrayRecord shards: parallel, resumable, deterministic) and training from them."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from ml_collections import ConfigDict

from a3jax.data import ByteTokenizer, CorruptShardError, load_corpus, train_batches, train_dataset
from a3jax.data import prepare as prepare_lib
from a3jax.data.packing import pack_rows
from a3jax.layout import unsort

TOK = ByteTokenizer()
SEQ_LEN = 48
ROOT = pathlib.Path(__file__).resolve().parent.parent


def texts(count=60, seed=0):
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "γάμμα", "δ", "\n", "    ", "(", ")", "日本", "end."]
    sizes = rng.integers(1, 60, size=count)
    sizes[::9] = 120  # some documents longer than several records and rows
    return [f"doc {i} " + " ".join(rng.choice(words, size=int(n))) for i, n in enumerate(sizes)]


def write_inputs(folder: pathlib.Path, docs) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    half = len(docs) // 2
    for name, part in (("a.jsonl", docs[:half]), ("b.jsonl", docs[half:])):
        (folder / name).write_text("".join(json.dumps({"text": t}) + "\n" for t in part), "utf-8")
    return [str(folder / "*.jsonl")]


OPTIONS = dict(chunk_bytes=1500, record_tokens=64, progress=False)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("prep")
    inputs = write_inputs(base / "in", texts())
    manifest = prepare_lib.prepare(inputs, base / "out", "bytes", workers=0, **OPTIONS)
    return base, inputs, manifest


def shard_bytes(folder: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "plan.json"}


def make_config(folder, **overrides) -> ConfigDict:
    config = ConfigDict()
    config.seed = 3
    config.data = ConfigDict(dict(source="arrayrecord", paths=(str(folder),), seq_len=SEQ_LEN,
                                  eval_fraction=0.15, max_files=0, worker_count=0, shuffle=True,
                                  tokenizer="bytes", text_field="text", doc_separator=""))
    config.orders = ConfigDict(dict(curriculum="0.5*ar + 0.5*random_sizes(1,4)",
                                    group_size_scope="example"))
    config.train = ConfigDict(dict(batch_size=4))
    for key, value in overrides.items():
        section, _, name = key.rpartition(".")
        (config[section] if section else config)[name] = value
    return config


def take(iterator, count):
    batches = list(itertools.islice(iterator, count))
    iterator.close()
    return batches


def assert_batches_equal(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# prepare -----------------------------------------------------------------------------------------

def test_manifest_and_shards_hold_every_document(prepared):
    base, _, manifest = prepared
    out = base / "out"
    assert len(manifest["shards"]) >= 3 and manifest["total_documents"] == 60
    assert manifest["tokenizer"]["fingerprint"] == TOK.fingerprint()
    assert [i["path"].rsplit("/", 1)[-1] for i in manifest["inputs"]] == ["a.jsonl", "b.jsonl"]
    assert all(i["bytes"] > 0 for i in manifest["inputs"])
    assert manifest["total_records"] > manifest["total_documents"]  # long documents span records
    assert json.loads((out / "manifest.json").read_text()) == manifest
    corpus = load_corpus(make_config(out).data, TOK)
    docs = list(corpus.train_docs) + list(corpus.eval_docs)
    assert sorted(TOK.decode(d) for d in docs) == sorted(texts())
    assert all(d[-1] == TOK.eos_id for d in docs)
    assert sum(d.size for d in docs) == manifest["total_tokens"]
    assert corpus.eval_docs and len(corpus.eval_docs) < len(corpus.train_docs)
    assert set(corpus.train_docs.doc_ids).isdisjoint(corpus.eval_docs.doc_ids)
    long_doc = int(np.argmax(corpus.train_docs.lengths))
    full = corpus.train_docs[long_doc]
    for start, stop in ((0, 5), (60, 70), (63, 129), (100, full.size)):  # across record edges
        np.testing.assert_array_equal(corpus.train_docs.read_slice(long_doc, start, stop), full[start:stop])


def test_parallel_prepare_is_identical_and_resumes(prepared, tmp_path):
    base, inputs, manifest = prepared
    reference = shard_bytes(base / "out")
    parallel = prepare_lib.prepare(inputs, tmp_path / "par", "bytes", workers=2, **OPTIONS)
    assert parallel == manifest and shard_bytes(tmp_path / "par") == reference
    # An interrupted run: no manifest, later shards missing, a partial temporary file left behind.
    out = tmp_path / "par"
    (out / "manifest.json").unlink()
    names = sorted(p.name for p in out.glob("shard-*.arrayrecord"))
    for name in names[1:]:
        (out / name).unlink()
    (out / names[2].replace(".arrayrecord", ".lengths.npy")).unlink()
    (out / (names[2] + ".tmp999")).write_bytes(reference[names[2]][:100])
    again = prepare_lib.prepare(inputs, out, "bytes", workers=0, **OPTIONS)
    assert again == manifest and shard_bytes(out) == reference
    assert not list(out.glob("*.tmp*"))
    with pytest.raises(ValueError, match="other settings.*record_tokens"):
        prepare_lib.prepare(inputs, out, "bytes", workers=0, **{**OPTIONS, "record_tokens": 32})


def _kill_after_first_shard(inputs, out) -> bool:
    """Runs `a3jax prepare` in a child and SIGKILLs it once its first shard is written; True if the
    kill landed before the child finished."""
    command = [sys.executable, "-m", "a3jax.data.prepare", "--input", *inputs, "--output", str(out),
               "--workers", "1", "--chunk-mb", str(OPTIONS["chunk_bytes"] / 2**20),
               "--record-tokens", "64", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if any(out.glob("shard-*.arrayrecord")):
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    process.wait()
    return process.returncode == -signal.SIGKILL


def test_prepare_survives_sigkill(prepared, tmp_path):
    """Killed after its first shard, prepare leaves no manifest; run again, it finishes with the
    shards and manifest of an uninterrupted run. The corpus grows until a kill lands mid-run (a
    fast machine may finish a small corpus between two polls), so the killed branch is always
    the one checked."""
    for attempt, n_texts in enumerate((400, 1600, 6400)):
        inputs = write_inputs(tmp_path / f"in{attempt}", texts(n_texts, seed=1))
        out = tmp_path / f"out{attempt}"
        if _kill_after_first_shard(inputs, out):
            break
    else:
        pytest.fail("prepare finished before the kill every time, even on 6,400 texts")
    reference = prepare_lib.prepare(inputs, tmp_path / "ref", "bytes", workers=0, **OPTIONS)
    done = len(list(out.glob("shard-*.arrayrecord")))
    assert done >= 1
    assert not (out / "manifest.json").exists()
    args = argparse.Namespace(input=inputs, output=str(out), tokenizer="bytes", format=None,
                              text_field="text", doc_separator="", workers=0,
                              chunk_mb=OPTIONS["chunk_bytes"] / 2**20, record_tokens=64,
                              bos_token=None, eos_token=None, pad_token=None, no_progress=True)
    assert prepare_lib.main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {k: v for k, v in manifest.items() if k != "inputs"} == {
        k: v for k, v in reference.items() if k != "inputs"}
    assert shard_bytes(out) == shard_bytes(tmp_path / "ref")


def test_prepare_bad_inputs(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"txt": "b"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: record has no text field 'text'"):
        prepare_lib.prepare([str(tmp_path / "bad.jsonl")], tmp_path / "o1", workers=0, progress=False)
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="empty corpus"):
        prepare_lib.prepare([str(tmp_path / "empty.jsonl")], tmp_path / "o2", workers=0, progress=False)
    with pytest.raises(FileNotFoundError, match="nope.jsonl' does not exist"):
        prepare_lib.prepare([str(tmp_path / "nope.jsonl")], tmp_path / "o3", workers=0, progress=False)
    (tmp_path / "o4").mkdir()
    (tmp_path / "o4" / "mine.txt").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        prepare_lib.prepare([str(tmp_path / "bad.jsonl")], tmp_path / "o4", workers=0, progress=False)


def test_corrupt_shards_are_errors_never_dropped(prepared, tmp_path):
    import shutil

    base, _, manifest = prepared
    out = tmp_path / "copy"
    shutil.copytree(base / "out", out)
    shard = out / manifest["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(CorruptShardError, match=f"{shard.name} has .* bytes but the manifest says"):
        load_corpus(make_config(out).data, TOK)
    data[200] ^= 0xFF  # inside the first record's chunk
    shard.write_bytes(bytes(data))
    corpus = load_corpus(make_config(out).data, TOK)
    with pytest.raises(CorruptShardError, match=f"{shard.name}: records .* cannot be read"):
        for docs in (corpus.train_docs, corpus.eval_docs):
            for index in range(len(docs)):
                docs[index]
    (out / manifest["shards"][2]["file"]).unlink()
    with pytest.raises(CorruptShardError, match="is missing"):
        load_corpus(make_config(out).data, TOK)
    with pytest.raises(FileNotFoundError, match="manifest.json does not exist"):
        load_corpus(make_config(tmp_path).data, TOK)


def test_fingerprint_mismatch_is_an_error(prepared, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from a3jax.data import load_tokenizer

    base, _, _ = prepared
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(texts(), trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>"], show_progress=False))
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    config = make_config(base / "out", **{"data.tokenizer": str(path)})

    with pytest.raises(ValueError, match=r"tokenized with 'bytes' .* data.tokenizer='.*' gives fingerprint"):
        load_corpus(config.data, load_tokenizer(config.data))


# training from shards ----------------------------------------------------------------------------

def test_shards_feed_training_deterministically(prepared):
    base, _, _ = prepared
    config = make_config(base / "out")
    corpus = load_corpus(config.data, TOK)
    skipped = take(train_batches(config, corpus, TOK, 0), 5)[2:]
    resumed = take(train_batches(config, corpus, TOK, 2), 3)
    assert_batches_equal(skipped, resumed)
    workers = make_config(base / "out", **{"data.worker_count": 2})
    assert_batches_equal(take(train_batches(workers, corpus, TOK, 2), 3), resumed)
    one = make_config(base / "out", **{"data.worker_count": 1})
    assert_batches_equal(take(train_batches(one, corpus, TOK, 2), 3), resumed)
    parts = [take(train_batches(config, corpus, TOK, 2, process_index=p, process_count=2), 3)
             for p in range(2)]
    for step, batch in enumerate(resumed):
        for name in batch:
            np.testing.assert_array_equal(
                np.concatenate([parts[0][step][name], parts[1][step][name]]), batch[name])
    again = load_corpus(config.data, TOK)  # a fresh load (another process) gives the same
    assert_batches_equal(take(train_batches(config, again, TOK, 2), 3), resumed)


def test_every_shard_token_appears_once_per_epoch(prepared):
    base, _, _ = prepared
    config = make_config(base / "out", **{"orders.curriculum": "random(3)"})
    corpus = load_corpus(config.data, TOK)
    rows = len(pack_rows(corpus.train_docs.lengths, SEQ_LEN))
    dataset = train_dataset(config, corpus, TOK)
    counts = {}
    for e in range(rows, 2 * rows):  # the second epoch
        layout = dataset[e]
        for segment in np.unique(layout["segment_ids"][layout["segment_ids"] > 0]):
            piece = unsort(layout["tokens"], layout, segment)
            assert piece[0] == TOK.bos_id
            counts[piece[1:].tobytes()] = counts.get(piece[1:].tobytes(), 0) + 1
    expected = {}
    for doc in range(len(corpus.train_docs)):
        tokens = corpus.train_docs[doc]
        for start in range(0, tokens.size, SEQ_LEN - 1):
            key = tokens[start : start + SEQ_LEN - 1].tobytes()
            expected[key] = expected.get(key, 0) + 1
    assert counts == expected
