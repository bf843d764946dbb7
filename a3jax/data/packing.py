"""Deterministic index-time packing of documents into rows of seq_len slots.

Each document is cut into pieces of at most seq_len - 1 tokens; every piece becomes its own
document in the layout (BOS first, positions restarting at 0), so it needs len + 1 slots.
Pieces are placed best-fit decreasing: full pieces fill a row alone, the rest go to the open row
with the least room that still fits. Rows are tuples of (doc_id, start, stop) pieces.
"""

from __future__ import annotations

import bisect
from typing import Sequence

import numpy as np

Piece = tuple[int, int, int]  # (doc_id, start, stop) into the document's tokens
Row = tuple[Piece, ...]


def split_documents(lengths: Sequence[int], max_piece_len: int) -> np.ndarray:
    """Pieces [P, 3] = (doc_id, start, stop) covering every token once, each <= max_piece_len."""
    if max_piece_len < 1:
        raise ValueError(f"pieces need room for at least one token, got max_piece_len={max_piece_len}")
    lengths_d = np.asarray(lengths, np.int64)
    counts_d = -(-lengths_d // max_piece_len)  # ceil; empty documents give no piece
    doc_ids_p = np.repeat(np.arange(lengths_d.size), counts_d)
    first_p = np.repeat(np.cumsum(counts_d) - counts_d, counts_d)
    starts_p = (np.arange(doc_ids_p.size) - first_p) * max_piece_len
    stops_p = np.minimum(starts_p + max_piece_len, lengths_d[doc_ids_p])
    return np.stack([doc_ids_p, starts_p, stops_p], axis=1)


def pack_documents(lengths: Sequence[int], seq_len: int) -> list[Row]:
    """Packs documents of the given token lengths into rows of seq_len slots (BOS per piece)."""
    pieces = split_documents(lengths, seq_len - 1)
    slots_p = pieces[:, 2] - pieces[:, 1] + 1
    order = np.lexsort((np.arange(slots_p.size), -slots_p))  # longest first, stable
    rows: list[list[Piece]] = []
    open_rows: list[tuple[int, int]] = []  # sorted (free slots, row index)
    for index in order.tolist():
        need = int(slots_p[index])
        piece = tuple(int(v) for v in pieces[index])
        at = bisect.bisect_left(open_rows, (need, -1))
        if at < len(open_rows):
            free, row = open_rows.pop(at)
            rows[row].append(piece)
        else:
            free, row = seq_len, len(rows)
            rows.append([piece])
        if free - need >= 2:  # room for BOS + one token
            bisect.insort(open_rows, (free - need, row))
    return [tuple(row) for row in rows]
