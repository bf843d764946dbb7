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
           sampled token each) go into a per-position proposal table for later rounds; the first
           (its previous token is the last draft) is exact if every draft is accepted, the rest are
           A3's group predictions (what `random(k)` adaptation trains);
  falls back: for each draft d_j, a query row for the position after it that sees what verify
           row j sees (not d_j): if d_j is rejected, that row's distribution drafts the next
           round's first position, so every round verifies at least one draft.
Round 0 commits the prompt in the same pass, proposes the first positions and verifies any drafts
copied from the prompt (there is no separate prefill call).
Draft d_j is accepted with probability min(1, p_j(d_j) / q_j(d_j)); at the first rejection a token
is sampled from the normalised max(0, p_j - q_j) and the round ends (its token is committed by the
next round's call). This is standard speculative sampling: for ANY draft distribution q_j that is
fixed before the target is read -- point masses and proposals made given drafts later rejected
included -- every committed token follows p_j exactly. So each pass decides one token for sure
(the resampled one, or the exact next proposal after a full acceptance) plus every accepted draft
that was not exact: passes per token = 1 / (1 + accepted guesses per pass), never more than `ar`.
Each row of the cache holds only its prompt and decided tokens: a round moves the row's
length back over its rejected drafts, and the next round's call writes over them (so the cache,
and every call's attention, is as short as the text).

Draft sources (`draft=`):
  model  the proposal table: the distribution the model computed for that position in a proposal
         or fallback row, and a token sampled from it;
  copy   a point mass on the text's own continuation wherever the text offers one: the longest
         earlier (or later: the right context of a gap) match of the last 2-8 decided tokens,
         followed for up to k tokens (order 'ar' only; code repeats identifiers); model drafts
         elsewhere;
  auto   copy where a match exists and copying has been accepted at least as often as the model's
         drafts (or no fresh proposal is at hand), else model;
  ngram  point masses from the most frequent continuations of a token corpus (decode/ngram.py,
         the model's training text), chained on each other and on the model's exact proposal for
         the next position (exact after a full acceptance, a fallback after a rejection): one pass
         per round, however many positions it drafts (order 'ar' only).
Chained proposals (`speculative(k, chain)`; a model with the shifted query stream,
model.query_input=shift, in the order 'ar', refused elsewhere): the proposal of position p + 1 is re-run, in the same
call, with the token just proposed for p as its previous-token input, one row per pass, so drafts
follow each other the way subword tokens do. On the demo's subword model chaining raised the
model drafts' acceptance from about 0.35 to 0.69, but a round of k drafts costs k passes for at
most k + 1 tokens, and a rejection clears the table (the next round only proposes): chained plans
spend more passes than `ar` wherever acceptance is below about 0.7 (BENCHMARKS.md).
A round whose proposals after the first are not read from its verify pass (chained, n-gram)
computes only the first proposal row there.
With `adaptive`, each row drafts as many positions as its source's running acceptance rate a makes
worthwhile (until a^k < 1/4), at most the plan's k. Temperature, top-k and top-p shape p and q the
same way (sampling.shaped_probs); the reported log-probs are the model's (temperature 1,
unfiltered) under the singleton grouping actually used (GenerateResult.groups).

Where the rounds run: every decision between two rounds is made in the round's own call
(decode/rounds.py; the n-gram tables go to the device as hash tables) and the host never waits
for the round it just sent. Exactness is tested against the distribution (tests/test_speculative.py:
chi-square against the one-at-a-time joint, greedy identity with `ar`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from a3jax.decode import cache as cache_lib
from a3jax.decode import driver, rounds
from a3jax.decode.sampling import eos_start, shaped_probs
from a3jax.decode.sampling import sample_probs as _sample
from a3jax.errors import UserError

SOURCES = ("model", "copy", "ngram")
MIN_MATCH, MAX_MATCH = 2, 8  # copy drafts: the suffix lengths searched, longest first


def _store(table, index_BxR, values):
    """table [B, L + 1, ...] with values [B, R, ...] written at index (L: the discard slot)."""
    rows = jnp.arange(table.shape[0])[:, None]
    return table.at[rows, index_BxR].set(values.astype(table.dtype))


@functools.lru_cache(maxsize=16)
def _verify(model_def, temperature: float, top_k: int, top_p: float, chain: bool = False, narrow: bool = False,
            fallback: bool = False):
    """The round's pass (unjitted: decode/rounds.py jits the whole round around it). It holds the
    k verify rows and k proposal rows, or with `narrow` (chained proposals, n-gram drafts: only
    the next position's proposal is read from it) one proposal row; `chain` computes proposals
    2..k in their own passes; `fallback` adds k rows, row j the position after draft j seen as
    verify row j sees it (without draft j): at a rejection of draft j, that row's proposal drafts
    the next round's first position."""
    shape = functools.partial(shaped_probs, temperature=temperature, top_k=top_k, top_p=top_p)

    def verify(weights, cache, tables: rounds.Tables, prompt: rounds.Prompt, commit: rounds.Commit,
               queries: rounds.Queries, key, round_index):
        """One round: commit the prompt (round 0; width 0 later), the pending token and the drafts,
        verify, propose, fall back. Returns (cache, tables, rounds.Verdict)."""
        b, k = commit.valid.shape
        rows = jnp.arange(b)[:, None]
        drafts = jnp.where(commit.is_copy, commit.copy_tokens, tables.tok[rows, commit.index])
        draft_q = jnp.where(commit.is_copy[..., None], jax.nn.one_hot(drafts, tables.q.shape[-1], dtype=jnp.float32),
                            tables.q[rows, commit.index])
        start = cache.length  # [B]: each row's next free slot

        def row(given, pending_value, drafted):  # the prompt, the pending token (if any), then the drafts
            both = jnp.concatenate([pending_value[:, None], drafted], 1)
            both = jnp.where(commit.pending_valid[:, None], both, jnp.roll(both, -1, axis=1))
            return jnp.concatenate([given.astype(both.dtype), both], 1)

        j = jnp.arange(k, dtype=jnp.int32)[None, :]
        groups = row(prompt.groups, commit.group, jnp.where(commit.valid, commit.group[:, None] + 1 + j, 0))
        n_proposals = 1 if narrow else k
        rows_used = [slice(0, k + n_proposals)] + ([slice(2 * k, 3 * k)] if fallback else [])
        pick = lambda x: jnp.concatenate([x[:, r] for r in rows_used], 1)  # noqa: E731
        cache, logits = cache_lib.extend(model_def.bind(weights.params), cache,
                                         row(prompt.tokens, commit.pending, drafts),
                                         row(prompt.positions, commit.pending_position, commit.positions),
                                         row(prompt.valid, commit.pending_valid, commit.valid),
                                         pick(queries.positions), groups,
                                         pick(queries.groups), layers=weights.layers)
        probs = shape(logits)
        p = probs[:, :k]
        accept_key, resample_key, draft_key, fallback_key = jax.random.split(jax.random.fold_in(key, round_index), 4)
        p_d = jnp.take_along_axis(p, drafts[..., None], -1)[..., 0]
        q_d = jnp.take_along_axis(draft_q, drafts[..., None], -1)[..., 0]
        # float32 whatever jax_enable_x64 says: the same seed accepts the same drafts either way
        uniform = jax.random.uniform(accept_key, drafts.shape, jnp.float32)
        accepted = (uniform * q_d < p_d) | ~commit.valid  # invalid (beyond the round) never stop the run
        offered = jnp.sum(commit.valid, axis=1)
        n = jnp.minimum(jnp.sum(jnp.cumprod(accepted.astype(jnp.int32), axis=1), axis=1), offered)
        at = jnp.minimum(n, k - 1)[:, None, None]  # the rejected draft's index (when n < drafts offered)
        residual = jnp.maximum(jnp.take_along_axis(p, at, 1)[:, 0] - jnp.take_along_axis(draft_q, at, 1)[:, 0], 0.0)
        mass = jnp.sum(residual, -1, keepdims=True)
        residual = jnp.where(mass > 0, residual / jnp.maximum(mass, 1e-30), jnp.take_along_axis(p, at, 1)[:, 0])
        resampled = _sample(resample_key, residual)
        log_p = jax.nn.log_softmax(logits[:, :k].astype(jnp.float32), -1)
        draft_log_p = jnp.take_along_axis(log_p, drafts[..., None], -1)[..., 0]
        resampled_log_p = jnp.take_along_axis(jnp.take_along_axis(log_p, at, 1)[:, 0], resampled[:, None], -1)[:, 0]
        proposal_probs = probs[:, k:k + n_proposals]
        proposed = _sample(draft_key, proposal_probs)
        if chain:  # proposal j + 1 reads proposal j as its previous token (shifted query stream)
            proposed, proposal_probs = _chain(weights, cache, proposed, proposal_probs, queries.positions[:, k:2 * k],
                                              queries.groups[:, k:2 * k], draft_key)
        index = queries.write_index[:, :proposal_probs.shape[1]]
        table_q, table_tok = _store(tables.q, index, proposal_probs), _store(tables.tok, index, proposed)
        fell = jnp.zeros(b, bool)
        if fallback:  # the rejected draft's fallback row proposes the next round's first position
            fallback_probs = jnp.take_along_axis(probs[:, k + n_proposals:], at, 1)  # [B, 1, V]
            slot = jnp.take_along_axis(queries.fallback_index, at[:, :, 0], 1)  # [B, 1]
            discard = table_tok.shape[1] - 1
            fell = (n < offered) & (slot[:, 0] < discard)
            slot = jnp.where(fell[:, None], slot, discard)
            table_q = _store(table_q, slot, fallback_probs)
            table_tok = _store(table_tok, slot, _sample(fallback_key, fallback_probs))
        # each row keeps its prompt, pending token and accepted drafts; the next call writes over the rest
        cache = cache._replace(length=start + prompt.tokens.shape[1] + commit.pending_valid.astype(jnp.int32) + n)
        verdict = rounds.Verdict(accepted=n, drafts=drafts, resampled=resampled, draft_log_probs=draft_log_p,
                                 resampled_log_prob=resampled_log_p, fell=fell)
        return cache, rounds.Tables(table_q, table_tok), verdict

    def _chain(weights, cache, proposed, probs, query_positions, query_groups, key):
        """Chained proposals: proposal j + 1 (position P_{j+1}) computed in its own pass with the
        token sampled for P_j as its previous-token input (when P_j = P_{j+1} - 1; otherwise the
        row reads the cache like the verify pass's rows). Any proposal distribution keeps the
        sampling exact (it is fixed before the target reads it); these follow the text's
        dependencies. proposed [B, 1] and probs [B, 1, V] (the verify pass's first proposal) grow
        to the width of query_positions."""
        model = model_def.bind(weights.params)
        b, width = query_positions.shape
        empty_tokens = jnp.zeros((b, 0), jnp.int32)
        empty_valid = jnp.zeros((b, 0), bool)
        tokens, dists = [proposed[:, 0]], [probs[:, 0]]
        for j in range(1, width):
            chained = query_positions[:, j] == query_positions[:, j - 1] + 1
            _, logits = cache_lib.extend(model, cache, empty_tokens, empty_tokens, empty_valid,
                                         query_positions[:, j:j + 1], empty_tokens, query_groups[:, j:j + 1],
                                         (tokens[-1][:, None], chained[:, None]), layers=weights.layers)
            key, sub = jax.random.split(key)
            dists.append(shape(logits)[:, 0])
            tokens.append(_sample(sub, dists[-1]))
        return jnp.stack(tokens, 1), jnp.stack(dists, 1)

    return verify


def _order(plan, unknown: np.ndarray, rng, user_groups) -> np.ndarray:
    """The unknown positions (1-based) in the plan's order."""
    if plan.order == "ar":
        return np.sort(unknown)
    if plan.order == "random":
        return unknown[rng.permutation(unknown.size)]
    ranks = np.asarray(user_groups)[unknown - 1]  # 'groups': the caller's ids rank the positions
    return unknown[np.lexsort((unknown, ranks))]


def generate_speculative(model_def, weights, cfg, documents, known, plan, sampling, *, bos_id, pad_id, eos_id,
                         groups, prefill, output, progress, drafter=None):
    """The speculative driver (see the module docstring): rounds.device_round through
    driver.drive, round 0 committing the prompt (`prefill`: sampler._prefill's tokens, positions,
    valid and groups, [B, P]) and proposing the first positions in the same pass. `output` is a
    sampler._Output that records the commits; `drafter` a decode.ngram.NgramDrafter
    (draft=ngram). Returns (output, n_calls, stats)."""
    batch = len(documents)
    unknown = [np.flatnonzero(~m) + 1 for m in known]
    orders = [_order(plan, u, np.random.default_rng([int(sampling.seed), b]),
                     None if groups is None else groups[b]) for b, u in enumerate(unknown)]
    k_max = plan.k
    source_mode = plan.draft if plan.order == "ar" else "model"  # copying follows the text left to right
    if source_mode == "ngram" and drafter is None:
        raise UserError(f"plan {sampling.plan!r} drafts from a token corpus: pass drafter=NgramDrafter(...) "
                        "(a3jax sample and bench decode build it from the model's training data)")
    # chained model proposals cost a pass per drafted position (only where the plan asks for them)
    if plan.chain and not cfg.shifted_query:
        raise UserError(f"plan {sampling.plan!r} chains proposals through the shifted query stream, which this "
                        f"model does not have (model.query_input={cfg.query_input!r}, not 'shift'); drop `chain`")
    chain = bool(plan.chain)
    narrow = chain or source_mode == "ngram"  # only the next position's proposal comes from the verify pass
    verify = _verify(model_def, float(sampling.temperature), int(sampling.top_k), float(sampling.top_p), chain,
                     narrow, not chain)
    passes_per_round = 1 + (k_max - 1 if chain else 0)  # sequential passes through the layer stack
    prompt = rounds.Prompt(*prefill)
    longest = max(o.size for o in orders)
    # a row's slots hold its prompt and its decided tokens only (a round's rejected drafts are
    # written over by the next round), and a round writes the pending token + k drafts after them
    capacity = prompt.tokens.shape[1] + longest + k_max + 1
    cache = cache_lib.init_cache(cfg, batch, capacity, per_row=True)
    slots = longest + 1  # order indices 0..longest-1, and a discard slot
    tables = rounds.Tables(q=jnp.zeros((batch, slots, cfg.vocab_size), jnp.float32),
                           tok=jnp.zeros((batch, slots), jnp.int32))
    order_mat = np.zeros((batch, slots), np.int32)
    for b, order in enumerate(orders):
        order_mat[b, :order.size] = order
    stop = np.array([o.size for o in orders], np.int32)
    cut, eos = eos_start(batch, eos_id, sampling.stop_at_eos)
    text = np.full((batch, 1 + max(d.size for d in documents)), -1, np.int32)
    for b, (d, m) in enumerate(zip(documents, known)):
        text[b, 0] = bos_id
        text[b, 1:1 + d.size] = np.where(m, d, -1)
    state = rounds.RoundState(order=order_mat, filled=np.zeros((batch, slots), bool), text=text, stop=stop,
                              decided=np.zeros(batch, np.int32), pending=np.full(batch, -1, np.int32),
                              group_next=prompt.groups.max(axis=1).astype(np.int32) + 1,
                              rate=np.full((batch, 2), 0.6, np.float32), cut=cut, fallback=np.zeros(batch, bool))
    ngrams = rounds.device_ngram_tables(drafter) if source_mode == "ngram" else ()
    round_call = rounds.device_round(verify, k_max, source_mode, bool(plan.adaptive), not chain, MIN_MATCH,
                                     MAX_MATCH, drafter.max_order - 1 if source_mode == "ngram" else 0)
    no_prompt = rounds.Prompt(*(np.zeros((batch, 0), x.dtype) for x in prompt))
    key = jax.random.key(int(sampling.seed))
    carry = [cache, tables, jax.device_put(state)]

    def send(r):  # round 0 commits the prompt; every later round the last rejection's token and its drafts
        carry[0], carry[1], carry[2], record, left = round_call(weights, *carry, prompt if r == 0 else no_prompt, key,
                                                                np.int32(r), eos, ngrams=ngrams)
        return record, left

    # every round decides a token or proposes for the next position: at most two rounds a position
    records, done = driver.drive(send, 2 * longest + 3, progress=progress, total=int(stop.sum()), must_finish=True)
    stats = _round_stats(records, output, batch, k_max, "ngram" if source_mode == "ngram" else "copy")
    stats["calls"] = done
    stats["passes"] = passes_per_round * done
    return output, done, stats


def _round_stats(records, output, batch, k_max, text_source):
    """Records the rounds' commits into output; returns the counts: rounds each row took part in,
    drafts offered and accepted by position, by source and after a fallback."""
    stats = {"offered": np.zeros(k_max, np.int64), "accepted": np.zeros(k_max, np.int64),
             "row_calls": np.zeros(batch, np.int64),
             "by_source": {s: {"offered": 0, "accepted": 0, "rounds": 0} for s in SOURCES},
             "fallback": {"offered": 0, "accepted": 0}}
    j = np.arange(k_max)
    for record in records:
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
        stats["fallback"]["offered"] += int(record.fallback.sum())
        stats["fallback"]["accepted"] += int((record.fallback & (record.accepted >= 1)).sum())
    return stats
