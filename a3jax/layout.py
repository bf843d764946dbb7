"""The sorted group layout: the contract between data, model, kernels, decoding and evaluation.

A row of length N holds one or more documents. Each document starts with BOS in the context group
(group 0, never a target, visible to every row of its document). Its other tokens carry group ids
>= 1 (group 0 is also allowed: prompt tokens join the context group). Tokens are stored in
GENERATION order: stably sorted by (document, group). Padding sorts last.

Fields (all int32 numpy arrays of shape [N]):
  tokens       token ids in generation order
  positions    original position inside the document (BOS = 0), used by RoPE
  groups       group id, non-decreasing inside a document; 0 = context
  segment_ids  1..D for documents in row order, 0 for padding
  loss_mask    1 for a target token (group >= 1 of a real document), else 0

Visibility (what the model implements, see model/attention.py):
  content row i sees key j  iff  segment(j) == segment(i) and group(j) <= group(i)
  query   row i sees key j  iff  segment(j) == segment(i) and group(j) <  group(i)
Because the row is sorted, both are one contiguous key range per row (`key_ranges`, jittable).

Grid alignment (`align=g`, for documents whose groups all have g tokens except maybe the last):
each document's BOS sits at a slot = g - 1 (mod g), so its group k fills the aligned block of
slots [m*g, (m+1)*g) right after. Then visibility is the STATIC block-causal mask (content row i
sees blocks <= i // g, query row i blocks < i // g) and-ed with segment equality: what a kernel
with a static mask (TPU splash attention) needs. Up to g - 1 padding slots go before each BOS.
`grid_violations` checks a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from a3jax.errors import UserError

FIELDS = ("tokens", "positions", "groups", "segment_ids", "loss_mask")
PAD_SEGMENT = 0
CONTEXT_GROUP = 0


def build_layout(
    documents: Sequence[np.ndarray],
    groups: Sequence[np.ndarray],
    seq_len: int,
    *,
    bos_id: int,
    pad_id: int,
    align: int = 1,
) -> dict[str, np.ndarray]:
    """Builds the sorted layout of one row from documents (without BOS) and their group ids.

    documents[d] holds the tokens of document d at original positions 1..L_d (BOS is added at
    position 0); groups[d] holds one group id per token (>= 0; 0 = context, not a target).
    align=g > 1 puts each BOS at a slot = g - 1 (mod g) (see the module doc); it does not check
    that the groups have g tokens (`grid_violations` does). The data pipeline builds every
    training row with this function: the checks cost O(L) and the sort is a radix sort for
    group ids < 2**16.
    """
    if len(documents) != len(groups):
        raise UserError(
            f"got {len(documents)} documents but {len(groups)} group arrays; pass one group "
            "array per document"
        )
    if align < 1:
        raise UserError(f"align must be >= 1, got {align}")
    starts = bos_slots([len(doc) for doc in documents], align)
    total = (starts[-1] + len(documents[-1]) + 1) if len(documents) else 0
    if total > seq_len:
        raise UserError(
            f"documents need {total} slots (tokens + one BOS each"
            f"{f', BOS aligned to {align}' if align > 1 else ''}) but seq_len={seq_len}; "
            "split long documents or raise seq_len"
        )
    tokens = np.full(seq_len, pad_id, np.int32)
    positions = np.zeros(seq_len, np.int32)
    group_ids = np.zeros(seq_len, np.int32)
    segments = np.zeros(seq_len, np.int32)
    for doc_index, (doc, doc_groups) in enumerate(zip(documents, groups)):
        doc = np.asarray(doc, np.int32)
        doc_groups = np.asarray(doc_groups)
        if doc.ndim != 1 or doc_groups.shape != doc.shape:
            raise UserError(
                f"document {doc_index}: group ids have shape {doc_groups.shape} but the document "
                f"has shape {doc.shape}; give exactly one group id per token"
            )
        if doc_groups.size and (not np.issubdtype(doc_groups.dtype, np.integer) or doc_groups.min() < 0):
            raise UserError(
                f"document {doc_index}: group ids must be integers >= 0 (0 = context), got "
                f"min {doc_groups.min()} dtype {doc_groups.dtype}"
            )
        length = doc.size + 1
        keys = np.empty(length, np.int32)
        keys[0] = CONTEXT_GROUP
        keys[1:] = doc_groups
        small = length < 2**16 and (doc_groups.size == 0 or doc_groups.max() < 2**16)
        order = np.argsort(keys.astype(np.uint16) if small else keys, kind="stable").astype(np.int32)
        cursor = starts[doc_index]
        span = slice(cursor, cursor + length)
        tokens[cursor] = bos_id
        tokens[cursor + 1 : cursor + length] = doc
        tokens[span] = tokens[span][order]  # generation order inside the document
        positions[span] = order
        group_ids[span] = keys[order]
        segments[span] = doc_index + 1
    return {"tokens": tokens, "positions": positions, "groups": group_ids, "segment_ids": segments,
            "loss_mask": (group_ids > CONTEXT_GROUP).astype(np.int32)}


def bos_slots(lengths: Sequence[int], align: int = 1) -> list[int]:
    """The slot of each document's BOS: documents back to back, each BOS moved up to the next
    slot = align - 1 (mod align). lengths exclude BOS."""
    starts, cursor = [], 0
    for length in lengths:
        cursor += (align - 1 - cursor) % align
        starts.append(cursor)
        cursor += int(length) + 1
    return starts


def grid_violations(segment_ids: np.ndarray, groups: np.ndarray, align: int) -> np.ndarray:
    """Bool [..., N]: real slots whose visibility differs from the static block-causal mask of
    block size `align` and-ed with segment equality (see the module doc). All False means a
    static-mask kernel computes exactly the layout's attention. Padding (segment 0) is ignored."""
    segment_ids = np.asarray(segment_ids).reshape(-1, np.shape(segment_ids)[-1])
    groups = np.asarray(groups).reshape(segment_ids.shape)
    ranges = [np.asarray(r) for r in key_ranges(segment_ids, groups)]
    key_start, content_end, query_end = ranges
    n = segment_ids.shape[-1]
    idx = np.arange(n)
    seg_change = np.ones(segment_ids.shape, bool)
    seg_change[..., 1:] = segment_ids[..., 1:] != segment_ids[..., :-1]
    seg_end = _stretch_ends(seg_change)
    block = idx // align
    static_content_end = np.minimum(seg_end, (block + 1) * align)
    static_query_end = np.maximum(key_start, block * align)
    wrong = (content_end != static_content_end) | (query_end != static_query_end)
    return (wrong & (segment_ids != PAD_SEGMENT)).reshape(np.shape(segment_ids))


def stack_layouts(layouts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stacks per-row layouts into a batch with a leading axis."""
    return {name: np.stack([layout[name] for layout in layouts]) for name in FIELDS}


class KeyRanges(NamedTuple):
    """Per-row key ranges of a sorted layout, int32 [B, N]: content row i sees keys
    [key_start, content_end), query row i sees [key_start, query_end)."""

    key_start: jax.Array
    content_end: jax.Array
    query_end: jax.Array


def key_ranges(segment_ids_BxN, groups_BxN) -> KeyRanges:
    """The contiguous key range of every row of a SORTED layout (groups non-decreasing inside each
    segment, segments contiguous): what the block-skipping kernels take. Jittable; numpy input works
    (np.asarray the fields)."""
    segment_ids_BxN = jnp.asarray(segment_ids_BxN)
    groups_BxN = jnp.asarray(groups_BxN)
    n = segment_ids_BxN.shape[-1]
    idx = jnp.arange(n, dtype=jnp.int32)
    # A run is a maximal stretch of equal (segment, group); segments start where segment changes.
    new_segment = jnp.concatenate(
        [jnp.ones_like(segment_ids_BxN[:, :1], bool), segment_ids_BxN[:, 1:] != segment_ids_BxN[:, :-1]], 1)
    new_run = new_segment | jnp.concatenate(
        [jnp.zeros_like(groups_BxN[:, :1], bool), groups_BxN[:, 1:] != groups_BxN[:, :-1]], 1)
    key_start = jax.lax.cummax(jnp.where(new_segment, idx, 0), axis=1)
    query_end = jax.lax.cummax(jnp.where(new_run, idx, 0), axis=1)
    run_ends_here = jnp.concatenate([new_run[:, 1:], jnp.ones_like(new_run[:, :1])], 1)
    content_end = jax.lax.cummin(jnp.where(run_ends_here, idx + 1, n), axis=1, reverse=True)
    return KeyRanges(key_start, content_end, query_end)


def previous_slots(segment_ids_BxN, positions_BxN, groups_BxN):
    """For every slot of a sorted layout: the slot holding the previous position of its document,
    and whether that token is KNOWN to the slot's query row -- in an earlier group. Jittable.

    Returns (previous_BxN int32, known_BxN bool). known is False for BOS (position 0), padding, and
    wherever position i - 1 is in the same or a later group than i (the shifted query stream must
    not read it there: tests/test_model.py checks with gradients).
    """
    segment_ids_BxN = jnp.asarray(segment_ids_BxN)
    positions_BxN = jnp.asarray(positions_BxN).astype(jnp.int32)
    groups_BxN = jnp.asarray(groups_BxN)
    b, n = segment_ids_BxN.shape
    real_BxN = segment_ids_BxN > PAD_SEGMENT
    # a document fills the slots [start, start + L + 1) with its positions 0..L in some order
    start_BxN = key_ranges(segment_ids_BxN, groups_BxN).key_start
    home_BxN = jnp.where(real_BxN, start_BxN + positions_BxN, n)  # padding lands out of range: dropped
    rows_Bx1 = jnp.arange(b)[:, None]
    slot_of_BxN = jnp.zeros((b, n), jnp.int32).at[rows_Bx1, home_BxN].set(
        jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n)), mode="drop")
    previous_BxN = jnp.take_along_axis(slot_of_BxN, jnp.clip(home_BxN - 1, 0, n - 1), axis=1)
    earlier = jnp.take_along_axis(groups_BxN, previous_BxN, axis=1) < groups_BxN
    return previous_BxN, real_BxN & (positions_BxN > 0) & earlier


def _stretch_ends(starts: np.ndarray) -> np.ndarray:
    """For bool [..., N] marks of where stretches start: the (exclusive) end of each slot's stretch,
    found by scanning from the right for the next start."""
    n = starts.shape[-1]
    idx = np.arange(n)
    ends_here = np.zeros(starts.shape, bool)
    ends_here[..., :-1] = starts[..., 1:]
    ends_here[..., -1] = True
    flipped = np.flip(np.where(ends_here, idx + 1, n + 1), axis=-1)
    return np.flip(np.minimum.accumulate(flipped, axis=-1), axis=-1)


def unsort(values: np.ndarray, layout: dict[str, np.ndarray], segment: int) -> np.ndarray:
    """Values of one document (segment id) back in original position order (BOS first).

    values_NxD: one entry per slot of the row along the first axis, with any trailing shape
    (per-slot scalars [N], logits [N, V], hidden states [N, D]); the result is
    [L + 1, ...], un-permuted along the first axis only.
    """
    values_NxD = np.asarray(values)
    n = layout["segment_ids"].shape[-1]
    if values_NxD.ndim == 0 or values_NxD.shape[0] != n:
        raise UserError(f"values have shape {values_NxD.shape} but the layout row has {n} slots; pass "
                         f"one entry per slot along the first axis (shape [{n}, ...])")
    rows = np.flatnonzero(layout["segment_ids"] == segment)
    out_LxD = np.empty((rows.size,) + values_NxD.shape[1:], dtype=values_NxD.dtype)
    out_LxD[layout["positions"][rows]] = values_NxD[rows]
    return out_LxD
