"""Deterministic index-time packing of documents into rows of seq_len slots.

Each document is cut into pieces of at most seq_len - 1 tokens; every piece becomes its own
document in the layout (BOS first, positions restarting at 0), so it needs len + 1 slots.
Pieces are placed best-fit decreasing: full pieces fill a row alone, the rest go to the open row
with the least room that still fits. Rows are tuples of (doc_id, start, stop) pieces; `PackedRows`
holds the same rows as two flat arrays (compact to pickle into worker processes, fast to index).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

from a3jax.errors import UserError

Piece = tuple[int, int, int]  # (doc_id, start, stop) into the document's tokens
Row = tuple[Piece, ...]


def split_documents(lengths: Sequence[int], max_piece_len: int) -> np.ndarray:
    """Pieces [P, 3] = (doc_id, start, stop) covering every token once, each <= max_piece_len."""
    if max_piece_len < 1:
        raise UserError(f"pieces need room for at least one token, got max_piece_len={max_piece_len}")
    lengths_d = np.asarray(lengths, np.int64)
    counts_d = -(-lengths_d // max_piece_len)  # ceil; empty documents give no piece
    doc_ids_p = np.repeat(np.arange(lengths_d.size), counts_d)
    first_p = np.repeat(np.cumsum(counts_d) - counts_d, counts_d)
    starts_p = (np.arange(doc_ids_p.size) - first_p) * max_piece_len
    stops_p = np.minimum(starts_p + max_piece_len, lengths_d[doc_ids_p])
    return np.stack([doc_ids_p, starts_p, stops_p], axis=1)


class PackedRows:
    """Rows as arrays: row r holds pieces[offsets[r]:offsets[r + 1]] (each [doc_id, start, stop])."""

    def __init__(self, pieces: np.ndarray, offsets: np.ndarray):
        self.pieces = np.asarray(pieces, np.int64).reshape(-1, 3)
        self.offsets = np.asarray(offsets, np.int64)

    @classmethod
    def from_rows(cls, rows: Sequence[Row]) -> PackedRows:
        sizes = [len(row) for row in rows]
        flat = [piece for row in rows for piece in row]
        return cls(np.array(flat, np.int64).reshape(-1, 3), np.concatenate([[0], np.cumsum(sizes)]))

    def __len__(self) -> int:
        return int(self.offsets.size - 1)

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        return self.pieces[self.offsets[index] : self.offsets[index + 1]]

    def rows(self) -> list[Row]:
        return [tuple(tuple(int(v) for v in piece) for piece in self[r]) for r in range(len(self))]


def pack_documents(lengths: Sequence[int], seq_len: int, reserve: int = 0) -> list[Row]:
    """Packs documents of the given token lengths into rows of seq_len slots (BOS per piece)."""
    return pack_rows(lengths, seq_len, reserve).rows()


def pack_rows(lengths: Sequence[int], seq_len: int, reserve: int = 0) -> PackedRows:
    """`pack_documents` as PackedRows. Pieces that fill a row alone skip the best-fit search.

    reserve: extra slots kept free per piece (BOS alignment to a group grid of size <= reserve + 1
    needs up to `reserve` padding slots before each BOS, see a3jax.layout.bos_slots)."""
    if reserve < 0 or reserve > seq_len - 2:
        raise UserError(f"reserve={reserve} must lie in [0, seq_len - 2 = {seq_len - 2}]")
    pieces = split_documents(lengths, seq_len - 1 - reserve)
    slots_p = pieces[:, 2] - pieces[:, 1] + 1 + reserve
    order = np.lexsort((np.arange(slots_p.size), -slots_p))  # longest first, stable
    # Full pieces (< 2 slots left) come first; each fills its own row, as the loop would do.
    full = int(np.count_nonzero(slots_p >= seq_len - 1))
    rows: list[list[int]] = [[index] for index in order[:full].tolist()]
    open_rows: list[tuple[int, int]] = []  # sorted (free slots, row index)
    for index in order[full:].tolist():
        need = int(slots_p[index])
        at = bisect.bisect_left(open_rows, (need, -1))
        if at < len(open_rows):
            free, row = open_rows.pop(at)
            rows[row].append(index)
        else:
            free, row = seq_len, len(rows)
            rows.append([index])
        if free - need >= 2 + reserve:  # room for BOS + one token
            bisect.insort(open_rows, (free - need, row))
    sizes = np.array([len(row) for row in rows], np.int64)
    flat = np.fromiter((index for row in rows for index in row), np.int64, count=int(sizes.sum()))
    return PackedRows(pieces[flat], np.concatenate([[0], np.cumsum(sizes)]))
