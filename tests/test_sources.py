"""Tests of tokenizers (bytes, tokenizer.json, SentencePiece) and raw sources (text, JSONL, Parquet)."""

from __future__ import annotations

import json
import pathlib
import pickle

import numpy as np
import pytest
from ml_collections import ConfigDict

from a3jax.data import (
    ByteTokenizer,
    HFTokenizer,
    SentencePieceTokenizer,
    load_corpus,
    load_tokenizer,
    train_batches,
)
from a3jax.data.corpus import stdlib_files
from a3jax.data.sources import expand_paths

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
ODD_TEXT = "héllo wörld ✓ 日本語 \n\ttab  two  spaces\r\n\n𝔘𝔫𝔦 end"


def stdlib_texts(count=4):
    root, names = stdlib_files()
    picked = [n for n in names if n.startswith(("json/", "textwrap", "string"))][:count]
    return [(root / name).read_text("utf-8") for name in picked]


def build_hf_tokenizer(path: pathlib.Path, specials=("<pad>", "<s>", "</s>")) -> pathlib.Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(stdlib_texts(3) + [ODD_TEXT], trainer=trainer)
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def hf_path(tmp_path_factory):
    return build_hf_tokenizer(tmp_path_factory.mktemp("hf") / "tokenizer.json")


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
    import sentencepiece

    folder = tmp_path_factory.mktemp("spm")
    (folder / "train.txt").write_text("\n".join(stdlib_texts(3) + [ODD_TEXT]), "utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(folder / "train.txt"), model_prefix=str(folder / "tok"), vocab_size=500,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity",
        add_dummy_prefix=False, remove_extra_whitespaces=False, minloglevel=2,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3)
    return folder / "tok.model"


def data_config(**values) -> ConfigDict:
    base = dict(source="stdlib", paths=(), seq_len=32, eval_fraction=0.2, max_files=0,
                worker_count=0, shuffle=True, tokenizer="bytes", text_field="text",
                doc_separator="", bos_token="", eos_token="", pad_token="")
    base.update(values)
    return ConfigDict(base)


# Tokenizers --------------------------------------------------------------------------------------

def test_hf_tokenizer_loads_offline_and_round_trips(hf_path):
    tok = load_tokenizer(str(hf_path))
    assert isinstance(tok, HFTokenizer)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2) and tok.vocab_size == 400
    for text in stdlib_texts(4) + [ODD_TEXT]:
        ids = tok.encode(text)
        assert ids.dtype == np.int32 and ids.size < len(text.encode())
        assert tok.decode(ids) == text
        assert tok.decode(np.concatenate([[tok.bos_id], ids, [tok.eos_id, tok.pad_id]])) == text
    assert [list(x) for x in tok.encode_batch(["ab", "cd"])] == [list(tok.encode("ab")), list(tok.encode("cd"))]
    assert load_tokenizer(str(hf_path.parent)).fingerprint() == tok.fingerprint()  # folder works
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.fingerprint() == tok.fingerprint() and list(clone.encode("x y")) == list(tok.encode("x y"))
    assert tok.fingerprint() != ByteTokenizer().fingerprint()


def test_sentencepiece_round_trip(spm_path):
    tok = load_tokenizer(data_config(tokenizer=str(spm_path)))
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == (1, 2, 3, 500)
    for text in stdlib_texts(4) + [ODD_TEXT]:
        assert tok.decode(tok.encode(text)) == text
    assert pickle.loads(pickle.dumps(tok)).fingerprint() == tok.fingerprint()


@pytest.mark.parametrize("kind", ["bytes", "hf"])
def test_round_trip_on_shared_data(kind, hf_path):
    path = SHARED_DATA / "tinyshakespeare.txt"
    if not path.is_file():
        pytest.skip(f"the folder ../shared/data ({SHARED_DATA}) is absent: no tinyshakespeare.txt")
    text = path.read_text("utf-8")
    tok = ByteTokenizer() if kind == "bytes" else load_tokenizer(str(hf_path))
    assert tok.decode(tok.encode(text)) == text


def test_tokenizer_errors(tmp_path, hf_path):
    with pytest.raises(FileNotFoundError, match="nothing.json does not exist"):
        load_tokenizer(str(tmp_path / "nothing.json"))
    with pytest.raises(FileNotFoundError, match="holds no tokenizer.json"):
        load_tokenizer(str(tmp_path))
    no_bos = build_hf_tokenizer(tmp_path / "nobos.json", specials=("<|endoftext|>", "<unk>"))
    with pytest.raises(ValueError, match=r"no BOS token.*found: \['<\|endoftext\|>', '<unk>'\]"):
        load_tokenizer(str(no_bos))
    named = load_tokenizer(str(no_bos), bos_token="<|endoftext|>")  # explicit names work
    assert named.bos_id == named.eos_id == 0 and named.pad_id == named.eos_id
    with pytest.raises(ValueError, match=r"data.bos_token='<x>' is not a token"):
        load_tokenizer(str(hf_path), bos_token="<x>")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot load .*bad.json"):
        load_tokenizer(str(tmp_path / "bad.json"))


def test_vocab_mismatch_is_a_clear_error(hf_path):
    tok = load_tokenizer(str(hf_path))
    tok.check_vocab(400)
    with pytest.raises(ValueError, match=r"model vocab_size=259 .*vocab_size=400.*>= 400"):
        tok.check_vocab(259)


def test_tokenizer_config_names_the_specials(tmp_path):
    path = build_hf_tokenizer(tmp_path / "tokenizer.json", specials=("<a>", "<b>", "<c>"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {"content": "<b>"}, "eos_token": "<c>", "pad_token": "<a>"}))
    tok = load_tokenizer(str(path))
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)


# Raw sources -------------------------------------------------------------------------------------

def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), "utf-8")
    return path


def test_text_jsonl_parquet_sources_agree(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"document {i}: " + "word " * (i % 9 + 1) for i in range(30)]
    folder = tmp_path / "txt"
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"{i:02d}.txt").write_text(text, "utf-8")
    write_jsonl(tmp_path / "a.jsonl", [{"text": t, "id": i} for i, t in enumerate(texts[:12])])
    (tmp_path / "b.jsonl").write_text("".join(json.dumps({"text": t}) + "\n\n" for t in texts[12:]))
    pq.write_table(pa.table({"body": texts}), tmp_path / "c.parquet", row_group_size=7)
    tok = ByteTokenizer()
    corpora = {
        "text": load_corpus(data_config(source="text", paths=(str(folder),)), tok),
        "jsonl": load_corpus(data_config(source="jsonl", paths=(str(tmp_path / "*.jsonl"),)), tok),
        "parquet": load_corpus(data_config(source="parquet", paths=(str(tmp_path / "c.parquet"),),
                                           text_field="body"), tok),
    }
    for name, corpus in corpora.items():
        docs = list(corpus.train_docs) + list(corpus.eval_docs)
        assert sorted(tok.decode(d) for d in docs) == sorted(texts), name
        assert all(d[-1] == tok.eos_id for d in docs) and corpus.eval_docs and corpus.train_docs
    assert "b.jsonl:3" in corpora["jsonl"].eval_names + corpora["jsonl"].train_names  # file:line
    separated = load_corpus(data_config(source="text", paths=(str(folder / "0*.txt"),),
                                        doc_separator=" "), tok)
    assert len(separated.train_docs) + len(separated.eval_docs) > 10
    config = ConfigDict(dict(seed=0, data=data_config(source="parquet", text_field="body",
                                                      paths=(str(tmp_path / "c.parquet"),)),
                             orders=ConfigDict(dict(curriculum="random(4)")),
                             train=ConfigDict(dict(batch_size=2))))
    iterator = train_batches(config, corpora["parquet"], tok)
    assert next(iterator)["tokens"].shape == (2, 32)
    iterator.close()


def test_bad_inputs_name_the_file_and_record(tmp_path):
    tok = ByteTokenizer()
    with pytest.raises(FileNotFoundError, match="missing.txt' does not exist"):
        load_corpus(data_config(source="text", paths=(str(tmp_path / "missing.txt"),)), tok)
    with pytest.raises(FileNotFoundError, match=r"no file matches .*\*.zzz"):
        load_corpus(data_config(source="text", paths=(str(tmp_path / "*.zzz"),)), tok)
    with pytest.raises(ValueError, match="set data.paths"):
        load_corpus(data_config(source="jsonl"), tok)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty corpus.*empty.txt"):
        load_corpus(data_config(source="text", paths=(str(tmp_path / "empty.txt"),)), tok)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "a"}, {"text": "b"}, {"body": "c"}])
    with pytest.raises(ValueError, match=r"bad.jsonl:3: record has no text field 'text' \(fields: \['body'\]\)"):
        load_corpus(data_config(source="jsonl", paths=(str(bad),)), tok)
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2: not valid JSON"):
        load_corpus(data_config(source="jsonl", paths=(str(tmp_path / "broken.jsonl"),)), tok)
    write_jsonl(tmp_path / "num.jsonl", [{"text": "a"}, {"text": 5}])
    with pytest.raises(ValueError, match=r"num.jsonl:2: field 'text' is int"):
        load_corpus(data_config(source="jsonl", paths=(str(tmp_path / "num.jsonl"),)), tok)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["a", "b"]}), tmp_path / "p.parquet")
    with pytest.raises(ValueError, match=r"p.parquet: no text column 'text' \(columns: \['body'\]\)"):
        load_corpus(data_config(source="parquet", paths=(str(tmp_path / "p.parquet"),)), tok)
    pq.write_table(pa.table({"text": ["a", None]}), tmp_path / "n.parquet")
    with pytest.raises(ValueError, match=r"n.parquet: row 1: column 'text' is null"):
        load_corpus(data_config(source="parquet", paths=(str(tmp_path / "n.parquet"),)), tok)
    (tmp_path / "one.txt").write_text("only one")
    with pytest.raises(ValueError, match="single document.*doc_separator"):
        load_corpus(data_config(source="text", paths=(str(tmp_path / "one.txt"),)), tok)


def test_expand_paths_order_and_dedup(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "c.txt"):
        (tmp_path / name).write_text("{}\n")
    files = expand_paths([str(tmp_path / "*.jsonl"), str(tmp_path / "a.jsonl")], "jsonl")
    assert [f.name for f in files] == ["a.jsonl", "b.jsonl"]
    assert [f.name for f in expand_paths(str(tmp_path), "jsonl")] == ["a.jsonl", "b.jsonl"]
    assert len(expand_paths(str(tmp_path), "text")) == 3


def test_offline_source_is_english_and_code_split_by_name():
    """data.source=offline: the stdlib's documentation topics and installed packages' descriptions
    (English) with stdlib code making up code_share of the bytes, sorted, the same on a second call,
    held out by a hash of each document's name."""
    from a3jax.configs.sections import DataConfig
    from a3jax.data.corpus import offline_documents, stable_fraction

    docs = offline_documents(0.5)
    assert docs == offline_documents(0.5) and [n for n, _ in docs] == sorted(n for n, _ in docs)
    kinds = {name.split(":")[0] for name, _ in docs}
    assert kinds == {"english", "code"}
    assert any(n.startswith("english:pydoc:") for n, _ in docs)
    assert any(n.startswith("english:package:") for n, _ in docs)
    size = {k: sum(len(t.encode()) for n, t in docs if n.startswith(k)) for k in ("english", "code")}
    # code is added file by file until it reaches the English bytes: at most one file over
    assert size["english"] <= size["code"] < size["english"] + max(len(t.encode()) for _, t in docs)
    assert sum(len(t.encode()) for n, t in offline_documents(0.25) if n.startswith("code")) < size["code"]
    corpus = load_corpus(DataConfig(source="offline", eval_fraction=0.1), ByteTokenizer())
    assert len(corpus.eval_names) + len(corpus.train_names) == len(docs)
    assert all(stable_fraction(n) < 0.1 for n in corpus.eval_names) or len(corpus.eval_names) == 1
    with pytest.raises(ValueError, match="data.code_share=1.0 must be in"):
        offline_documents(1.0)
