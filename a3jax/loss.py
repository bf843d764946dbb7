"""Cross-entropy of the prediction logits on target tokens only (all variants).

Per-token values are aligned with the TARGET row: for `a3`, row i's query-stream logits score
token i; for `causal`, row i - 1's logits score token i (same document only); for `mdlm`, row i's
content-stream logits (its input is MASK) score token i. Context (BOS, prompt) and padding rows
carry zero weight.

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


def target_log_probs(model, batch, *, inputs_embeds=None, group_size=None):
    """(log p(token) [B, N] float32, weight [B, N] float32) aligned with target rows.

    The weight is 1 on targets for a3 and causal, L_d / m_d for mdlm (see the module doc)."""
    extra = {} if group_size is None else {"group_size": group_size}  # stand-ins need not take it
    logits = model(batch, inputs_embeds=inputs_embeds, **extra)
    tokens = batch["tokens"]
    weights = batch["loss_mask"].astype(jnp.float32)
    if model.cfg.variant == "causal":
        logits = logits[:, :-1]
        same_doc = batch["segment_ids"][:, 1:] == batch["segment_ids"][:, :-1]
        pad = ((0, 0), (1, 0))
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        picked = jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]
        picked = jnp.pad(picked, pad)
        weights = weights * jnp.pad(same_doc, pad).astype(jnp.float32)
    else:
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        picked = jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
        if model.cfg.variant == "mdlm":
            weights = mdlm_weights(batch)
    return jnp.where(weights > 0, picked, 0.0), weights


def loss_fn(model, batch, group_size=None):
    """Mean (weighted) negative log-likelihood per target token, and metrics.

    n_targets is the sum of the weights: the number of targets for a3 and causal, the number of
    non-BOS document tokens for mdlm (so the loss is the bound per token). group_size: the
    batch's one group size when its rows are grid-aligned (static; see Transformer.hidden_states)."""
    log_probs, weights = target_log_probs(model, batch, group_size=group_size)
    n_targets = jnp.sum(weights)
    nll_sum = -jnp.sum(log_probs * weights)
    loss = nll_sum / jnp.maximum(n_targets, 1.0)
    return loss, {"nll_sum": nll_sum, "n_targets": n_targets}


def eval_totals(model, batch, eos_id: int):
    """Held-out sums of one batch: nll_sum, n_targets (the weight sum) and n_bytes (targets other
    than EOS; for mdlm every non-BOS, non-EOS document token, counted exactly rather than through
    the L/m weights). nll_sum / n_targets is the NLL per token (mdlm: the bound per token)."""
    log_probs, weights = target_log_probs(model, batch)
    counted = weights
    if model.cfg.variant == "mdlm":
        counted = ((batch["segment_ids"] > 0) & (batch["positions"] > 0)).astype(jnp.float32)
    is_byte = (batch["tokens"] != eos_id).astype(jnp.float32) * counted
    return {"nll_sum": -jnp.sum(log_probs * weights), "n_targets": jnp.sum(weights),
            "n_bytes": jnp.sum(is_byte)}
