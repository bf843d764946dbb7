"""Corpora (data.source) and the held-out split by document.

Sources: 'stdlib' (default, embedded), 'text' / 'jsonl' / 'parquet' (files, globs or folders in
data.paths; data.text_field names the JSONL/Parquet text field; data.doc_separator splits text
files into several documents) and 'arrayrecord' (a folder written by `a3jax prepare`; its
manifest's tokenizer fingerprint must match data.tokenizer). Raw sources are read and tokenized
into memory; ArrayRecord documents are read lazily.

Raw sources hold a document out iff a stable hash of its name (see sources.py) maps below
`eval_fraction`; ArrayRecord corpora hash the document's global index instead.

The embedded source 'offline' is English and code that every offline Python install has
(`offline_documents`): the stdlib's documentation topics (pydoc_data/topics.py, one document per
topic) and the long descriptions of the installed distributions (METADATA bodies of 1,000+
characters: READMEs, English prose about software) as English; stdlib .py files, taken in a fixed
hashed order until they are half the bytes (data.code_share), as code. Documents are split by a
hash of their names (`english:pydoc:TOPIC`, `english:package:NAME`, `code:PATH`); the package
descriptions depend on what is installed.

The embedded default source 'stdlib' is the Python standard library's own .py files, without
tests and site-packages, in sorted relative-path order. A file is held out (eval) iff a stable
hash of its relative path maps below `eval_fraction`; at least one file lands in each split.
`data.max_files > 0` keeps the first max_files files (sorted) BEFORE the split; a file held out in
the full corpus therefore stays held out in every subset (the at-least-one guarantee may only move
extra files to eval).

A document is the file's bytes as tokens followed by EOS (EOS is a target).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import pathlib
import sysconfig
from collections.abc import Sequence

import numpy as np

from a3jax.data import sources as sources_lib
from a3jax.data.tokenizer import Tokenizer
from a3jax.errors import UserError

SOURCES = ("stdlib", "offline", "text", "jsonl", "parquet", "arrayrecord")
MIN_DESCRIPTION = 1000  # characters of a distribution's description to count as an English document
_TEST_DIRS = frozenset({"test", "tests", "idle_test"})


@dataclasses.dataclass
class Corpus:
    """Tokenized documents (each ends with EOS), split by document.

    train_docs / eval_docs are lists of int32 arrays, or `ShardedDocs` (lazy, with `.lengths`).
    """

    train_docs: Sequence[np.ndarray]
    eval_docs: Sequence[np.ndarray]
    eval_names: list[str]
    train_names: list[str] = dataclasses.field(default_factory=list)


def stable_fraction(name: str) -> float:
    """A hash of `name` mapped to [0, 1); the same on every machine and Python version."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_names(names: Sequence[str], eval_fraction: float) -> np.ndarray:
    """Boolean eval mask: hash < eval_fraction, with at least one eval and one train name."""
    if len(names) < 2:
        raise UserError(f"need at least 2 documents to split train/eval, got {len(names)}")
    fractions = np.array([stable_fraction(name) for name in names])
    return sources_lib.split_fractions(fractions, eval_fraction)


def stdlib_files(max_files: int = 0) -> tuple[pathlib.Path, list[str]]:
    """Root and sorted relative paths of the stdlib's non-test .py files."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    names = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if _TEST_DIRS.intersection(parts[:-1]) or "site-packages" in parts[:-1]:
            continue
        if parts[-1].startswith("test_") or not path.is_file():
            continue
        names.append("/".join(parts))
    names.sort()
    if max_files > 0:
        names = names[:max_files]
    return root, names


def doc_lengths(docs: Sequence[np.ndarray]) -> np.ndarray:
    """Token counts of documents (lazy ShardedDocs know them without reading)."""
    lengths = getattr(docs, "lengths", None)
    if lengths is not None:
        return np.asarray(lengths, np.int64)
    return np.array([d.size for d in docs], np.int64)


def corpus_from_texts(
    texts: Sequence[str | bytes],
    tokenizer: Tokenizer,
    *,
    names: Sequence[str] | None = None,
    eval_fraction: float = 0.02,
) -> Corpus:
    """Corpus of in-memory texts, split by a hash of each name (default 'doc{i}')."""
    names = [f"doc{i}" for i in range(len(texts))] if names is None else list(names)
    if len(names) != len(texts):
        raise UserError(f"got {len(texts)} texts but {len(names)} names")
    is_eval = split_names(names, eval_fraction)
    docs = [np.append(ids, np.int32(tokenizer.eos_id)).astype(np.int32)
            for ids in tokenizer.encode_batch(list(texts))]
    return Corpus(
        train_docs=[d for d, e in zip(docs, is_eval) if not e],
        eval_docs=[d for d, e in zip(docs, is_eval) if e],
        eval_names=[n for n, e in zip(names, is_eval) if e],
        train_names=[n for n, e in zip(names, is_eval) if not e],
    )


def _paths(data_config) -> list[str]:
    paths = data_config.paths
    return [paths] if isinstance(paths, str) else list(paths)


def load_raw_corpus(data_config, tokenizer: Tokenizer) -> Corpus:
    """A corpus of text / JSONL / Parquet files, tokenized in memory."""
    fmt = data_config.source
    files = sources_lib.expand_paths(_paths(data_config), fmt)
    documents = list(sources_lib.read_documents(
        files, fmt, text_field=data_config.text_field,
        separator=data_config.doc_separator))
    if not documents:
        listed = ", ".join(str(f) for f in files[:5]) + (" ..." if len(files) > 5 else "")
        raise UserError(f"empty corpus: the {fmt} files {listed} hold no document")
    if len(documents) < 2:
        raise UserError(f"the {fmt} corpus {documents[0][0]!r} is a single document; the held-out "
                         "split needs at least 2 (for text, set data.doc_separator, e.g. '\\n\\n')")
    names, texts = zip(*documents)
    return corpus_from_texts(texts, tokenizer, names=names,
                             eval_fraction=data_config.eval_fraction)


def load_prepared_corpus(data_config, tokenizer: Tokenizer) -> Corpus:
    """A corpus of ArrayRecord shards (a folder written by `a3jax prepare`), read lazily."""
    paths = _paths(data_config)
    if len(paths) != 1:
        raise UserError(f"data.source='arrayrecord' needs data.paths = one folder written by "
                         f"`a3jax prepare`, got {paths}")
    directory = paths[0]
    manifest, lengths = sources_lib.load_shards(directory, fingerprint=tokenizer.fingerprint(),
                                                tokenizer_name=(data_config.tokenizer or "bytes"))
    count = sum(x.size for x in lengths)
    if count == 0:
        raise UserError(f"empty corpus: {directory} holds no document")
    is_eval = sources_lib.split_fractions(sources_lib.index_fractions(np.arange(count)),
                                          data_config.eval_fraction)
    docs = sources_lib.ShardedDocs.from_manifest
    return Corpus(train_docs=docs(directory, manifest, lengths, ~is_eval),
                  eval_docs=docs(directory, manifest, lengths, is_eval),
                  eval_names=[f"document{i}" for i in np.flatnonzero(is_eval)])


def offline_documents(code_share: float = 0.5) -> list[tuple[str, str]]:
    """(name, text) of the 'offline' source (see the module doc), sorted by name."""
    if not 0.0 <= code_share < 1.0:
        raise UserError(f"data.code_share={code_share} must be in [0, 1)")
    try:
        from pydoc_data.topics import topics
    except ImportError:  # a Python built without its docs
        topics = {}
    english = [(f"english:pydoc:{key}", text) for key, text in topics.items() if len(text) >= MIN_DESCRIPTION // 4]
    seen = set()
    for dist in importlib.metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower()
        body = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        if name and name not in seen and isinstance(body, str) and len(body) >= MIN_DESCRIPTION:
            seen.add(name)
            english.append((f"english:package:{name}", body))
    budget = sum(len(t.encode("utf-8")) for _, t in english) * code_share / (1.0 - code_share)
    root, names = stdlib_files()
    code, used = [], 0
    for name in sorted(names, key=stable_fraction):
        if used >= budget:
            break
        text = (root / name).read_text(encoding="utf-8", errors="replace")
        code.append((f"code:{name}", text))
        used += len(text.encode("utf-8"))
    return sorted(english + code)


def load_corpus(data_config, tokenizer: Tokenizer) -> Corpus:
    """The corpus named by data_config.source, split with data_config.eval_fraction."""
    source = data_config.source
    if source not in SOURCES:
        raise UserError(f"unknown data.source {source!r}; valid sources: {', '.join(SOURCES)}")
    if source == "arrayrecord":
        return load_prepared_corpus(data_config, tokenizer)
    if source == "offline":
        names, texts = zip(*offline_documents(data_config.code_share))
        return corpus_from_texts(texts, tokenizer, names=names, eval_fraction=data_config.eval_fraction)
    if source != "stdlib":
        return load_raw_corpus(data_config, tokenizer)
    root, names = stdlib_files(data_config.max_files)
    texts = [(root / name).read_bytes() for name in names]
    return corpus_from_texts(texts, tokenizer, names=names, eval_fraction=data_config.eval_fraction)
