"""Speculative rounds, kept on the device: one jitted round per full-model pass. Everything a
round decides -- each row's next positions, its draft source and count, the pending resampled
token, the acceptance rates, the text that copies and n-gram contexts are read from, the
fallback after a rejection, the EOS cut -- is computed inside the round's own call, over typed
pytrees (RoundState, Tables, Prompt, Commit, Queries, Verdict, RoundRecord below). Round 0
commits the prompt in the same pass (there is no separate prefill). The host only enqueues rounds
through decode/driver.py (as it does the static and dynamic plans' steps), looks two rounds back
for whether any row has positions left, and fetches the rounds' commits once at the end.

Exactness does not rest on these rules (any draft fixed before the target reads it keeps the
sampling exact): tests/test_speculative.py checks the samples against the one-at-a-time joint.
"""

from __future__ import annotations

import functools
import math
import weakref
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from a3jax.decode.ngram import MIN_RUN_CHANCE
from a3jax.decode.sampling import cut_at_eos


class RoundState(NamedTuple):
    """Per row, what the next round needs ([B, ...] arrays on the device).

    order: [B, S] int32 the order's positions (1-based), 0 past its end; S - 1 is the proposal
      table's discard slot. filled: [B, S] bool, the table holds a proposal for order index i made
      given every decided token. text: [B, T] int32 the document (index = position, 0 = BOS),
      -1 where undecided. stop: the order's end (earlier after a generated EOS); decided: order
      indices whose token is decided; pending: a resampled token not yet in the cache (-1: none);
      group_next: the next group id; rate: [B, 2] float32 running acceptance of the model's drafts
      and of copies; cut: 1-based position of the first generated EOS (NO_CUT: none); fallback:
      the table's proposal for the row's next position came from a rejection's fallback row."""

    order: jax.Array
    filled: jax.Array
    text: jax.Array
    stop: jax.Array
    decided: jax.Array
    pending: jax.Array
    group_next: jax.Array
    rate: jax.Array
    cut: jax.Array
    fallback: jax.Array


class Tables(NamedTuple):
    """The proposal table, per row and order index (the last slot discards): the draft
    distribution q [B, S, V] float32 and a token sampled from it, tok [B, S] int32."""

    q: jax.Array
    tok: jax.Array


class Prompt(NamedTuple):
    """The given tokens, committed by round 0 in the same pass as its first proposals (and drafts
    copied from them): [B, P] tokens, positions, valid and group ids (sampler._prefill's; every
    later round passes P = 0)."""

    tokens: jax.Array
    positions: jax.Array
    valid: jax.Array
    groups: jax.Array


class Commit(NamedTuple):
    """What a round writes into the cache, per row: the pending token (the last rejection's
    resampled token; [B] token, position, valid) in group `group` [B], then up to k drafts ([B, k]
    position, valid, table slot `index` of a model draft, and `copy_tokens` where `is_copy`: a
    point mass), draft j in group group + 1 + j."""

    pending: jax.Array
    pending_position: jax.Array
    pending_valid: jax.Array
    group: jax.Array
    positions: jax.Array
    valid: jax.Array
    index: jax.Array
    copy_tokens: jax.Array
    is_copy: jax.Array


class Queries(NamedTuple):
    """A round's query rows, [B, 3k] position and group: k verify rows (row j sees the drafts
    before j), k proposal rows (they see every draft) and k fallback rows (row j: the position
    after draft j, seen without it); the table slots the proposals go to, write_index [B, k], and
    fallback row j's, fallback_index [B, k] (the discard slot: none)."""

    positions: jax.Array
    groups: jax.Array
    write_index: jax.Array
    fallback_index: jax.Array


class Verdict(NamedTuple):
    """What a round's pass decided, per row: drafts accepted [B] (before the first rejection),
    the drafts [B, k], the token resampled at the rejection [B], the temperature-1 log-probs of
    the drafts [B, k] and of the resampled token [B], and whether the rejected draft's fallback
    proposal went into the table (fell [B])."""

    accepted: jax.Array
    drafts: jax.Array
    resampled: jax.Array
    draft_log_probs: jax.Array
    resampled_log_prob: jax.Array
    fell: jax.Array


class RoundRecord(NamedTuple):
    """What one round decided, per row: the committed tokens ([B, k]: rank in the order, token,
    position, valid, temperature-1 log-prob) and the drafts (offered, accepted, from a copy) of
    the rows that took part (active); lead: an n-gram round's first draft was the model's
    proposal (counted as the model's); fallback: the first draft was a fallback proposal."""

    rank: jax.Array
    tokens: jax.Array
    positions: jax.Array
    valid: jax.Array
    log_probs: jax.Array
    offered: jax.Array
    accepted: jax.Array
    copied: jax.Array
    lead: jax.Array
    active: jax.Array
    fallback: jax.Array


def drafts_worth(rate, room):
    """Drafts per row for `adaptive` plans: until the chance that every draft so far is accepted
    (rate ** n) falls below MIN_RUN_CHANCE, at least 1 and at most `room`."""
    rate = jnp.clip(rate, 1e-3, 0.999)
    want = jnp.ceil(math.log(MIN_RUN_CHANCE) / jnp.log(rate)).astype(jnp.int32)
    return jnp.minimum(room, jnp.maximum(1, want))


def copy_run(text, position, room, k: int, min_match: int, max_match: int):
    """jnp speculative.copy_continuation for every row at once: ([B, k] tokens, [B] count) of the
    continuation of the longest match of the max_match..min_match decided tokens before `position`
    elsewhere in the text (the nearest before it wins, then the nearest after), at most `room`."""
    b, t = text.shape
    back = jnp.arange(max_match, dtype=jnp.int32)
    suffix_at = position[:, None] - 1 - back[None, :]  # [B, M]
    suffix = jnp.take_along_axis(text, jnp.clip(suffix_at, 0, t - 1), 1)
    known_run = jnp.sum(jnp.cumprod((suffix_at >= 1) & (suffix >= 0), axis=1), axis=1).astype(jnp.int32)
    ends = jnp.arange(t, dtype=jnp.int32)  # a match ends just before `ends`
    before_end = ends[:, None] - 1 - back[None, :]  # [T, M]
    equal = ((before_end >= 0)[None] & (text[:, jnp.clip(before_end, 0, t - 1)] == suffix[:, None, :])
             & (back[None, :] < known_run[:, None])[:, None, :])
    length = jnp.sum(jnp.cumprod(equal, axis=2), axis=2).astype(jnp.int32)  # [B, T]
    candidate = (ends[None] >= min_match) & (ends[None] != position[:, None]) & (text >= 0)
    length = jnp.where(candidate, length, 0)
    best_length = jnp.max(length, axis=1)
    best = candidate & (length == best_length[:, None])
    before = best & (ends[None] < position[:, None])
    after = best & (ends[None] > position[:, None])
    begin = jnp.where(jnp.any(before, axis=1), jnp.max(jnp.where(before, ends[None], -1), axis=1),
                      jnp.min(jnp.where(after, ends[None], t), axis=1))
    run_at = begin[:, None] + jnp.arange(k, dtype=jnp.int32)[None, :]
    run = jnp.where(run_at < t, jnp.take_along_axis(text, jnp.clip(run_at, 0, t - 1), 1), -1)
    runs = jnp.cumprod((run >= 0) & (jnp.arange(k)[None, :] < room[:, None]), axis=1)
    found = (known_run >= min_match) & (best_length >= min_match)
    count = jnp.where(found, jnp.sum(runs, axis=1), 0).astype(jnp.int32)
    return jnp.where(jnp.arange(k)[None, :] < count[:, None], run, 0).astype(jnp.int32), count


_MIX = (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F)  # odd multipliers, one per context token


def _context_hash(contexts, xp):
    """uint32 hash of each row of int32 contexts [N, c], the same under numpy and jnp (xp)."""
    h = xp.zeros(contexts.shape[0], xp.uint32)
    for t in range(contexts.shape[1]):
        h = (h ^ contexts[:, t].astype(xp.uint32)) * xp.uint32(_MIX[t % len(_MIX)])
        h = h ^ (h >> xp.uint32(15))
    return h


_DEVICE_TABLES = weakref.WeakKeyDictionary()  # per NgramDrafter: built once (80 ms for the demo's)


def device_ngram_tables(drafter):
    """NgramDrafter.token_tables() as bucketed hash tables on the device, longest context first:
    ((bucket_start [H + 1], contexts [N + P, c], best [N + P], chance [N + P], probes [P]), ...)
    with H = the power of two >= N buckets, each bucket's contexts stored together and P the most
    any bucket holds (padding rows that match no context make every probe in bounds): a lookup is
    P row compares, no search loop (XLA's loops cost microseconds per iteration on a CPU)."""
    if drafter in _DEVICE_TABLES:
        return _DEVICE_TABLES[drafter]
    tables = []
    for c, (contexts, best, chance) in sorted(drafter.token_tables().items(), reverse=True):
        buckets = 1 << max(int(contexts.shape[0]) - 1, 1).bit_length()
        h = (_context_hash(contexts, np) & np.uint32(buckets - 1)).astype(np.int64)
        order = np.argsort(h, kind="stable")
        start = np.searchsorted(h[order], np.arange(buckets + 1)).astype(np.int32)
        probes = max(int(np.bincount(h, minlength=1).max()), 1)
        pad = np.full((probes, c), np.iinfo(np.int32).max, np.int32)
        tables.append((jnp.asarray(start), jnp.asarray(np.concatenate([contexts[order], pad])),
                       jnp.asarray(np.append(best[order], np.full(probes, -1)).astype(np.int32)),
                       jnp.asarray(np.append(chance[order], np.zeros(probes)).astype(np.float32)),
                       jnp.arange(probes, dtype=jnp.int32)))
    _DEVICE_TABLES[drafter] = tuple(tables)
    return _DEVICE_TABLES[drafter]


def ngram_next(tables, contexts):
    """The device lookup of NgramDrafter.next_tokens (its host twin, kept as the tests'
    reference): contexts int32 [B, W] (right-aligned, -1 = none) -> the
    most frequent next token of the longest context the tables know (-1: none) and its chance."""
    token = jnp.full(contexts.shape[0], -1, jnp.int32)
    share = jnp.zeros(contexts.shape[0], jnp.float32)
    for start, table, best, chance, probes in tables:  # the longest context first
        query = contexts[:, -table.shape[1]:]
        bucket = (_context_hash(query, jnp) & jnp.uint32(start.shape[0] - 2)).astype(jnp.int32)
        first, size = start[bucket], start[bucket + 1] - start[bucket]
        at = first[:, None] + probes[None, :]  # [B, P]
        match = (probes[None, :] < size[:, None]) & jnp.all(table[at] == query[:, None, :], axis=-1)
        at = jnp.take_along_axis(at, jnp.argmax(match, axis=1)[:, None], 1)[:, 0]
        found = (token < 0) & jnp.all(query >= 0, axis=1) & jnp.any(match, axis=1)
        token = jnp.where(found, best[at], token)
        share = jnp.where(found, chance[at], share)
    return token, share


def ngram_run(tables, width: int, text, position, lead, has_lead, room, k: int, min_chance: float):
    """jnp NgramDrafter.continuation for every row: ([B, k] drafts, [B] count), the model's exact
    proposal `lead` first where has_lead (the table continues it), then chained table drafts for
    the positions after it while the product of their chances stays >= min_chance."""
    b, t = text.shape
    rows = jnp.arange(b)
    text = jnp.where(has_lead[:, None] & (jnp.arange(t)[None, :] == position[:, None]),
                     lead[:, None], text)
    start = position + has_lead
    back = jnp.arange(width, dtype=jnp.int32)
    at = start[:, None] - 1 - back[None, :]
    tokens = text[rows[:, None], jnp.clip(at, 0, t - 1)]
    known = jnp.cumprod((at >= 1) & (tokens >= 0), axis=1).astype(bool)
    context = jnp.where(known, tokens, -1)[:, ::-1]  # right-aligned: the token just before last
    budget = room - has_lead
    drafts = jnp.zeros((b, k), jnp.int32)
    count = jnp.zeros(b, jnp.int32)
    chance = jnp.ones(b, jnp.float32)
    going = budget > 0
    for step in range(k):
        token, share = ngram_next(tables, context)
        take = going & (step < budget) & (token >= 0) & ((count == 0) | (chance * share >= min_chance))
        drafts = drafts.at[:, step].set(jnp.where(take, token, 0))
        count = count + take
        chance = jnp.where(take, chance * share, chance)
        context = jnp.where(take[:, None], jnp.concatenate([context[:, 1:], token[:, None]], 1), context)
        going = take
    # the lead in front of the table's drafts
    out = jnp.where(has_lead[:, None], jnp.concatenate([lead[:, None], drafts[:, :-1]], 1), drafts)
    return out, count + has_lead


@functools.lru_cache(maxsize=16)
def device_round(verify, k: int, source_mode: str, adaptive: bool, one_pass: bool, min_match: int, max_match: int,
                 ngram_width: int = 0, min_chance: float = MIN_RUN_CHANCE):
    """The jitted round: plan, `verify` (speculative._verify: commit, verify, propose), then the
    bookkeeping. Round 0 also commits the `prompt` (nothing is proposed yet: its pass proposes
    the first positions, and verifies drafts copied from the prompt where the source copies).
    Returns (cache, tables, state, record, whether any row has positions left). `one_pass`: the
    verify pass has fallback rows, and a rejection keeps the table's later proposals (drafts, if
    stale ones: any draft fixed before the target reads it keeps the sampling exact) with the
    rejected draft's fallback proposal first, so every round drafts; otherwise (chained
    proposals) a rejection clears the table and the next round only proposes. draft=ngram:
    `ngrams` are device_ngram_tables(drafter), ngram_width its max_order - 1 and min_chance the
    chance a chain of table drafts must keep."""

    @functools.partial(jax.jit, donate_argnums=(1, 2, 3))
    def round_(weights, cache, tables: Tables, state: RoundState, prompt: Prompt, key, round_index, eos_id,
               ngrams=()):
        order, filled, text, stop, decided, pending, group_next, rate, cut, fell_before = state
        b, slots = order.shape
        discard = slots - 1
        rows = jnp.arange(b)[:, None]
        j = jnp.arange(k, dtype=jnp.int32)[None, :]
        take = lambda x, at: jnp.take_along_axis(x, jnp.clip(at, 0, discard), 1)  # noqa: E731

        # the plan: which positions to draft, from where, and which to propose
        active = decided < stop
        start = decided
        room = jnp.clip(stop - start, 0, k)
        pend_valid = active & (pending >= 0)
        pend_tok = jnp.where(pend_valid, pending, 0)
        pend_pos = jnp.where(pend_valid, take(order, start[:, None] - 1)[:, 0], 0)
        model_ready = take(filled, start[:, None])[:, 0]
        lead = jnp.zeros(b, bool)  # n-gram rounds: the model's proposal is the first draft
        if source_mode == "model":
            copied, copy_count = jnp.zeros((b, k), jnp.int32), jnp.zeros(b, jnp.int32)
        elif source_mode == "ngram":
            lead = active & model_ready
            copied, copy_count = ngram_run(ngrams, ngram_width, text, take(order, start[:, None])[:, 0],
                                           take(tables.tok, start[:, None])[:, 0], lead, room, k, min_chance)
        else:
            copied, copy_count = copy_run(text, take(order, start[:, None])[:, 0], room, k, min_match, max_match)
        has_copy = active & (copy_count > 0)
        use_copy = has_copy if source_mode in ("copy", "ngram") else (
            has_copy & (~model_ready | (rate[:, 1] >= rate[:, 0])))
        if adaptive and source_mode != "ngram":
            want = drafts_worth(jnp.where(use_copy, rate[:, 1], rate[:, 0]), room)
        else:
            want = room
        ready = jnp.sum(jnp.cumprod(take(filled, start[:, None] + j) & (j < want[:, None]), axis=1), axis=1)
        count = jnp.where(active, jnp.where(use_copy, jnp.minimum(want, copy_count), ready), 0).astype(jnp.int32)
        draft_valid = j < count[:, None]
        is_copy = draft_valid & use_copy[:, None] & ~(lead[:, None] & (j == 0))  # the lead keeps its q
        draft_index = jnp.where(draft_valid, start[:, None] + j, discard)
        draft_pos = jnp.where(draft_valid, take(order, start[:, None] + j), 0)
        g = group_next[:, None]
        after = start[:, None] + count[:, None] + j  # proposals for the positions after the drafts
        propose = active[:, None] & (after < stop[:, None])
        # fallback row j: the position after draft j, seeing what verify row j sees
        behind = start[:, None] + 1 + j
        fall = draft_valid & (behind < stop[:, None])
        query_pos = jnp.concatenate([draft_pos, jnp.where(propose, take(order, after), 0),
                                     jnp.where(fall, take(order, behind), 0)], 1)
        query_groups = jnp.concatenate([jnp.where(draft_valid, g + 1 + j, 0),
                                        jnp.where(propose, g + 1 + count[:, None], 0),
                                        jnp.where(fall, g + 1 + j, 0)], 1)
        write_index = jnp.where(propose, after, discard)
        commit = Commit(pending=pend_tok, pending_position=pend_pos, pending_valid=pend_valid,
                        group=jnp.where(active, group_next, 0), positions=draft_pos, valid=draft_valid,
                        index=draft_index, copy_tokens=jnp.where(is_copy, copied, 0), is_copy=is_copy)
        queries = Queries(positions=query_pos, groups=query_groups, write_index=write_index,
                          fallback_index=jnp.where(fall, behind, discard))
        cache, tables, verdict = verify(weights, cache, tables, prompt, commit, queries, key, round_index)
        n, drafts, resampled, fell = verdict.accepted, verdict.drafts, verdict.resampled, verdict.fell

        # the bookkeeping: what was decided, and the state for the next round
        written = write_index[:, :1] if source_mode == "ngram" else write_index
        filled = filled.at[rows, written].set(True).at[:, discard].set(False)
        accepted = jnp.minimum(n, count).astype(jnp.int32)
        drafted = count > 0
        took = jnp.where(drafted, accepted + (accepted < count), 0)
        seen = 0.7 * rate + 0.3 * (accepted / jnp.maximum(count, 1)).astype(rate.dtype)[:, None]
        source = jnp.stack([drafted & ~use_copy, drafted & use_copy], 1)
        rate = jnp.where(source, seen, rate)
        rejected = took > accepted
        valid = j < took[:, None]
        tokens = jnp.where(j < accepted[:, None], drafts, resampled[:, None]).astype(jnp.int32)
        positions = jnp.where(valid, take(order, start[:, None] + j), 0)
        log_probs = jnp.where(j < accepted[:, None], verdict.draft_log_probs, verdict.resampled_log_prob[:, None])
        record = RoundRecord(rank=start[:, None] + 1 + j, tokens=tokens, positions=positions, valid=valid,
                             log_probs=log_probs, offered=count, accepted=accepted, copied=use_copy & drafted,
                             lead=lead & drafted, active=active,
                             fallback=fell_before & drafted & ~(use_copy & ~lead))
        text = text.at[rows, jnp.where(valid, positions, text.shape[1])].set(tokens, mode="drop")
        decided = start + took
        pending = jnp.where(rejected, resampled.astype(jnp.int32), jnp.where(active, -1, pending))
        if not one_pass:  # proposed given drafts that are now rejected: the next round proposes afresh
            filled = filled & ~rejected[:, None]
        filled = filled.at[rows, jnp.where(fell, decided, discard)[:, None]].set(True).at[:, discard].set(False)
        cut = cut_at_eos(cut, valid & (tokens == eos_id), positions)
        # nothing after a generated EOS is generated: the order keeps its decided part and, after
        # it, only the positions before the cut (in their order)
        index = jnp.arange(slots, dtype=jnp.int32)[None, :]
        keep = jnp.where(index < decided[:, None], 0,
                         jnp.where((index < stop[:, None]) & (order <= cut[:, None]), 1, 2))
        order = jnp.take_along_axis(order, jnp.argsort(keep, axis=1, stable=True), 1)
        stop = jnp.sum(keep < 2, axis=1).astype(jnp.int32)
        order = jnp.where(index < stop[:, None], order, 0)
        state = RoundState(order=order, filled=filled, text=text, stop=stop, decided=decided, pending=pending,
                           group_next=(group_next + jnp.where(active, 1 + count, 0)).astype(jnp.int32), rate=rate,
                           cut=cut, fallback=jnp.where(active, fell, fell_before))
        return cache, tables, state, record, jnp.any(decided < stop)

    return round_
