"""Cross-entropy of the prediction logits on target tokens only (both variants).

Per-token values are aligned with the TARGET row: for `a3`, row i's query-stream logits score
token i; for `causal`, row i - 1's logits score token i (same document only). Context (BOS,
prompt) and padding rows carry zero weight.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def target_log_probs(model, batch, *, inputs_embeds=None):
    """(log p(token) [B, N] float32, weight [B, N] float32) aligned with target rows."""
    logits = model(batch, inputs_embeds=inputs_embeds)
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
    return jnp.where(weights > 0, picked, 0.0), weights


def loss_fn(model, batch):
    """Mean negative log-likelihood per target token, and metrics."""
    log_probs, weights = target_log_probs(model, batch)
    n_targets = jnp.sum(weights)
    nll_sum = -jnp.sum(log_probs * weights)
    loss = nll_sum / jnp.maximum(n_targets, 1.0)
    return loss, {"nll_sum": nll_sum, "n_targets": n_targets}
