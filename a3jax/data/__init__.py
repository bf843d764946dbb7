"""Data: byte tokenizer, corpora with a held-out split, packing and the Grain pipeline."""

from a3jax.data.corpus import Corpus, corpus_from_texts, load_corpus
from a3jax.data.packing import pack_documents, split_documents
from a3jax.data.pipeline import eval_batch, infill_example, train_batches, train_dataset
from a3jax.data.tokenizer import ByteTokenizer

__all__ = [
    "ByteTokenizer",
    "Corpus",
    "corpus_from_texts",
    "eval_batch",
    "infill_example",
    "load_corpus",
    "pack_documents",
    "split_documents",
    "train_batches",
    "train_dataset",
]
