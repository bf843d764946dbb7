"""A byte-level BPE trained on an experiment's own training files, once per workdir: what the demo
(and a sweep file that sets BPE_VOCAB) trains on. Deterministic: the same files give the same
tokenizer.json."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable, Sequence


def bpe_overrides(vocab: int, path: pathlib.Path) -> list[str]:
    """The config overrides that train on the BPE at `path` (data.tokenizer and model.vocab_size)."""
    return [f"data.tokenizer={pathlib.Path(path).absolute()}", f"model.vocab_size={vocab}"]


def ensure_bpe(vocab: int, path: pathlib.Path, base_config, overrides: Sequence[str] = (),
               log: Callable[[str], None] = print) -> pathlib.Path:
    """Trains a byte-level BPE of `vocab` tokens on the training files (never the held-out ones) of
    `base_config` with `overrides` into `path`, unless it exists. Returns the path."""
    from a3jax.configs import apply_overrides, parse
    from a3jax.data.corpus import load_corpus
    from a3jax.data.tokenizer import load_tokenizer, train_bpe

    path = pathlib.Path(path)
    if path.is_file():
        return path
    started = time.perf_counter()
    data = parse(apply_overrides(base_config, [*overrides, "data.tokenizer=bytes"])).data
    byte_tokenizer = load_tokenizer("bytes")
    texts = [byte_tokenizer.decode(doc) for doc in load_corpus(data, byte_tokenizer).train_docs]
    tokenizer = train_bpe(texts, vocab, path)
    sample = texts[:50]
    ratio = sum(len(t.encode()) for t in sample) / max(sum(len(tokenizer.encode(t)) for t in sample), 1)
    log(f"trained a byte-level BPE tokenizer of {vocab} tokens on the {len(texts)} training files in "
        f"{time.perf_counter() - started:.0f} s ({ratio:.1f} bytes per token) -> {path}")
    return path
