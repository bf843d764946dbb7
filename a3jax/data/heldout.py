"""Held-out text for evaluation: the bytes a batch's targets spell (bits per byte under any
tokenizer) and infilling windows cut from the held-out documents."""

from __future__ import annotations

import numpy as np

from a3jax.data.corpus import Corpus
from a3jax.data.tokenizer import Tokenizer
from a3jax.errors import UserError


def target_bytes(batch: dict[str, np.ndarray], tokenizer: Tokenizer) -> int:
    """UTF-8 bytes of the text a batch's targets spell, for bits per byte under any tokenizer: per
    row and document piece, the target tokens (special tokens excluded) put back in their original
    order (`positions`; the layout is sorted by group) and decoded together. Exact except where a
    piece boundary splits a multi-byte character."""
    special = {tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id}
    total = 0
    for tokens, positions, segments, mask in zip(batch["tokens"], batch["positions"], batch["segment_ids"],
                                                 batch["loss_mask"]):
        keep = (mask > 0) & (segments > 0) & ~np.isin(tokens, list(special))
        for segment in np.unique(segments[keep]):
            chosen = keep & (segments == segment)
            piece = tokens[chosen][np.argsort(positions[chosen], kind="stable")]
            total += len(tokenizer.decode(piece).encode("utf-8"))
    return total


def _line_starts(tokens: np.ndarray, newline_id: int) -> np.ndarray:
    """Indices that begin a line (0 and every index after a newline)."""
    return np.concatenate([[0], np.flatnonzero(tokens[:-1] == newline_id) + 1])


def infill_example(corpus: Corpus, tokenizer: Tokenizer, seq_len: int, span_len: int,
                   seed: int) -> tuple[np.ndarray, int, int]:
    """A held-out window (<= seq_len - 1 tokens, from a line start) and a span [start, stop) to mask.

    The span starts at a line start inside the window when one leaves room for span_len tokens.
    """
    rng = np.random.default_rng(seed)
    docs = [d[:-1] if d.size and d[-1] == tokenizer.eos_id else d for d in corpus.eval_docs]
    if not docs or max(d.size for d in docs) < 2:
        raise UserError("the corpus has no held-out document to infill")
    window_len = seq_len - 1
    usable = [i for i, d in enumerate(docs) if d.size >= window_len] or [
        int(np.argmax([d.size for d in docs]))
    ]
    doc = docs[usable[int(rng.integers(len(usable)))]]
    newline = tokenizer.encode("\n")[0]
    starts = _line_starts(doc, newline)
    starts = starts[starts <= max(0, doc.size - window_len)]
    begin = int(starts[rng.integers(starts.size)])
    window = doc[begin : begin + window_len]
    span_len = int(np.clip(span_len, 1, window.size - 1))
    # Leave at least one visible token before the span; prefer a line start.
    candidates = _line_starts(window, newline)
    candidates = candidates[(candidates >= 1) & (candidates <= window.size - span_len)]
    if candidates.size == 0:
        candidates = np.arange(1, window.size - span_len + 1)
    start = int(candidates[rng.integers(candidates.size)])
    return window.copy(), start, start + span_len
