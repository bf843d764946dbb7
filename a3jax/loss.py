"""Cross-entropy of the prediction logits on target tokens only (all variants).

The loss takes the model's prediction logits [B, N, V] and the variant's facts
(a3jax/variants.py), never the model. Per-token values are aligned with the TARGET row: row i's
logits score token i (a3: the query stream; mdlm: the content stream, whose input is MASK), or
for a next-token variant (causal) row i - 1's logits score token i (same document only). Context
(BOS, prompt) and padding rows carry zero weight.

`mdlm` weights: a target of document d weighs L_d / m_d, where L_d counts the document's tokens
except BOS (its target-eligible tokens) and m_d its targets (masked tokens), both counted per
segment from the batch, so packing does not matter. With the `mdlm` order (m ~ Uniform{1..L},
masked set uniform given m) a document's expected weighted loss, sum_m (1/m) E[sum over masked
-log p(x_i | visible)], is the any-order (AO-ARDM / MDLM 1/t) bound on -log p(x). The weights of a
document sum to L_d, so `loss_fn`'s nll_sum / n_targets (and the eval's nll) is that bound per
token: an upper bound on the NLL, not an exact NLL.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from a3jax.model.transformer import MASK_LOGIT, logits_of


def mdlm_weights(batch):
    """float32 [B, N]: L_d / m_d on the target rows of document d (segment), 0 elsewhere."""
    segment_ids = batch["segment_ids"]
    targets = batch["loss_mask"].astype(jnp.float32) * (segment_ids > 0)
    eligible = ((segment_ids > 0) & (batch["positions"] > 0)).astype(jnp.float32)  # all but BOS
    n_segments = segment_ids.shape[-1] + 1  # segment ids are 0..D with D <= N

    def per_row(values, segments):
        return jax.ops.segment_sum(values, segments, num_segments=n_segments)[segments]

    length = jax.vmap(per_row)(eligible, segment_ids)
    masked = jax.vmap(per_row)(targets, segment_ids)
    return targets * length / jnp.maximum(masked, 1.0)


def target_log_probs(logits_BxNxV, batch, facts):
    """(log p(token) [B, N] float32, weight [B, N] float32) aligned with target rows, from the
    prediction logits of a model whose variant has these `facts` (a3jax/variants.py).

    The weight is 1 on targets, L_d / m_d with masked inputs (mdlm; see the module doc)."""
    log_probs, weights, _ = target_predictions(logits_BxNxV, batch, facts)
    return log_probs, weights


def target_predictions(logits_BxNxV, batch, facts):
    """target_log_probs plus whether each target is the argmax of its logits (bool [B, N]).

    Every predicting row is scored in place against its own target (`prediction_targets`) and
    the [B, N] results are then moved to the target rows: the [B, N, V] logits are never sliced,
    and the target's logit is picked by a compare with an iota rather than a gather, whose
    backward would be a scatter into a zero [B, N, V] array (on a CPU that and the slice's pad
    were ~10% of the demo's causal step)."""
    targets_BxN, weights_BxN = prediction_targets(batch, facts)
    picked_BxN = target_logit(logits_BxNxV, targets_BxN) - jax.nn.logsumexp(logits_BxNxV, axis=-1)
    correct_BxN = jnp.argmax(logits_BxNxV, axis=-1).astype(targets_BxN.dtype) == targets_BxN
    if facts.next_token:  # row i - 1 scored token i: move its results to token i's row
        pad = ((0, 0), (1, 0))
        picked_BxN, weights_BxN = jnp.pad(picked_BxN[:, :-1], pad), jnp.pad(weights_BxN[:, :-1], pad)
        correct_BxN = jnp.pad(correct_BxN[:, :-1], pad)
    return jnp.where(weights_BxN > 0, picked_BxN, 0.0), weights_BxN, correct_BxN


def target_logit(logits_XxV, targets_X):
    """logits_XxV[..., targets_X]: picked by comparing with an iota, not gathered, so that the
    backward is an elementwise select that fuses with the softmax's, not a scatter."""
    vocab_ids = jax.lax.broadcasted_iota(targets_X.dtype, logits_XxV.shape, logits_XxV.ndim - 1)
    return jnp.sum(jnp.where(vocab_ids == targets_X[..., None], logits_XxV, 0.0), axis=-1)


def prediction_targets(batch, facts):
    """(token [B, N], weight [B, N]) that each PREDICTING row scores: its own token, or for a
    next-token variant the next token of its document (weight 0 at a document's last row)."""
    tokens_BxN = batch["tokens"]
    weights_BxN = batch["loss_mask"].astype(jnp.float32)
    if facts.next_token:
        tail = ((0, 0), (0, 1))
        same_doc = batch["segment_ids"][:, 1:] == batch["segment_ids"][:, :-1]
        return (jnp.pad(tokens_BxN[:, 1:], tail),
                jnp.pad(weights_BxN[:, 1:] * same_doc.astype(jnp.float32), tail))
    if facts.masked_inputs:
        weights_BxN = mdlm_weights(batch)
    return tokens_BxN, weights_BxN


def target_log_probs_chunked(hidden_BxNxD, head_DxV, batch, facts, chunk: int, mask_id: int | None = None):
    """target_log_probs without the [B, N, V] logits: the rows are scored `chunk` at a time (a
    scan whose body is rematerialised, so the backward pass also holds one chunk's [chunk, V]
    logits at a time). hidden_BxNxD: the final-normed hidden states of the predicting stream;
    head_DxV: the output projection; mask_id: a vocabulary id whose logit is pinned to MASK_LOGIT
    (masked inputs, mdlm). Equal to the dense path up to float rounding (tests/test_loss.py)."""
    b, n, d = hidden_BxNxD.shape
    targets_BxN, weights_BxN = prediction_targets(batch, facts)
    rows = b * n
    chunk = max(1, min(int(chunk), rows))
    padded = -(-rows // chunk) * chunk
    hidden_RxD = jnp.pad(hidden_BxNxD.reshape(rows, d), ((0, padded - rows), (0, 0)))
    targets_R = jnp.pad(targets_BxN.reshape(rows), (0, padded - rows))
    head_DxV = head_DxV.astype(hidden_BxNxD.dtype)

    @jax.checkpoint
    def score(hidden_CxD, targets_C):
        logits_CxV = logits_of(hidden_CxD, head_DxV)
        if mask_id is not None:
            logits_CxV = logits_CxV.at[:, mask_id].set(MASK_LOGIT)
        return target_logit(logits_CxV, targets_C) - jax.nn.logsumexp(logits_CxV, axis=-1)

    picked_R = jax.lax.map(lambda xs: score(*xs), (hidden_RxD.reshape(-1, chunk, d), targets_R.reshape(-1, chunk)))
    picked_BxN = picked_R.reshape(padded)[:rows].reshape(b, n)
    if facts.next_token:  # back to the target rows: row i - 1 scored token i
        picked_BxN = jnp.pad(picked_BxN[:, :-1], ((0, 0), (1, 0)))
        weights_BxN = jnp.pad(weights_BxN[:, :-1], ((0, 0), (1, 0)))
    return jnp.where(weights_BxN > 0, picked_BxN, 0.0), weights_BxN


def loss_sums(log_probs_BxN, weights_BxN):
    """(mean loss, {nll_sum, n_targets}) from target log-probs and weights."""
    n_targets = jnp.sum(weights_BxN)
    nll_sum = -jnp.sum(log_probs_BxN * weights_BxN)
    return nll_sum / jnp.maximum(n_targets, 1.0), {"nll_sum": nll_sum, "n_targets": n_targets}


def mean_loss(logits_BxNxV, batch, facts):
    """Mean (weighted) negative log-likelihood per target token, and its sums.

    n_targets is the sum of the weights: the number of targets, or with masked inputs (mdlm) the
    number of non-BOS document tokens (so the loss is the bound per token)."""
    log_probs, weights = target_log_probs(logits_BxNxV, batch, facts)
    n_targets = jnp.sum(weights)
    nll_sum = -jnp.sum(log_probs * weights)
    loss = nll_sum / jnp.maximum(n_targets, 1.0)
    return loss, {"nll_sum": nll_sum, "n_targets": n_targets}


def eval_totals(logits_BxNxV, batch, facts, eos_id: int):
    """Held-out sums of one batch: nll_sum, n_targets (the weight sum) and n_bytes (targets other
    than EOS; with masked inputs (mdlm) every non-BOS, non-EOS document token, counted exactly
    rather than through the L/m weights). nll_sum / n_targets is the NLL per token (mdlm: the
    bound per token)."""
    log_probs, weights = target_log_probs(logits_BxNxV, batch, facts)
    counted = weights
    if facts.masked_inputs:
        counted = ((batch["segment_ids"] > 0) & (batch["positions"] > 0)).astype(jnp.float32)
    is_byte = (batch["tokens"] != eos_id).astype(jnp.float32) * counted
    return {"nll_sum": -jnp.sum(log_probs * weights), "n_targets": jnp.sum(weights),
            "n_bytes": jnp.sum(is_byte)}
