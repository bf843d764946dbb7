"""Exact parallel decoding: any-subset speculative sampling from one A3 model (Guo & Ermon 2025),
with drafts from the model itself and from the known text.

The target is the model's FINEST joint along an order o_1, o_2, ... of the unknown positions: one
position at a time, p(x_{o_j} | everything committed before). Every ROUND is ONE model call
against the exact KV cache (decode/cache.py) that
  commits  the token resampled at the last round's rejection (if any) and k drafts d_1..d_k of the
           next positions, as singleton groups;
  verifies each draft: the query row of o_j sees the committed tokens and d_<j only
           (cache.extend's query_groups), giving the target's conditional p_j;
  proposes the next positions: query rows that see every draft, whose distributions (and one
           sampled token each) go into a per-position proposal table for later rounds.
Draft d_j is accepted with probability min(1, p_j(d_j) / q_j(d_j)); at the first rejection a token
is sampled from the normalised max(0, p_j - q_j) and the round ends (its token is committed by the
next round's call). This is standard speculative sampling: for ANY draft distribution q_j that is
fixed before the target is read -- point masses included -- every committed token follows p_j
exactly. Each row of the cache holds only its prompt and decided tokens: a round moves the row's
length back over its rejected drafts, and the next round's call writes over them (so the cache,
and every call's attention, is as short as the text).

Draft sources (`draft=`):
  model  the proposal table: the distribution the model computed for that position in a proposal
         row given every token decided so far, and a token sampled from it (after a rejection the
         table is proposed afresh given the resampled token: a round that drafts nothing);
  copy   a point mass on the text's own continuation wherever the text offers one: the longest
         earlier (or later: the right context of a gap) match of the last 2-8 decided tokens,
         followed for up to k tokens (order 'ar' only; code repeats identifiers); model drafts
         elsewhere;
  auto   copy where a match exists and copying has been accepted at least as often as the model's
         drafts (or no fresh proposal is at hand), else model;
  ngram  point masses from the most frequent continuations of a token corpus (decode/ngram.py,
         the model's training text), chained on each other and on the model's exact proposal for
         the next position where one is at hand (accepted for sure): one pass per round, however
         many positions it drafts (order 'ar' only).
Chained proposals (a model with the shifted query stream, model.query_input=shift, in the order
'ar'): the proposal of position p + 1 is re-run, in the same call, with the token just proposed
for p as its previous-token input, one row per pass, so drafts follow each other the way subword
tokens do (the next-but-one token depends on the next). Unchained proposals are the model's
marginals given the decided tokens only; on the demo's subword model chaining raised the model
drafts' acceptance from about 0.35 to 0.69 (BENCHMARKS.md).
A round whose proposals after the first are not read from its verify pass (chained, n-gram)
computes only the first proposal row there.
With `adaptive`, each row drafts as many positions as its source's running acceptance rate a makes
worthwhile (until a^k < 1/4), at most the plan's k. Temperature, top-k and top-p shape p and q the
same way (sampling.shaped_probs); the reported log-probs are the model's (temperature 1,
unfiltered) under the singleton grouping actually used (GenerateResult.groups).

Where the rounds run: every decision between two rounds is made in the round's own call
(decode/rounds.py; the n-gram tables go to the device as hash tables) and the host never waits
for the round it just sent. The host loop below (one transfer per round) is the reference the
device rounds are tested against (same seed, same tokens); DEVICE_SOURCES = () selects it.
"""

from __future__ import annotations

import functools
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from a3jax.decode import cache as cache_lib
from a3jax.decode import rounds
from a3jax.decode.ngram import MIN_RUN_CHANCE
from a3jax.decode.sampling import eos_start, shaped_probs
from a3jax.decode.sampling import sample_probs as _sample
from a3jax.errors import UserError

SOURCES = ("model", "copy", "ngram")
# the draft modes whose rounds run on the device (decode/rounds.py); the others (none) and the
# tests' reference run through the host loop
DEVICE_SOURCES = ("model", "copy", "auto", "ngram")
MIN_MATCH, MAX_MATCH = 2, 8  # copy drafts: the suffix lengths searched, longest first


def _store(table, index_BxR, values):
    """table [B, L + 1, ...] with values [B, R, ...] written at index (L: the discard slot)."""
    rows = jnp.arange(table.shape[0])[:, None]
    return table.at[rows, index_BxR].set(values.astype(table.dtype))


@functools.lru_cache(maxsize=16)
def _calls(model_def, temperature: float, top_k: int, top_p: float, chain: bool = False, narrow: bool = False):
    """The jitted prefill and round, and the round's body unjitted (for decode/rounds.py). A
    round's verify pass holds the k verify rows and k proposal rows, or with `narrow` (chained
    proposals, n-gram drafts: only the next position's proposal is read from it) one proposal row;
    `chain` computes proposals 2..k in their own passes."""
    shape = functools.partial(shaped_probs, temperature=temperature, top_k=top_k, top_p=top_p)

    @functools.partial(jax.jit, donate_argnums=(1, 2, 3))
    def prefill(params, cache, table_q, table_tok, tokens, positions, valid, groups, query_positions,
                write_index, key):
        """Commits the prompt; the first proposals into the table."""
        cache, logits = cache_lib.extend(model_def.bind(params), cache, tokens, positions, valid,
                                         query_positions, groups)
        probs = shape(logits)
        proposed = _sample(key, probs)
        return cache, _store(table_q, write_index, probs), _store(table_tok, write_index, proposed), proposed

    def verify(params, cache, table_q, table_tok, pending, pending_position, pending_valid, copy_tokens, is_copy,
               draft_index, draft_positions, draft_valid, groups, query_positions, query_groups, write_index, key,
               round_index):
        """One round: commit the pending token and the drafts, verify, propose. Returns (cache,
        tables, accepted count, drafts, resampled token, temperature-1 log-probs of the drafts and
        of the resampled token, the proposed tokens)."""
        b, k = draft_valid.shape
        rows = jnp.arange(b)[:, None]
        drafts = jnp.where(is_copy, copy_tokens, table_tok[rows, draft_index])
        draft_q = jnp.where(is_copy[..., None], jax.nn.one_hot(drafts, table_q.shape[-1], dtype=jnp.float32),
                            table_q[rows, draft_index])
        start = cache.length  # [B]: each row's next free slot

        def commit(pending_value, drafted):  # the pending token (if any), then the drafts: no hole
            both = jnp.concatenate([pending_value[:, None], drafted], 1)
            return jnp.where(pending_valid[:, None], both, jnp.roll(both, -1, axis=1))

        tokens, positions = commit(pending, drafts), commit(pending_position, draft_positions)
        valid, groups = commit(pending_valid, draft_valid), commit(groups[:, 0], groups[:, 1:])
        width = k + (1 if narrow else query_positions.shape[1] - k)  # verify rows, then proposal rows
        cache, logits = cache_lib.extend(model_def.bind(params), cache, tokens, positions, valid,
                                         query_positions[:, :width], groups, query_groups[:, :width])
        probs = shape(logits)
        p = probs[:, :k]
        accept_key, resample_key, draft_key = jax.random.split(jax.random.fold_in(key, round_index), 3)
        p_d = jnp.take_along_axis(p, drafts[..., None], -1)[..., 0]
        q_d = jnp.take_along_axis(draft_q, drafts[..., None], -1)[..., 0]
        # float32 whatever jax_enable_x64 says: the same seed accepts the same drafts either way
        uniform = jax.random.uniform(accept_key, drafts.shape, jnp.float32)
        accepted = (uniform * q_d < p_d) | ~draft_valid  # invalid (beyond the round) never stop the run
        n = jnp.sum(jnp.cumprod(accepted.astype(jnp.int32), axis=1), axis=1)
        n = jnp.minimum(n, jnp.sum(draft_valid, axis=1))
        at = jnp.minimum(n, k - 1)[:, None, None]  # the rejected draft's index (when n < drafts offered)
        residual = jnp.maximum(jnp.take_along_axis(p, at, 1)[:, 0] - jnp.take_along_axis(draft_q, at, 1)[:, 0], 0.0)
        mass = jnp.sum(residual, -1, keepdims=True)
        residual = jnp.where(mass > 0, residual / jnp.maximum(mass, 1e-30), jnp.take_along_axis(p, at, 1)[:, 0])
        resampled = _sample(resample_key, residual)
        log_p = jax.nn.log_softmax(logits[:, :k].astype(jnp.float32), -1)
        draft_log_p = jnp.take_along_axis(log_p, drafts[..., None], -1)[..., 0]
        resampled_log_p = jnp.take_along_axis(jnp.take_along_axis(log_p, at, 1)[:, 0], resampled[:, None], -1)[:, 0]
        probs = probs[:, k:]  # the proposals
        proposed = _sample(draft_key, probs)
        if chain:  # proposal j + 1 reads proposal j as its previous token (shifted query stream)
            proposed, probs = _chain(params, cache, proposed, probs, query_positions[:, k:], query_groups[:, k:],
                                     draft_key)
        index = write_index[:, k:k + probs.shape[1]]
        table_q = _store(table_q, index, probs)
        table_tok = _store(table_tok, index, proposed)
        # each row keeps its pending token and accepted drafts; the next call writes over the rest
        decided = pending_valid.astype(jnp.int32) + jnp.minimum(n, jnp.sum(draft_valid, axis=1))
        cache = cache._replace(length=start + decided)
        return cache, table_q, table_tok, n, drafts, resampled, draft_log_p, resampled_log_p, proposed

    def _chain(params, cache, proposed, probs, query_positions, query_groups, key):
        """Chained proposals: proposal j + 1 (position P_{j+1}) computed in its own pass with the
        token sampled for P_j as its previous-token input (when P_j = P_{j+1} - 1; otherwise the
        row reads the cache like the verify pass's rows). Any proposal distribution keeps the
        sampling exact (it is fixed before the target reads it); these follow the text's
        dependencies. proposed [B, 1] and probs [B, 1, V] (the verify pass's first proposal) grow
        to the width of query_positions."""
        model = model_def.bind(params)
        b, width = query_positions.shape
        empty_tokens = jnp.zeros((b, 0), jnp.int32)
        empty_valid = jnp.zeros((b, 0), bool)
        tokens, dists = [proposed[:, 0]], [probs[:, 0]]
        for j in range(1, width):
            chained = query_positions[:, j] == query_positions[:, j - 1] + 1
            _, logits = cache_lib.extend(model, cache, empty_tokens, empty_tokens, empty_valid,
                                         query_positions[:, j:j + 1], empty_tokens, query_groups[:, j:j + 1],
                                         (tokens[-1][:, None], chained[:, None]))
            key, sub = jax.random.split(key)
            dists.append(shape(logits)[:, 0])
            tokens.append(_sample(sub, dists[-1]))
        return jnp.stack(tokens, 1), jnp.stack(dists, 1)

    return prefill, jax.jit(verify, donate_argnums=(1, 2, 3)), verify


def _order(plan, unknown: np.ndarray, rng, user_groups) -> np.ndarray:
    """The unknown positions (1-based) in the plan's order."""
    if plan.order == "ar":
        return np.sort(unknown)
    if plan.order == "random":
        return unknown[rng.permutation(unknown.size)]
    ranks = np.asarray(user_groups)[unknown - 1]  # 'groups': the caller's ids rank the positions
    return unknown[np.lexsort((unknown, ranks))]


def copy_continuation(text: np.ndarray, position: int, k: int) -> np.ndarray:
    """Up to k tokens continuing the longest match of the MAX_MATCH..MIN_MATCH tokens before
    `position` elsewhere in `text` (int [L + 1], index = document position, -1 = unknown): the
    nearest match before `position` wins, then the nearest after it (the right-hand context).
    One vectorised pass over the text (it runs for every row of every round)."""
    known_run = 0  # decided tokens right before `position` (BOS, index 0, never part of the suffix)
    while known_run < MAX_MATCH and position - known_run - 1 >= 1 and text[position - known_run - 1] >= 0:
        known_run += 1
    if known_run < MIN_MATCH:
        return text[:0]
    ends = np.arange(MIN_MATCH, text.size)  # candidate matches end just before `ends`
    ends = ends[(ends != position) & (text[ends] >= 0)]
    back = np.arange(known_run)  # compare text[e - 1 - t] with text[position - 1 - t]
    index = ends[:, None] - 1 - back[None, :]
    equal = (index >= 0) & (text[np.maximum(index, 0)] == text[position - 1 - back][None, :])
    length = np.cumprod(equal, axis=1).sum(axis=1)
    if not ends.size or length.max() < MIN_MATCH:
        return text[:0]
    best = ends[length == length.max()]
    before, after = best[best < position], best[best > position]
    begin = int(before.max()) if before.size else int(after.min())
    run = text[begin:begin + k]
    stop = np.flatnonzero(run < 0)
    return run[: stop[0]] if stop.size else run


def _drafts_worth(rate: float, k_max: int) -> int:
    """Draft until the chance that all drafts so far are accepted falls below MIN_RUN_CHANCE."""
    rate = min(max(rate, 1e-3), 0.999)
    return int(min(k_max, max(1, math.ceil(math.log(MIN_RUN_CHANCE) / math.log(rate)))))


def generate_speculative(model_def, params, cfg, documents, known, plan, sampling, *, bos_id, pad_id, eos_id,
                         groups, prefill, output, progress, drafter=None):
    """The speculative driver (see the module docstring). `prefill` is sampler._prefill's
    (tokens, positions, valid, groups); `output` a sampler._Output that records the commits;
    `drafter` a decode.ngram.NgramDrafter (draft=ngram). Returns (output, n_calls, stats)."""
    batch = len(documents)
    unknown = [np.flatnonzero(~m) + 1 for m in known]
    orders = [_order(plan, u, np.random.default_rng([int(sampling.seed), b]),
                     None if groups is None else groups[b]) for b, u in enumerate(unknown)]
    k_max = plan.k
    source_mode = plan.draft if plan.order == "ar" else "model"  # copying follows the text left to right
    if source_mode == "ngram" and drafter is None:
        raise UserError(f"plan {sampling.plan!r} drafts from a token corpus: pass drafter=NgramDrafter(...) "
                        "(a3jax sample and bench decode build it from the model's training data)")
    # chained model proposals cost a pass per drafted position; n-gram rounds are one pass
    chain = bool(cfg.shifted_query and plan.order == "ar" and source_mode != "ngram")
    narrow = chain or source_mode == "ngram"  # only the next position's proposal comes from the verify pass
    prefill_call, round_call, verify = _calls(model_def, float(sampling.temperature), int(sampling.top_k),
                                              float(sampling.top_p), chain, narrow)
    passes_per_round = 1 + (k_max - 1 if chain else 0)  # sequential passes through the layer stack
    stored = 1 if narrow and not chain else k_max  # proposals a round writes into the table
    tokens0, positions0, valid0, groups0 = prefill
    longest = max(o.size for o in orders)
    width = k_max + 1  # per round: the pending token + k drafts
    # a row's slots hold its prompt and its decided tokens only (a round's rejected drafts are
    # written over by the next round), and a round writes `width` slots after them
    capacity = tokens0.shape[1] + longest + width
    cache = cache_lib.init_cache(cfg, batch, capacity, per_row=True)
    length = np.full(batch, tokens0.shape[1], np.int64)  # host copy of cache.length: no device sync
    vocab = cfg.vocab_size
    slots = longest + 1  # order indices 0..longest-1, and a discard slot
    table_q = jnp.zeros((batch, slots, vocab), jnp.float32)
    table_tok = jnp.zeros((batch, slots), jnp.int32)
    proposal = np.zeros((batch, slots), np.int64)  # host copy of table_tok (n-gram drafts continue it)
    filled = np.zeros((batch, slots), bool)
    order_mat = np.zeros((batch, longest + 1), np.int32)
    for b, order in enumerate(orders):
        order_mat[b, :order.size] = order
    stop = np.array([o.size for o in orders], np.int64)  # the order's end (earlier after a generated EOS)
    decided = np.zeros(batch, np.int64)  # order positions whose token is decided (in the cache, or pending)
    pending = np.full(batch, -1, np.int64)  # a resampled token not yet in the cache (at order[decided - 1])
    group_next = groups0.max(axis=1).astype(np.int64) + 1
    text = [np.concatenate([[bos_id], np.where(m, d, -1)]).astype(np.int64) for d, m in zip(documents, known)]
    rate = {s: np.full(batch, 0.6) for s in SOURCES}  # running acceptance per source and row
    stats = {"calls": 0, "passes": 1, "offered": np.zeros(k_max, np.int64), "accepted": np.zeros(k_max, np.int64),
             "row_calls": np.zeros(batch, np.int64),
             "by_source": {s: {"offered": 0, "accepted": 0, "rounds": 0} for s in SOURCES}}
    key = jax.random.key(int(sampling.seed))

    # the prefill: the prompt, and proposals for the first k_max positions
    key, sub = jax.random.split(key)
    first = np.zeros((batch, k_max), np.int32)
    first_index = np.full((batch, k_max), slots - 1, np.int32)
    for b in range(batch):
        for j in range(min(k_max, stop[b])):
            first[b, j], first_index[b, j] = order_mat[b, j], j
            filled[b, j] = True
    cache, table_q, table_tok, proposed = prefill_call(params, cache, table_q, table_tok, *prefill, first,
                                                       first_index, sub)
    proposal[np.arange(batch)[:, None], first_index] = np.asarray(proposed)
    stats["calls"] += 1
    stats["row_calls"] += stop > 0
    bar = tqdm(total=int(stop.sum()), desc="decode", unit="tok", disable=not progress, file=sys.stderr)
    if source_mode in DEVICE_SOURCES:
        ngrams = rounds.device_ngram_tables(drafter) if source_mode == "ngram" else ()
        round_call = rounds.device_round(verify, k_max, stored, source_mode, bool(plan.adaptive), MIN_MATCH, MAX_MATCH,
                                         drafter.max_order - 1 if source_mode == "ngram" else 0)
        cut, eos = eos_start(batch, eos_id, sampling.stop_at_eos)
        state = rounds.RoundState(
            order=order_mat, filled=filled, text=_pad_text(text), stop=stop.astype(np.int32),
            decided=decided.astype(np.int32), pending=pending.astype(np.int32), group_next=group_next.astype(np.int32),
            rate=np.full((batch, 2), 0.6, np.float32), cut=cut)
        _device_rounds(functools.partial(round_call, ngrams=ngrams), params, cache, table_q, table_tok,
                       jax.device_put(state), key, eos, 2 * longest + 3, output, stats, passes_per_round, bar,
                       "ngram" if source_mode == "ngram" else "copy")
        bar.close()
        return output, stats["calls"], stats
    while (decided < stop).any():
        pend_tok = np.zeros(batch, np.int32)
        pend_pos = np.zeros(batch, np.int32)
        pend_valid = np.zeros(batch, bool)
        copy_tok = np.zeros((batch, k_max), np.int32)
        is_copy = np.zeros((batch, k_max), bool)
        draft_index = np.full((batch, k_max), slots - 1, np.int32)
        draft_pos = np.zeros((batch, k_max), np.int32)
        draft_valid = np.zeros((batch, k_max), bool)
        commit_groups = np.zeros((batch, width), np.int32)
        query_pos = np.zeros((batch, 2 * k_max), np.int32)
        query_groups = np.zeros((batch, 2 * k_max), np.int32)
        write_index = np.full((batch, 2 * k_max), slots - 1, np.int32)
        sources, offered = [None] * batch, np.zeros(batch, np.int64)
        exact_first = np.zeros(batch, bool)  # n-gram rounds: draft 1 is the model's exact proposal
        for b in range(batch):
            if decided[b] >= stop[b]:
                continue
            g = int(group_next[b])
            if pending[b] >= 0:  # last round's resampled token enters the cache now
                pend_tok[b], pend_pos[b], pend_valid[b] = pending[b], order_mat[b, decided[b] - 1], True
            commit_groups[b, 0] = g
            start = int(decided[b])
            room = int(min(k_max, stop[b] - start))
            model_ready = bool(filled[b, start])
            if source_mode == "ngram":
                # the model's proposal for the next position is exact (accepted for sure) whenever it
                # was made given every decided token; the table continues it (or the text)
                lead = [int(proposal[b, start])] if model_ready else []
                context = text[b]
                if lead:
                    context = context.copy()
                    context[order_mat[b, start]] = lead[0]
                chained = drafter.continuation(context, int(order_mat[b, start]) + len(lead), room - len(lead))
                copied = np.concatenate([lead, chained]).astype(np.int64)
                exact_first[b] = bool(lead)
            else:
                copied = copy_continuation(text[b], int(order_mat[b, start]), room) if source_mode != "model" else []
            use_copy = len(copied) > 0 and (source_mode in ("copy", "ngram") or not model_ready
                                            or rate["copy"][b] >= rate["model"][b])
            source = "ngram" if source_mode == "ngram" else "copy" if use_copy else "model"
            want = _drafts_worth(rate[source][b], room) if plan.adaptive and source != "ngram" else room
            if use_copy:
                count = min(want, len(copied))
                copy_tok[b, :count], is_copy[b, :count] = copied[:count], True
                is_copy[b, 0] &= not exact_first[b]  # the exact proposal keeps its distribution (q = p)
            else:  # model drafts need a proposal for each position, consecutively from the first
                count = 0
                while count < want and filled[b, start + count]:
                    count += 1
            for j in range(count):
                draft_index[b, j] = start + j
                draft_pos[b, j] = order_mat[b, start + j]
                draft_valid[b, j] = True
                commit_groups[b, 1 + j] = g + 1 + j
                query_pos[b, j], query_groups[b, j] = order_mat[b, start + j], g + 1 + j
            for j in range(k_max):  # proposals for the positions after the drafts, given all of them
                i = start + count + j
                if i < stop[b]:
                    query_pos[b, k_max + j], query_groups[b, k_max + j] = order_mat[b, i], g + 1 + count
                    if j < stored:
                        write_index[b, k_max + j] = i
            sources[b], offered[b] = source, count
        if (length + width > capacity).any():  # a bug: the cache would overwrite its last slots
            raise RuntimeError(f"speculative decoding ran out of cache slots ({capacity}); report a bug")
        cache, table_q, table_tok, n, drafts, resampled, draft_lp, resampled_lp, proposed = round_call(
            params, cache, table_q, table_tok, pend_tok, pend_pos, pend_valid, copy_tok, is_copy, draft_index,
            draft_pos, draft_valid, commit_groups, query_pos, query_groups, write_index, key,
            np.int32(stats["calls"]))
        stats["calls"] += 1
        stats["passes"] += passes_per_round
        n, drafts, resampled, draft_lp, resampled_lp, proposed = map(
            np.asarray, (n, drafts, resampled, draft_lp, resampled_lp, proposed))
        proposal[np.arange(batch)[:, None], write_index[:, k_max:k_max + proposed.shape[1]]] = proposed
        rec_step = np.zeros((batch, width), np.int64)
        rec_tok = np.zeros((batch, width), np.int64)
        rec_pos = np.zeros((batch, width), np.int64)
        rec_valid = np.zeros((batch, width), bool)
        rec_lp = np.zeros((batch, width))
        for b in range(batch):
            if sources[b] is None:
                continue
            stats["row_calls"][b] += 1
            filled[b, write_index[b][write_index[b] < slots - 1]] = True
            count, accepted = int(offered[b]), int(min(n[b], offered[b]))
            length[b] += pend_valid[b] + accepted
            group_next[b] += 1 + count
            pending[b] = -1  # committed by this call (if there was one)
            if count == 0:  # no draft this round: it only proposed
                continue
            for j in range(count):
                stats["offered"][j] += 1
                stats["accepted"][j] += j < accepted
            lead = int(exact_first[b])  # an n-gram round's exact first draft counts as the model's
            if lead:
                stats["by_source"]["model"]["offered"] += 1
                stats["by_source"]["model"]["accepted"] += accepted >= 1
            source = stats["by_source"][sources[b]]
            if count > lead:
                source["offered"] += count - lead
                source["accepted"] += max(accepted - lead, 0)
                source["rounds"] += 1
            rate[sources[b]][b] = 0.7 * rate[sources[b]][b] + 0.3 * (accepted / count)
            took = accepted + (accepted < count)  # the accepted drafts, and the resampled token
            start = int(decided[b])
            positions = order_mat[b, start:start + took]
            values = np.append(drafts[b, :accepted], resampled[b:b + 1] if took > accepted else [])
            rec_step[b, :took] = start + 1 + np.arange(took)  # rank in the order: singleton groups
            rec_tok[b, :took], rec_pos[b, :took], rec_valid[b, :took] = values, positions, True
            rec_lp[b, :took] = np.append(draft_lp[b, :accepted], resampled_lp[b:b + 1] if took > accepted else [])
            text[b][positions] = values
            decided[b] += took
            if took > accepted:
                pending[b] = resampled[b]
                # the proposals were made given drafts that are now rejected: propose afresh given
                # the resampled token (a round without model drafts) unless the text offers a copy
                filled[b] = False
            bar.update(took)
        output.record(rec_step, rec_tok, rec_pos, rec_valid, rec_lp)
        for b in [b for b, cut in enumerate(output.eos_at) if cut is not None]:
            rest = orders[b][decided[b]:]  # nothing after a generated EOS is generated
            orders[b] = np.concatenate([orders[b][:decided[b]], rest[rest <= output.eos_at[b]]])
            stop[b] = min(stop[b], orders[b].size)
            order_mat[b] = 0
            order_mat[b, :orders[b].size] = orders[b]
    bar.close()
    return output, stats["calls"], stats


def _pad_text(text: list[np.ndarray]) -> np.ndarray:
    """The rows' texts (index = position, -1 = undecided) as one [B, T] int32 array, -1 past each end."""
    out = np.full((len(text), max(t.size for t in text)), -1, np.int32)
    for b, row in enumerate(text):
        out[b, :row.size] = row
    return out


def _device_rounds(round_call, params, cache, table_q, table_tok, state, key, eos, max_rounds, output, stats,
                   passes_per_round, bar, text_source):
    """Runs rounds.device_round until no row has positions left, never waiting for the round just
    sent (the loop looks two rounds back; a round sent after the last one with work changes
    nothing and is not counted), then records the rounds' commits and counts into output/stats."""
    lag = 2
    records, lefts, shown = [], [], 0  # shown: rounds whose tokens the progress bar counts
    for r in range(max_rounds):
        if r >= lag and not bool(lefts[r - lag]):
            break
        cache, table_q, table_tok, state, record, left = round_call(
            params, cache, table_q, table_tok, state, key, np.int32(stats["calls"] + r), eos)
        records.append(record)
        lefts.append(left)
        if r >= lag and not bar.disable:
            bar.update(int(np.sum(np.asarray(records[r - lag].valid))))
            shown = r - lag + 1
    lefts = jax.device_get(lefts)
    done = next((r + 1 for r, left in enumerate(lefts) if not left), None)
    if done is None:  # a bug: every round decides a token, or proposes for the next one
        raise RuntimeError(f"speculative decoding did not finish in {max_rounds} rounds; report a bug")
    k_max = stats["offered"].size
    j = np.arange(k_max)
    for r, record in enumerate(jax.device_get(records[:done])):
        output.record(record.rank, record.tokens, record.positions, record.valid, record.log_probs)
        stats["row_calls"] += record.active
        offered, accepted = record.offered[:, None] > j, record.accepted[:, None] > j
        stats["offered"] += offered.sum(axis=0)
        stats["accepted"] += accepted.sum(axis=0)
        # drafts copied from the text or the n-gram table (text_source), after an n-gram round's
        # lead (the model's exact proposal, counted as the model's), and the model's own
        lead = record.lead.astype(np.int64)
        text_rows = record.copied & (record.offered > lead)
        model_rows = ~record.copied & (record.offered > 0)
        source = stats["by_source"][text_source]
        source["offered"] += int((record.offered - lead)[text_rows].sum())
        source["accepted"] += int(np.maximum(record.accepted - lead, 0)[text_rows].sum())
        source["rounds"] += int(text_rows.sum())
        source = stats["by_source"]["model"]
        source["offered"] += int(record.offered[model_rows].sum() + lead.sum())
        source["accepted"] += int(record.accepted[model_rows].sum() + (record.lead & (record.accepted >= 1)).sum())
        source["rounds"] += int(model_rows.sum())
        if r >= shown and not bar.disable:
            bar.update(int(record.valid.sum()))
    stats["calls"] += done
    stats["passes"] += passes_per_round * done
    stats["rounds_on_device"] = done
