"""Text sources and the held-out split by document (file).

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
import pathlib
import sysconfig
from typing import Sequence

import numpy as np

from a3jax.data.tokenizer import ByteTokenizer

SOURCES = ("stdlib",)
_TEST_DIRS = frozenset({"test", "tests", "idle_test"})


@dataclasses.dataclass
class Corpus:
    """Tokenized documents (each ends with EOS), split by document."""

    train_docs: list[np.ndarray]
    eval_docs: list[np.ndarray]
    eval_names: list[str]
    train_names: list[str] = dataclasses.field(default_factory=list)


def stable_fraction(name: str) -> float:
    """A hash of `name` mapped to [0, 1); the same on every machine and Python version."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_names(names: Sequence[str], eval_fraction: float) -> np.ndarray:
    """Boolean eval mask: hash < eval_fraction, with at least one eval and one train name."""
    if len(names) < 2:
        raise ValueError(f"need at least 2 documents to split train/eval, got {len(names)}")
    fractions = np.array([stable_fraction(name) for name in names])
    is_eval = fractions < eval_fraction
    if not is_eval.any():
        is_eval[np.argmin(fractions)] = True
    if is_eval.all():
        is_eval[np.argmax(fractions)] = False
    return is_eval


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


def _document(tokenizer: ByteTokenizer, text: str | bytes) -> np.ndarray:
    return np.append(tokenizer.encode(text), np.int32(tokenizer.eos_id)).astype(np.int32)


def corpus_from_texts(
    texts: Sequence[str | bytes],
    tokenizer: ByteTokenizer,
    *,
    names: Sequence[str] | None = None,
    eval_fraction: float = 0.02,
) -> Corpus:
    """Corpus of in-memory texts, split by a hash of each name (default 'doc{i}')."""
    names = [f"doc{i}" for i in range(len(texts))] if names is None else list(names)
    if len(names) != len(texts):
        raise ValueError(f"got {len(texts)} texts but {len(names)} names")
    is_eval = split_names(names, eval_fraction)
    docs = [_document(tokenizer, text) for text in texts]
    return Corpus(
        train_docs=[d for d, e in zip(docs, is_eval) if not e],
        eval_docs=[d for d, e in zip(docs, is_eval) if e],
        eval_names=[n for n, e in zip(names, is_eval) if e],
        train_names=[n for n, e in zip(names, is_eval) if not e],
    )


def load_corpus(data_config, tokenizer: ByteTokenizer) -> Corpus:
    """The corpus named by data_config.source, split with data_config.eval_fraction."""
    source = data_config.source
    if source not in SOURCES:
        raise ValueError(f"unknown data.source {source!r}; valid sources: {', '.join(SOURCES)}")
    root, names = stdlib_files(int(data_config.get("max_files", 0)))
    texts = [(root / name).read_bytes() for name in names]
    return corpus_from_texts(
        texts, tokenizer, names=names, eval_fraction=float(data_config.get("eval_fraction", 0.02))
    )
