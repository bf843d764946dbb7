"""Any-order generation: fill the unknown positions of a batch of documents, group by group.

Every step is one jitted call with static shapes: (the group committed last step + the positions
to predict now) against the state, where the state is either
  cached     the exact KV cache (decode/cache.py): each committed token's keys/values are computed
             once; sampling follows the model's group-by-group distribution exactly;
  recompute  the official code's semantics: every known token (prompt and committed) forms one
             context group and the whole row is recomputed each step. So step t samples under its
             own two-group layout (known before t | the rest), and no single grouping of the final
             document reproduces every step (GenerateResult.groupings). This is the only mode of
             the `mdlm` (masked diffusion) variant: unknown positions input MASK, attention is
             bidirectional, and the content stream's logits at the queried positions are used
             (dynamic confidence plans give the usual MDLM sampler).
Static plans (a fixed grouping: ar, blocks, random, the caller's groups) and dynamic ones (the k
best positions by a criterion) share ONE jitted step (_step: typed Commit, StaticSchedule or
DynamicSchedule, StepState and StepRecord pytrees): the prefill is the first step's commit,
keep_cache's last commit a step with nothing to query. Speculative plans run rounds
(decode/rounds.py: one jitted round, the prompt committed by round 0). Steps and rounds go
through the same host loop (decode/driver.py): nothing but the step index goes from the host to
the device between calls, and the records are fetched once at the end.

Documents are int arrays of the tokens at positions 1..L (BOS is added at position 0); `known`
marks the given positions, the others are generated. Rows may differ in length and in gaps.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from a3jax.decode import cache as cache_lib
from a3jax.decode import driver
from a3jax.decode.plans import parse_plan, static_groups
from a3jax.decode.sampling import check_settings, choose_tokens, cut_at_eos, eos_start, position_scores
from a3jax.decode.speculative import generate_speculative
from a3jax.errors import UserError
from a3jax.model import transformer

MODES = ("cached", "recompute")
CONTEXTS = ("ar", "group")


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    plan: str = "ar"  # see decode/plans.py
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int = 0
    mode: str = "cached"  # or "recompute"
    stop_at_eos: bool = True  # a generated EOS ends its document: later unknown positions are dropped
    context: str = "ar"  # given tokens read left to right, one group each ("ar"), or as one group
    #                      ("group"); cached mode only (recompute is always one group)

    def check(self) -> None:
        check_settings(self.temperature, self.top_k, self.top_p)
        if self.mode not in MODES:
            raise UserError(f"mode={self.mode!r} is not one of {MODES}")
        if self.context not in CONTEXTS:
            raise UserError(f"context={self.context!r} is not one of {CONTEXTS}")
        parse_plan(self.plan)


@dataclasses.dataclass
class GenerateResult:
    """What `generate` filled in, and the groupings its log-probs were computed under.

    groups means one of two things, by mode:
      cached     the one grouping actually sampled from (given tokens first: context "ar" ranks
                 them 1..k left to right, "group" puts them in group 0; causal: 1..L). A full
                 forward of layout.build_layout([tokens[b]], [groups[b]]) reproduces log_probs[b].
      recompute  the commit order: 0 = given, t = committed at step t (= steps). It is NOT a
                 grouping of the log-probs, and no single grouping is: step t read every token
                 known before it as ONE context group, so from step 2 on the content rows of BOS
                 and the given tokens also saw the tokens of step 1. One grouping would need step
                 1 in a group <= theirs, where step 1's own queries (which must see BOS) could
                 not be. The log-probs of the tokens of step t are a full forward's under the
                 two-group grouping `recompute_groups(groups[b], t)`: groups < t -> 0, the rest
                 -> 1 (one forward per step).
    `groupings(b)` returns, for either mode, the (grouping, scored positions) pairs to check with
    full forwards. Both are exact for every document that stop_at_eos did not cut; a cut document
    may have had tokens beyond the cut (committed before the EOS) as context of later steps.
    """

    tokens: list[np.ndarray]  # filled documents; cut before the first generated EOS (stop_at_eos)
    log_probs: list[np.ndarray]  # the model's log-prob (temperature 1, unfiltered) of each generated
    #                              token under the grouping of its step (see groupings); 0 at given positions
    steps: list[np.ndarray]  # the step (1-based) that committed each position; 0 = given
    groups: list[np.ndarray]  # cached: the grouping sampled from; recompute: the commit order (above)
    n_steps: int  # model calls (the first commits the prompt)
    state: object = None  # the final KV cache (cached mode with keep_cache=True)
    mode: str = "cached"  # SampleConfig.mode: how to read `groups`
    stats: dict | None = None  # speculative plans: model calls, drafts offered/accepted by position

    def groupings(self, b: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(groups_L, scored_L)] for document b: log_probs[b][scored_L] equal a full forward's
        log-probs of tokens[b] under the grouping groups_L at those positions (float32: ~1e-5).

        cached: one pair (groups[b], the generated positions). recompute: one pair per step t,
        (recompute_groups(groups[b], t), the positions committed at step t).
        """
        generated = self.steps[b] > 0
        if self.mode != "recompute":
            return [(self.groups[b].copy(), generated)]
        return [(recompute_groups(self.groups[b], t), self.steps[b] == t)
                for t in np.unique(self.steps[b][generated])]


def recompute_groups(commit_order: np.ndarray, step: int) -> np.ndarray:
    """The grouping recompute mode read at `step`: tokens known before it (commit order < step: given
    or committed earlier) form the one context group 0, every other position group 1 (its tokens
    are never read: a3 query rows see group 0 only, mdlm inputs MASK there)."""
    return np.where(np.asarray(commit_order) < step, 0, 1).astype(np.int32)


# ---- the two states behind one call: (state, commit, query) -> (state, logits) -------------------

def _recompute_call(model, state, commit_tokens, commit_positions, commit_valid, query_positions,
                    commit_groups=None, layers=None):  # the official semantics: given groups are ignored
    tokens, known, lengths = state
    b, n = tokens.shape
    rows = jnp.arange(b)[:, None]
    slots = jnp.where(commit_valid, commit_positions, n)  # invalid commits land out of bounds: dropped
    tokens = tokens.at[rows, slots].set(commit_tokens, mode="drop")
    known = known.at[rows, slots].set(True, mode="drop")
    in_doc = jnp.arange(n)[None, :] <= lengths[:, None]
    group = jnp.where(known, 0, jnp.where(in_doc, 1, 2))  # known = one context group, unknown = group 1
    order = jnp.argsort(group, axis=1, stable=True)
    batch = {
        "tokens": jnp.take_along_axis(tokens, order, 1),
        "positions": order.astype(jnp.int32),
        "groups": jnp.minimum(jnp.take_along_axis(group, order, 1), 1).astype(jnp.int32),
        "segment_ids": jnp.take_along_axis(in_doc, order, 1).astype(jnp.int32),
    }
    # a3: the query stream; mdlm: the content stream (unknown rows input MASK, see transformer.py)
    hidden = model.hidden_states(batch)[model.facts.predicts_from]
    rank = jnp.argsort(order, axis=1)
    picked = jnp.take_along_axis(hidden, jnp.take_along_axis(rank, query_positions, 1)[..., None], 1)
    return (tokens, known, lengths), model.logits(picked)


def _cached_call(model, state, commit_tokens, commit_positions, commit_valid, query_positions,
                 commit_groups=None, layers=None):
    return cache_lib.extend(model, state, commit_tokens, commit_positions, commit_valid, query_positions,
                            commit_groups, layers=layers)


_CALLS = {"cached": _cached_call, "recompute": _recompute_call}


def _choose(sampling: SampleConfig, key, logits, force_tokens, force_mask):
    """(tokens, model log-probs of those tokens, full log-probs)."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    tokens = choose_tokens(key, logits, temperature=sampling.temperature, top_k=sampling.top_k,
                           top_p=sampling.top_p)
    tokens = jnp.where(force_mask, force_tokens, tokens)
    picked = jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
    return tokens, picked, log_probs


def _compiled_fields(sampling: SampleConfig) -> SampleConfig:
    """The sampling settings a compiled step depends on: every seed shares one compilation."""
    return dataclasses.replace(sampling, seed=0)


class Commit(NamedTuple):
    """The group a step commits (chosen by the step before), [B, W]: tokens, original positions,
    valid; groups: the prefill's group ids (BOS 0, the given tokens' ranks), or None: one new
    group (cache.extend)."""

    tokens: jax.Array
    positions: jax.Array
    valid: jax.Array
    groups: jax.Array | None = None


class StaticSchedule(NamedTuple):
    """A static plan's steps, uploaded once, [T, B, W]: step t queries positions[t] where valid[t];
    given[t]: a causal model's given tokens (committed as they are, never an EOS cut);
    force_tokens/force_mask: tokens committed instead of sampled. Width 0: a commit-only step."""

    positions: jax.Array
    valid: jax.Array
    given: jax.Array
    force_tokens: jax.Array
    force_mask: jax.Array


class DynamicSchedule(NamedTuple):
    """A dynamic plan: every step queries the unknown positions query [B, Q] still to fill and
    commits the k_now[t] [T, B] best of them by the plan's criterion; force_* as above, [B, Q]."""

    query: jax.Array
    k_now: jax.Array
    force_tokens: jax.Array
    force_mask: jax.Array


class StepState(NamedTuple):
    """What a step hands the next besides the cache (donated on its own), on the device: the group
    to commit, each row's EOS cut (cut_at_eos), and a dynamic plan's positions still to fill
    ([B, Q]; [B, 0] for a static plan)."""

    commit: Commit
    cut: jax.Array
    remaining: jax.Array


class StepRecord(NamedTuple):
    """What a step chose, [B, W]: tokens, positions, valid, and the model's log-probs of them."""

    tokens: jax.Array
    positions: jax.Array
    valid: jax.Array
    log_probs: jax.Array


@functools.lru_cache(maxsize=64)
def _step(model_def, sampling: SampleConfig, criterion: str | None = None, width: int = 0):
    """THE step of the static and dynamic plans (criterion None: static), jitted: commit the last
    chosen group, query this step's positions, choose. Everything the next step needs stays on the
    device (StepState), so the host enqueues step t + 1 while step t runs. A static schedule of
    width 0 is a commit-only step (keep_cache's last group). `cache`: the KV cache (cached mode)
    or the recompute row. Returns (cache, state, StepRecord, whether a later step has a position
    to fill): a generated EOS drops every later position of its row (not queried, not committed),
    and the host stops once no row has one."""
    call = _CALLS[sampling.mode]

    @functools.partial(jax.jit, donate_argnums=(1,))
    def step(weights, cache, state: StepState, schedule, key, t, eos_id):
        cut = state.cut
        if criterion is None:
            positions, valid, given, force_tokens, force_mask = (x[t] for x in schedule)
            valid = valid & (positions <= cut[:, None])
            query = jnp.where(valid, positions, 0)
            token_key = jax.random.fold_in(key, t)
        else:
            query, force_tokens, force_mask = schedule.query, schedule.force_tokens, schedule.force_mask
            valid = state.remaining & (query <= cut[:, None])
            token_key, score_key = jax.random.split(jax.random.fold_in(key, t))
        commit = state.commit
        cache, logits = call(model_def.bind(weights.params), cache, commit.tokens, commit.positions,
                             commit.valid, query, commit.groups, layers=weights.layers)
        if not query.shape[1]:  # commit only
            record = StepRecord(query, query, valid, jnp.zeros(query.shape, jnp.float32))
            return cache, StepState(Commit(query, query, valid), cut, state.remaining), record, jnp.zeros((), bool)
        tokens, picked, log_probs = _choose(sampling, token_key, logits, force_tokens, force_mask & valid)
        remaining = state.remaining
        if criterion is None:  # every queried position is committed
            eos = valid & ~given & (tokens == eos_id)  # given tokens (causal) never cut
            record = StepRecord(tokens, query, valid, picked)
            cut = cut_at_eos(cut, eos, query)
            # any later step with a position before the cut (in a random order the next step's
            # may lie past the cut while a later one's does not)
            later = (jnp.arange(schedule.valid.shape[0]) > t)[:, None, None]
            left = jnp.any(later & schedule.valid & (schedule.positions <= cut[None, :, None]))
        else:  # the k_now best positions by the criterion
            k_now = jnp.minimum(schedule.k_now[t], jnp.sum(valid, axis=1))
            scores = jnp.where(valid, position_scores(criterion, score_key, log_probs, tokens), -jnp.inf)
            top, index = jax.lax.top_k(scores, width)
            chosen = (jnp.arange(width)[None, :] < k_now[:, None]) & (top > -jnp.inf)
            take = lambda x: jnp.take_along_axis(x, index, axis=1)  # noqa: E731
            tokens, positions = take(tokens), take(query)
            record = StepRecord(tokens, positions, chosen, take(picked))
            done = jnp.any(query[:, :, None] == jnp.where(chosen, positions, -1)[:, None, :], axis=-1)
            remaining = valid & ~done
            cut = cut_at_eos(cut, chosen & (tokens == eos_id), positions)
            left = jnp.any(remaining & (query <= cut[:, None]))
        state = StepState(commit=Commit(record.tokens, jnp.where(record.valid, record.positions, 0), record.valid),
                          cut=cut, remaining=remaining)
        return cache, state, record, left

    return step


# ---- the driver ---------------------------------------------------------------------------------

def bucket(n: int) -> int:
    """n rounded up to 1..8, 10, 12, 14, 16, 20, 24, 28, 32, 40, ... (at most 25% more). Every
    size a call's arrays take is its own XLA program: the prefill's width, the cache's size and
    the positions a dynamic plan queries are rounded up to these sizes, and a plan's number of
    steps to a power of two (at least 8), so that batches of slightly different documents share
    their compilations (the demo's infilling compiled 78 programs in 17 s before). The padding is
    invalid slots, and steps that are never run."""
    if n <= 8:
        return max(int(n), 1)
    step = 1 << (int(n).bit_length() - 3)
    return -(-int(n) // step) * step


def steps_bucket(n_steps: int) -> int:
    return max(8, 1 << (int(n_steps) - 1).bit_length())


def _pad_rows(rows: list[np.ndarray], width: int, fill, dtype) -> np.ndarray:
    out = np.full((len(rows), width), fill, dtype)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def _check_inputs(documents, known, forced, groups, max_len):
    if len(documents) != len(known):
        raise UserError(f"got {len(documents)} documents but {len(known)} known masks")
    for i, (doc, mask) in enumerate(zip(documents, known)):
        if np.shape(doc) != np.shape(mask) or np.ndim(doc) != 1:
            raise UserError(f"document {i}: tokens {np.shape(doc)} and known mask {np.shape(mask)} "
                             "must be 1-D arrays of the same length")
        if max_len is not None and len(doc) + 1 > max_len:
            raise UserError(f"document {i} needs {len(doc)} positions + BOS = {len(doc) + 1} but the max "
                             f"length is {max_len}")
        if np.all(mask):
            raise UserError(f"document {i} has no unknown position to generate (its gap has no room)")
        if forced is not None and np.shape(forced[i]) != np.shape(doc):
            raise UserError(f"forced[{i}] has shape {np.shape(forced[i])}, document {i} {np.shape(doc)}")
        if groups is not None and np.shape(groups[i]) != np.shape(doc):
            raise UserError(f"groups[{i}] has shape {np.shape(groups[i])}, document {i} {np.shape(doc)}")


def _check_groups_plan(plan, spec: str, groups) -> None:
    """`groups` is read by plan 'groups' alone: any other plan would decode in its own order."""
    reads_groups = plan.kind == "groups" or (plan.speculative and plan.order == "groups")
    if groups is not None and not reads_groups:
        raise UserError(f"groups=... is only read by plan 'groups', but the plan is {spec!r}, which would "
                         "ignore them; use SampleConfig(plan='groups') to decode in your groups, or drop groups=")
    if groups is None and reads_groups:
        raise UserError(f"plan {spec!r} decodes in the caller's groups: pass groups=[ids per document]")


def generate(model_def, params, documents, known, *, bos_id: int, pad_id: int, eos_id: int | None = None,
             sampling: SampleConfig = SampleConfig(), groups=None, forced=None, max_len: int | None = None,
             keep_cache: bool = False, progress: bool = False, drafter=None) -> GenerateResult:
    """Fills every position of `documents` where `known` is False.

    groups: per-document group ids (>= 1 at unknown positions) for plan 'groups' (only: another plan
      with groups is refused rather than silently ignoring them).
    forced: per-document tokens to commit instead of sampling (the reported log-probs then score
      them: the sum equals log P(forced | known) under the groups used).
    max_len: the model's maximum row length including BOS (e.g. the training seq_len), checked.
    keep_cache: also commit the last group and return the final KV cache (cached mode).
    drafter: a decode.ngram.NgramDrafter for speculative(k, draft=ngram) (drafts from a token corpus).
    """
    sampling.check()
    plan = parse_plan(sampling.plan)
    _check_groups_plan(plan, sampling.plan, groups)
    documents = [np.asarray(d, np.int32) for d in documents]
    known = [np.asarray(k, bool) for k in known]
    _check_inputs(documents, known, forced, groups, max_len)
    cfg = model_def.bind(params).cfg
    cfg.facts.check_decode(sampling.plan, plan.kind, sampling.mode)
    # cast once, not in every call; cached mode: the layer weights one buffer per layer (no slicing)
    weights = cache_lib.decode_weights(params, cfg) if sampling.mode == "cached" else \
        cache_lib.DecodeWeights(transformer.compute_params(params, cfg.dtype), None)
    if eos_id is None:
        sampling = dataclasses.replace(sampling, stop_at_eos=False)
    if plan.speculative:
        return _generate_speculative(model_def, weights, cfg, documents, known, plan, sampling, bos_id=bos_id,
                                     pad_id=pad_id, eos_id=eos_id, groups=groups, forced=forced,
                                     keep_cache=keep_cache, progress=progress, drafter=drafter)
    if plan.dynamic:
        return _generate_dynamic(model_def, weights, cfg, documents, known, plan, sampling, bos_id=bos_id,
                                 pad_id=pad_id, eos_id=eos_id, forced=forced, keep_cache=keep_cache,
                                 progress=progress)
    return _generate_static(model_def, weights, cfg, documents, known, plan, sampling, bos_id=bos_id,
                            pad_id=pad_id, eos_id=eos_id, groups=groups, forced=forced, keep_cache=keep_cache,
                            progress=progress)


def _prefill(documents, known, bos_id, pad_id, causal, context):
    """The first commit, BOS first: the given tokens (causal: the prefix before the first unknown
    position) as [B, P] tokens, positions, valid and group ids (0 for BOS)."""
    rows = []
    for doc, mask in zip(documents, known):
        given = np.arange(np.flatnonzero(~mask)[0]) if causal else np.flatnonzero(mask)
        groups = np.arange(given.size + 1) if context == "ar" else np.zeros(given.size + 1)
        rows.append((np.concatenate([[bos_id], doc[given]]), np.concatenate([[0], given + 1]), groups))
    width = bucket(max(r[0].size for r in rows))
    return (_pad_rows([r[0] for r in rows], width, pad_id, np.int32),
            _pad_rows([r[1] for r in rows], width, 0, np.int32),
            _pad_rows([np.ones(r[0].size, bool) for r in rows], width, False, bool),
            _pad_rows([r[2] for r in rows], width, 0, np.int32))


def _layout_of(cfg, sampling: SampleConfig) -> str:
    if cfg.facts.next_token:
        return "left_to_right"
    return "group" if sampling.mode == "recompute" else sampling.context


def _init_state(cfg, mode, documents, known, pad_id, size):
    if mode == "cached":
        return cache_lib.init_cache(cfg, len(documents), size)
    width = max(d.size for d in documents) + 1
    tokens = _pad_rows([np.concatenate([[pad_id], np.where(k, d, pad_id)]) for d, k in zip(documents, known)],
                       width, pad_id, np.int32)
    given = _pad_rows([np.concatenate([[True], k]) for k in known], width, False, bool)
    lengths = np.array([d.size for d in documents], np.int32)
    return jnp.asarray(tokens), jnp.asarray(given), jnp.asarray(lengths)


class _Output:
    """Host-side results per document, and the EOS cut."""

    def __init__(self, documents, known, eos_id, stop_at_eos, layout_of, mode):
        self.known, self.layout_of, self.mode = known, layout_of, mode
        self.tokens = [np.where(k, d, -1).astype(np.int32) for d, k in zip(documents, known)]
        self.log_probs = [np.zeros(d.size, np.float64) for d in documents]
        self.steps = [np.zeros(d.size, np.int32) for d in documents]
        self.eos_id, self.stop_at_eos = eos_id, stop_at_eos
        self.eos_at = [None] * len(documents)  # 1-based position of the first generated EOS

    def record(self, step, tokens, positions, valid, log_probs):
        """step: the step of every token, or [B, W] one per token (speculative: the commit rank)."""
        tokens, positions, valid = np.asarray(tokens), np.asarray(positions), np.asarray(valid, bool)
        log_probs = np.asarray(log_probs)
        steps = np.broadcast_to(np.asarray(step), tokens.shape)
        for b in np.flatnonzero(valid.any(axis=1)):
            pos = positions[b][valid[b]]
            new = ~self.known[b][pos - 1]  # given tokens (forced by a causal model) stay given
            at = pos[new] - 1
            toks = tokens[b][valid[b]][new]
            self.tokens[b][at] = toks
            self.log_probs[b][at] = log_probs[b][valid[b]][new]
            self.steps[b][at] = steps[b][valid[b]][new]
            if self.stop_at_eos and (toks == self.eos_id).any():
                first = int(at[toks == self.eos_id].min()) + 1
                self.eos_at[b] = first if self.eos_at[b] is None else min(self.eos_at[b], first)

    def result(self, n_steps, state) -> GenerateResult:
        tokens, log_probs, steps, groups = [], [], [], []
        for b, cut in enumerate(self.eos_at):
            end = len(self.tokens[b]) if cut is None else cut - 1
            tokens.append(self.tokens[b][:end].copy())
            log_probs.append(self.log_probs[b][:end].copy())
            steps.append(self.steps[b][:end].copy())
            groups.append(self._groups(b)[:end])
        return GenerateResult(tokens=tokens, log_probs=log_probs, steps=steps, groups=groups, n_steps=n_steps,
                              state=state, mode=self.mode)

    def _groups(self, b):
        known, steps = self.known[b], self.steps[b]
        if self.layout_of == "left_to_right":
            return np.arange(1, steps.size + 1, dtype=np.int32)
        if self.layout_of == "ar":  # given tokens 1..k left to right, then the steps
            ranks = np.cumsum(known).astype(np.int32)
            return np.where(known, ranks, steps + ranks[-1]).astype(np.int32)
        return steps.copy()  # context "group" (cached), or the commit order (recompute)


def _generate_static(model_def, weights, cfg, documents, known, plan, sampling, *, bos_id, pad_id, eos_id,
                     groups, forced, keep_cache, progress):
    causal = cfg.facts.next_token  # left to right from the first unknown position
    batch = len(documents)
    plans = []
    for b, (doc, mask) in enumerate(zip(documents, known)):
        if causal:
            first = int(np.flatnonzero(~mask)[0]) + 1
            plans.append([np.array([p]) for p in range(first, doc.size + 1)])
            continue
        unknown = np.flatnonzero(~mask) + 1
        user = None if groups is None else np.asarray(groups[b])[unknown - 1]
        rng = np.random.default_rng([int(sampling.seed), b])
        plans.append(static_groups(plan, unknown, rng, user))
    n_steps = max(len(p) for p in plans)
    width = max(g.size for p in plans for g in p)
    step_pos = np.zeros((steps_bucket(n_steps), batch, width), np.int32)  # steps beyond n_steps: never run
    step_valid = np.zeros((steps_bucket(n_steps), batch, width), bool)
    for b, groups_b in enumerate(plans):
        for t, group in enumerate(groups_b):
            step_pos[t, b, :group.size] = group
            step_valid[t, b, :group.size] = True
    # tokens committed instead of sampled: the caller's `forced`, and (causal) the given positions
    force_tok = np.zeros_like(step_pos)
    force_mask = np.zeros_like(step_valid)
    step_given = np.zeros_like(step_valid)
    for b in range(batch):
        source = documents[b] if forced is None else np.where(known[b], documents[b], forced[b])
        force_tok[:, b] = source[np.maximum(step_pos[:, b], 1) - 1]
        step_given[:, b] = step_valid[:, b] & known[b][np.maximum(step_pos[:, b], 1) - 1]
        force_mask[:, b] = step_valid[:, b] if forced is not None else step_given[:, b]
    schedule = StaticSchedule(step_pos, step_valid, step_given, force_tok, force_mask)
    commit = Commit(*_prefill(documents, known, bos_id, pad_id, causal, sampling.context))
    size = bucket(commit.tokens.shape[1] + len(step_pos) * width)
    cache = _init_state(cfg, sampling.mode, documents, known, pad_id, size)
    state = StepState(commit, eos_start(batch, eos_id, sampling.stop_at_eos)[0], np.zeros((batch, 0), bool))
    return _run_steps(model_def, weights, cfg, cache, state, schedule, sampling, None, n_steps, documents, known,
                      eos_id, keep_cache, progress, commit_last=not causal)


def _run_steps(model_def, weights, cfg, cache, state, schedule, sampling, criterion, n_steps, documents, known, eos_id,
               keep_cache, progress, commit_last=True):
    """The static and dynamic plans' steps through driver.drive (lag 2; 1 with keep_cache, whose
    final cache must hold exactly the steps taken: then the last chosen group is committed by a
    commit-only step)."""
    fields = _compiled_fields(sampling)
    step = _step(model_def, fields) if criterion is None else \
        _step(model_def, fields, criterion, int(np.max(schedule.k_now)))
    out = _Output(documents, known, eos_id, sampling.stop_at_eos, _layout_of(cfg, sampling), sampling.mode)
    key = jax.random.key(int(sampling.seed))
    eos = eos_start(len(documents), eos_id, sampling.stop_at_eos)[1]
    # the positions the steps decide (a causal model's steps also commit the given tokens after its gap)
    total = int(np.sum(schedule.valid if criterion is None else state.remaining))
    state, schedule = jax.device_put((state, schedule))
    carry = [cache, state]

    def send(t):
        carry[0], carry[1], record, left = step(weights, carry[0], carry[1], schedule, key, np.int32(t), eos)
        return record, left

    records, done = driver.drive(send, n_steps, lag=1 if keep_cache else 2, progress=progress, total=total)
    cache, state = carry
    for t, record in enumerate(records):
        out.record(t + 1, *record)
    if not keep_cache:
        return out.result(done, None)
    if commit_last:  # the last chosen group, by a step with nothing to query
        b = len(documents)
        empty = StaticSchedule(*(np.zeros((1, b, 0), dtype) for dtype in (np.int32, bool, bool, np.int32, bool)))
        cache, *_ = _step(model_def, fields)(weights, cache, state, empty, key, np.int32(0), eos)
    return out.result(done, cache)


def _generate_speculative(model_def, weights, cfg, documents, known, plan, sampling, *, bos_id, pad_id, eos_id,
                          groups, forced, keep_cache, progress, drafter):
    if sampling.mode != "cached":
        raise UserError(f"plan {sampling.plan!r} verifies drafts against the exact KV cache: use mode='cached'")
    if forced is not None or keep_cache:
        raise UserError(f"plan {sampling.plan!r} samples its own tokens: forced= and keep_cache= are not supported")
    prefill = _prefill(documents, known, bos_id, pad_id, False, sampling.context)
    out = _Output(documents, known, eos_id, sampling.stop_at_eos, _layout_of(cfg, sampling), sampling.mode)
    out, calls, stats = generate_speculative(model_def, weights, cfg, documents, known, plan, sampling,
                                             bos_id=bos_id, pad_id=pad_id, eos_id=eos_id, groups=groups,
                                             prefill=prefill, output=out, progress=progress, drafter=drafter)
    result = out.result(calls, None)
    result.stats = stats
    return result


def _generate_dynamic(model_def, weights, cfg, documents, known, plan, sampling, *, bos_id, pad_id, eos_id,
                      forced, keep_cache, progress):
    batch = len(documents)
    unknown = [np.flatnonzero(~m) + 1 for m in known]
    schedules = [plan.commits(u.size) for u in unknown]
    n_steps = max(len(s) for s in schedules)
    width = max(max(s) for s in schedules)
    k_now = np.zeros((steps_bucket(n_steps), batch), np.int32)  # steps beyond n_steps: never run
    for b, schedule in enumerate(schedules):
        k_now[:len(schedule), b] = schedule
    query = _pad_rows(unknown, bucket(max(u.size for u in unknown)), 0, np.int32)
    remaining = _pad_rows([np.ones(u.size, bool) for u in unknown], query.shape[1], False, bool)
    force_tok = np.zeros_like(query)
    force_mask = np.zeros_like(remaining)
    if forced is not None:
        for b, u in enumerate(unknown):
            force_tok[b, :u.size] = np.asarray(forced[b])[u - 1]
            force_mask[b, :u.size] = True
    schedule = DynamicSchedule(query, k_now, force_tok, force_mask)
    commit = Commit(*_prefill(documents, known, bos_id, pad_id, False, sampling.context))
    size = bucket(commit.tokens.shape[1] + len(k_now) * width)
    cache = _init_state(cfg, sampling.mode, documents, known, pad_id, size)
    state = StepState(commit, eos_start(batch, eos_id, sampling.stop_at_eos)[0], remaining)
    return _run_steps(model_def, weights, cfg, cache, state, schedule, sampling, plan.criterion, n_steps, documents,
                      known, eos_id, keep_cache, progress)
