"""Exact parallel decoding: any-subset speculative sampling from one A3 model (Guo & Ermon 2025).

The target is the model's FINEST joint along an order o_1, o_2, ... of the unknown positions: one
position at a time, p(x_{o_j} | everything committed before). One A3 model both drafts and
verifies, with the exact KV cache (decode/cache.py):

  draft    the query rows of the next k positions of the order against the cache: q_j =
           p(x_{o_j} | committed), for all j at once; drafts d_j ~ q_j independently.
  verify   ONE call commits d_1..d_k as k singleton groups and asks the query rows of o_1..o_k,
           row j seeing the committed tokens and d_<j only (cache.extend's query_groups):
           p_j = p(x_{o_j} | committed, d_<j), the target's conditionals.
  accept   d_j with probability min(1, p_j(d_j) / q_j(d_j)); at the first rejection, sample from
           the normalised max(0, p_j - q_j) and stop. Standard speculative sampling: every
           committed token follows p_j exactly. p_1 = q_1, so a round commits at least one token.
The accepted drafts' content keys/values were computed under exactly the committed visibility,
so they stay in the cache; the slots of rejected drafts are marked invalid. The same verify call
also asks the query rows of the NEXT positions given all k drafts: when every draft is accepted
they are the next round's draft distributions, and the round cost one call. After a rejection the
resampled token's content row is committed by a draft call before the next verify (two calls).

Temperature, top-k and top-p shape p and q the same way (sampling.filter_logits), so the samples
follow the one-at-a-time joint of the shaped conditionals; the reported log-probs are the model's
(temperature 1, unfiltered) under the singleton grouping actually used (GenerateResult.groups).
`adaptive`: k doubles (up to the plan's k) after a round where the batch accepted >= 80% of its
drafts and halves (down to 1) below 40%.
"""

from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from a3jax.decode import cache as cache_lib
from a3jax.decode.sampling import filter_logits


def shaped_probs(logits, temperature: float, top_k: int, top_p: float):
    """The sampling distribution of logits [..., V] (float32): filtered, tempered, normalised;
    greedy (temperature 0) is one-hot at the argmax."""
    logits = filter_logits(logits, top_k=top_k, top_p=top_p)
    if temperature == 0:
        return jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=jnp.float32)
    return jax.nn.softmax(logits / temperature, axis=-1)


@functools.lru_cache(maxsize=16)
def _calls(model_def, temperature: float, top_k: int, top_p: float):
    shape = functools.partial(shaped_probs, temperature=temperature, top_k=top_k, top_p=top_p)

    @functools.partial(jax.jit, donate_argnums=(1,))
    def draft(params, cache, tokens, positions, valid, groups, query_positions, key):
        """Commit (the prefill or the resampled tokens) and draft the next positions."""
        cache, logits = cache_lib.extend(model_def.bind(params), cache, tokens, positions, valid,
                                         query_positions, groups)
        q = shape(logits)
        return cache, q, jax.random.categorical(key, jnp.log(q), axis=-1).astype(jnp.int32)

    @functools.partial(jax.jit, donate_argnums=(1,))
    def verify(params, cache, drafts, q, positions, valid, groups, query_positions, query_groups, key):
        """Commit the k drafts as singleton groups; p_j for each; the next block's q and drafts;
        accept/reject. Returns (cache, accepted count, resampled token, log-probs of d_j and of
        the resampled token at temperature 1, next q, next drafts)."""
        k = drafts.shape[1]
        cache, logits = cache_lib.extend(model_def.bind(params), cache, drafts, positions, valid,
                                         query_positions, groups, query_groups)
        p = shape(logits[:, :k])
        next_q = shape(logits[:, k:])
        accept_key, resample_key, draft_key = jax.random.split(key, 3)
        p_d = jnp.take_along_axis(p, drafts[..., None], -1)[..., 0]
        q_d = jnp.take_along_axis(q, drafts[..., None], -1)[..., 0]
        # float32 whatever jax_enable_x64 says: the same seed accepts the same drafts either way
        uniform = jax.random.uniform(accept_key, drafts.shape, jnp.float32)
        accepted = (uniform * q_d < p_d) | ~valid  # invalid (beyond the order) never stop the run
        n = jnp.sum(jnp.cumprod(accepted.astype(jnp.int32), axis=1), axis=1)
        n = jnp.minimum(n, jnp.sum(valid, axis=1))
        at = jnp.minimum(n, k - 1)  # the rejected draft's index (when n < valid count)
        take = lambda x: jnp.take_along_axis(x, at[:, None, None], 1)[:, 0]  # noqa: E731
        residual = jnp.maximum(take(p) - take(q), 0.0)
        mass = jnp.sum(residual, -1, keepdims=True)
        residual = jnp.where(mass > 0, residual / jnp.maximum(mass, 1e-30), take(p))
        resampled = jax.random.categorical(resample_key, jnp.log(residual), axis=-1).astype(jnp.int32)
        log_p = jax.nn.log_softmax(logits[:, :k].astype(jnp.float32), -1)
        draft_log_p = jnp.take_along_axis(log_p, drafts[..., None], -1)[..., 0]
        resampled_log_p = jnp.take_along_axis(take(log_p), resampled[:, None], -1)[:, 0]
        next_drafts = jax.random.categorical(draft_key, jnp.log(next_q), axis=-1).astype(jnp.int32)
        return cache, n, resampled, draft_log_p, resampled_log_p, next_q, next_drafts

    @jax.jit
    def invalidate(cache, keep):
        """Marks cache slots invalid where keep is False (rejected drafts)."""
        return cache._replace(valid=cache.valid & keep)

    return draft, verify, invalidate


def _order(plan, unknown: np.ndarray, rng, user_groups) -> np.ndarray:
    """The unknown positions (1-based) in the plan's order."""
    if plan.order == "ar":
        return np.sort(unknown)
    if plan.order == "random":
        return unknown[rng.permutation(unknown.size)]
    ranks = np.asarray(user_groups)[unknown - 1]  # 'groups': the caller's ids rank the positions
    return unknown[np.lexsort((unknown, ranks))]


def generate_speculative(model_def, params, cfg, documents, known, plan, sampling, *, bos_id, pad_id, eos_id,
                         groups, prefill, output, progress):
    """The speculative driver (see the module docstring). `prefill` is sampler._prefill's
    (tokens, positions, valid, groups); `output` a sampler._Output that records the commits.
    Returns (output, n_calls, stats)."""
    batch = len(documents)
    unknown = [np.flatnonzero(~m) + 1 for m in known]
    orders = [_order(plan, u, np.random.default_rng([int(sampling.seed), b]),
                     None if groups is None else groups[b]) for b, u in enumerate(unknown)]
    k_max = plan.k
    k = k_max if not plan.adaptive else max(1, k_max // 2)
    draft, verify, invalidate = _calls(model_def, float(sampling.temperature), int(sampling.top_k),
                                       float(sampling.top_p))
    tokens0, positions0, valid0, groups0 = prefill
    longest = max(o.size for o in orders)
    cache = cache_lib.init_cache(cfg, batch, tokens0.shape[1] + longest * (k_max + 1) + 1)
    group_next = groups0.max(axis=1).astype(np.int64) + 1  # the next free group id per row
    done = np.zeros(batch, np.int64)  # positions of the order committed, per row
    stop = np.array([o.size for o in orders], np.int64)  # the order's end (earlier after a generated EOS)
    key = jax.random.key(int(sampling.seed))
    stats = {"calls": 0, "offered": np.zeros(k_max, np.int64), "accepted": np.zeros(k_max, np.int64),
             "row_calls": np.zeros(batch, np.int64)}

    order_mat = np.zeros((batch, longest + k_max + 1), np.int32)  # each order, 0-padded
    for b, order in enumerate(orders):
        order_mat[b, :order.size] = order

    def upcoming(width):
        """[B, width] positions of the next `width` entries of each order (0 beyond its end)."""
        cols = done[:, None] + np.arange(width)[None, :]
        picked = order_mat[np.arange(batch)[:, None], np.minimum(cols, order_mat.shape[1] - 1)]
        return np.where(cols < stop[:, None], picked, 0)

    # round 0: the prefill commit and the first drafts in one call
    pending = (tokens0, positions0, valid0, groups0)
    q = drafts = None
    step = 0
    bar = tqdm(total=sum(stop), desc="decode", unit="tok", disable=not progress, file=sys.stderr)
    while (done < stop).any():
        step += 1
        key, draft_key, verify_key = jax.random.split(key, 3)
        if pending is not None:  # commit what the cache lacks; draft the next k_max positions
            query = upcoming(k_max)
            needs = pending[2][:, 0] if step > 1 else (done < stop)  # rows with a token to commit
            cache, new_q, new_drafts = draft(params, cache, *(jnp.asarray(x) for x in pending),
                                             jnp.asarray(query), draft_key)
            if step == 1:
                q, drafts = new_q, new_drafts
            else:  # rows whose drafts were all accepted keep the proposals they already had
                keep_old = jnp.asarray(~needs)[:, None]
                q = jnp.where(keep_old[..., None], q, new_q)
                drafts = jnp.where(keep_old, drafts, new_drafts)
            stats["calls"] += 1
            stats["row_calls"] += needs & (done < stop)
            pending = None
        # verify the first k drafts; ask for the next k_max positions given all k
        positions = upcoming(k + k_max)
        valid = positions[:, :k] > 0
        commit_groups = group_next[:, None] + np.arange(k)[None, :]
        query_groups = np.concatenate([commit_groups, np.broadcast_to(group_next[:, None] + k, (batch, k_max))], 1)
        cache, n, resampled, draft_lp, resampled_lp, next_q, next_drafts = verify(
            params, cache, drafts[:, :k], q[:, :k], jnp.asarray(positions[:, :k]), jnp.asarray(valid),
            jnp.asarray(commit_groups, jnp.int32), jnp.asarray(positions),
            jnp.asarray(query_groups, jnp.int32), verify_key)
        stats["calls"] += 1
        stats["row_calls"] += done < stop
        n, resampled, draft_lp, resampled_lp = map(np.asarray, (n, resampled, draft_lp, resampled_lp))
        offered = valid.sum(axis=1)
        accepted = np.where(offered > 0, n, 0)
        rejected = accepted < offered  # rejected at draft `accepted`: its resampled token is pending
        for j in range(k):
            stats["offered"][j] += int((offered > j).sum())
            stats["accepted"][j] += int((accepted > j).sum())
        cols = np.arange(k + 1)[None, :]
        rows = np.flatnonzero(rejected)
        tokens = np.pad(np.asarray(drafts[:, :k]), ((0, 0), (0, 1)))
        tokens[rows, accepted[rows]] = resampled[rows]
        log_p = np.pad(draft_lp, ((0, 0), (0, 1)))
        log_p[rows, accepted[rows]] = resampled_lp[rows]
        ok = (cols < accepted[:, None]) | (rejected[:, None] & (cols == accepted[:, None]))
        # the step of a token is its rank in the commit order: the sampled joint is one position
        # at a time (GenerateResult.groups are then singletons in that order)
        output.record(done[:, None] + cols + 1, tokens, np.pad(positions[:, :k], ((0, 0), (0, 1))), ok, log_p)
        start = int(cache.length) - k
        keep = np.ones(cache.valid.shape, bool)
        keep[:, start:start + k] = ~(rejected[:, None] & (cols[:, :k] >= accepted[:, None]))
        pending_groups = group_next + accepted
        group_next += accepted + rejected
        done += accepted + rejected
        all_accepted = not rejected.any()
        for b in [b for b, cut in enumerate(output.eos_at) if cut is not None]:
            rest = orders[b][done[b]:]  # nothing after a generated EOS is generated
            orders[b] = np.concatenate([orders[b][:done[b]], rest[rest <= output.eos_at[b]]])
            stop[b] = min(stop[b], orders[b].size)
            order_mat[b] = 0
            order_mat[b, :orders[b].size] = orders[b]
        if not keep.all():
            cache = invalidate(cache, jnp.asarray(keep))
        bar.update(int(accepted.sum() + rejected.sum()))
        # rows whose drafts were all accepted: the next block is drafted already (given all k)
        q, drafts = next_q, next_drafts
        if rows.size:  # rejected rows: their resampled token is committed, and they draft, next call
            pending = (np.where(rejected, resampled, pad_id)[:, None].astype(np.int32),
                       np.where(rejected, positions[np.arange(batch), np.minimum(accepted, k - 1)], 0)[:, None]
                       .astype(np.int32), rejected[:, None], pending_groups[:, None].astype(np.int32))
        if plan.adaptive:
            rate = float(accepted.sum()) / max(int(offered.sum()), 1)
            k = min(k_max, 2 * k) if rate >= 0.8 and all_accepted else (max(1, k // 2) if rate < 0.4 else k)
    bar.close()
    return output, stats["calls"], stats
