"""Data: tokenizers, sources and corpora with a held-out split, packing, the Grain pipeline, prepare,
held-out text for evaluation.

Names are imported lazily, so `a3jax.data.prepare` (and its worker processes) do not pull in
Grain and JAX.
"""

from a3jax._lazy import lazy_exports

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
    "infill_example": "heldout",
    "target_bytes": "heldout",
    "train_bpe": "tokenizer",
    "train_batches": "pipeline",
    "train_dataset": "pipeline",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
