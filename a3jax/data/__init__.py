"""Data: tokenizers, sources and corpora with a held-out split, packing, the Grain pipeline, prepare.

Names are imported lazily, so `a3jax.data.prepare` (and its worker processes) do not pull in
Grain and JAX.
"""

import importlib

_EXPORTS = {
    "ByteTokenizer": "tokenizer",
    "HFTokenizer": "tokenizer",
    "SentencePieceTokenizer": "tokenizer",
    "Tokenizer": "tokenizer",
    "load_tokenizer": "tokenizer",
    "Corpus": "corpus",
    "corpus_from_texts": "corpus",
    "load_corpus": "corpus",
    "CorruptShardError": "sources",
    "ShardedDocs": "sources",
    "PackedRows": "packing",
    "pack_documents": "packing",
    "pack_rows": "packing",
    "split_documents": "packing",
    "eval_batch": "pipeline",
    "infill_example": "pipeline",
    "train_batches": "pipeline",
    "train_dataset": "pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
