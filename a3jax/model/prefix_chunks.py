"""Static prefix chunking for the dense attention backends (`xla`, `cudnn`).

Dense masked attention scores every row against all N keys. In a SORTED layout (documents
contiguous, groups non-decreasing inside each) a row never sees keys far to its right, so the
rows can be cut into C static chunks [r0, r1) that each score only the key prefix [0, r1):
  * query stream, always exact: query row i sees keys j with group(j) < group(i), all of which
    sit before the start of i's group, so j < i < r1.
  * content stream, exact when a static group size g is known and the layout is GRID ALIGNED
    (every real group inside one aligned block [m*g, (m+1)*g), layout.build_layout(align=g)) and
    every r1 is a multiple of g: content row i sees at most to the end of its block,
    j < ceil_g(i + 1) <= r1. Without g one group may reach to N, so the content stream stays
    one full-width call.
Padding (segment 0) is the one exception to the grid rule: padding rows all share one
segment, so with g a padding content row sees only the padding inside its prefix. Real rows never
see padding and padding carries no loss, so the loss and all gradients of the model are unchanged;
only the (unused) content outputs of padding rows can differ from the full dense call.

FLOPs: with equal chunks, chunk c (1..C) scores N/C rows against c*N/C keys, in all
N^2 (C + 1) / (2C): the query stream costs (1 + 1/C)/2 of the dense work (5/8 at C = 4), and so
does the content stream when g is known (else it costs the full N^2).

Calls: rows of both streams that share a key prefix run as ONE dense call (content rows first),
so there are C calls: with g, call c holds content and query rows [r0, r1); without g the
full-width content rows join the last query chunk (its prefix is all N keys). C = 1 is exactly the
unchunked call over the concatenated masks.
"""

from __future__ import annotations

import math
import numbers

import jax.numpy as jnp

from a3jax.errors import UserError
from a3jax.model.dense_attention import visibility_masks

ROW_ALIGN = 8  # chunk boundaries are multiples of this (slice- and tile-friendly)


def chunk_boundaries(n: int, chunks: int, group_size: int | None = None) -> tuple[int, ...]:
    """Static chunk ends (r1 of each chunk, the last is n), as equal as possible.

    Every end but the last is a multiple of the unit lcm(group_size, 8) (8 without a group size);
    when n is too short for `chunks` chunks of at least one unit, there are fewer chunks.
    """
    if not isinstance(chunks, numbers.Integral) or chunks < 1:
        raise UserError(f"chunks must be an integer >= 1, got {chunks!r}")
    if group_size is not None and (not isinstance(group_size, numbers.Integral) or group_size < 1):
        raise UserError(f"group_size must be None or an integer >= 1, got {group_size!r}")
    n, chunks, group_size = int(n), int(chunks), (int(group_size) if group_size is not None else None)
    unit = math.lcm(group_size, ROW_ALIGN) if group_size else ROW_ALIGN
    chunks = max(1, min(chunks, n // unit))
    ends = []
    for c in range(1, chunks):
        # c * n / chunks rounded (half up) to a multiple of unit, in integers
        end = (2 * c * n + chunks * unit) // (2 * chunks * unit) * unit
        if (ends[-1] if ends else 0) < end < n:
            ends.append(end)
    ends.append(n)
    return tuple(ends)


def plan_calls(n: int, streams, chunks: int, group_size: int | None = None):
    """The dense calls as [(prefix_end, [(stream, r0, r1), ...]), ...]; stream 0 = content,
    1 = query. Pieces sharing a prefix end form one call, content pieces first."""
    ends = chunk_boundaries(n, chunks, group_size)
    spans = list(zip((0,) + ends[:-1], ends))
    pieces = []
    if streams[0]:
        pieces += [(0, r0, r1) for r0, r1 in (spans if group_size else [(0, n)])]
    if streams[1]:
        pieces += [(1, r0, r1) for r0, r1 in spans]
    calls: dict[int, list] = {}
    for piece in pieces:
        calls.setdefault(piece[2], []).append(piece)
    return sorted(calls.items())


def prefix_chunked_streams(dense_fn, streams, q, k, v, segment_ids, groups, *, chunks, group_size=None):
    """Same result (values and gradients) as dense_fn over the full visibility masks.

    dense_fn(q_BxRxHxD, k_BxMxKxD, v_BxMxKxD, mask_BxRxM) -> [B, R, H, D], zero rows that see nothing.
    streams = (content_used: bool, query_used: bool); q is [B, S, H, D] with S = N * (number of used
    streams), content rows first then query rows. k, v [B, N, Hkv, D]; segment_ids, groups int32 [B, N].
    chunks: static int >= 1; group_size: static int or None.

    The layout must be sorted; with group_size=g it must also be grid aligned to g (see the module
    doc, which also states the one exception: content outputs of padding rows). Nothing here
    checks the layout (layout.grid_violations does, on the host).
    """
    content_used, query_used = bool(streams[0]), bool(streams[1])
    n = k.shape[1]
    n_streams = content_used + query_used
    if n_streams == 0:
        raise UserError("streams=(False, False): at least one stream must be used")
    if q.shape[1] != n * n_streams:
        raise UserError(f"q has {q.shape[1]} rows but {n_streams} stream(s) of {n} keys need {n * n_streams}")
    content_mask, query_mask = visibility_masks(segment_ids, groups)
    masks = [m for m, used in zip((content_mask, query_mask), (content_used, query_used)) if used]
    calls = plan_calls(n, (content_used, query_used), chunks, group_size)
    if len(calls) == 1:  # one chunk: the plain unchunked call
        return dense_fn(q, k, v, _rows(masks))
    row_offset = {0: 0, 1: n if content_used else 0}  # where each stream's rows start in q
    mask_of = {0: content_mask, 1: query_mask}
    outputs = {}
    for end, pieces in calls:
        q_rows = _rows([q[:, row_offset[s] + r0:row_offset[s] + r1] for s, r0, r1 in pieces])
        mask_rows = _rows([mask_of[s][:, r0:r1, :end] for s, r0, r1 in pieces])
        out = dense_fn(q_rows, k[:, :end], v[:, :end], mask_rows)
        start = 0
        for s, r0, r1 in pieces:
            outputs[(s, r0)] = out[:, start:start + r1 - r0]
            start += r1 - r0
    ordered = [outputs[key] for key in sorted(outputs)]  # content before query, rows in order
    return _rows(ordered)


def _rows(parts):
    return jnp.concatenate(parts, 1) if len(parts) > 1 else parts[0]
