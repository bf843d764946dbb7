"""Token choice from logits (temperature, top-k, top-p) and the scores that rank positions for the
dynamic plans (which positions to commit next). Pure jnp; the settings are static Python values."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from a3jax.errors import UserError

CRITERIA = ("confidence", "entropy", "margin", "random")


def check_settings(temperature: float, top_k: int, top_p: float) -> None:
    if not temperature >= 0:
        raise UserError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    if int(top_k) != top_k or top_k < 0:
        raise UserError(f"top_k={top_k} must be an integer >= 0 (0 = off)")
    if not 0 < top_p <= 1:
        raise UserError(f"top_p={top_p} must be in (0, 1] (1 = off)")


def filter_logits(logits, *, top_k: int = 0, top_p: float = 1.0):
    """Logits with every token outside the top-k / the top-p nucleus set to -inf (float32)."""
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    if top_k and top_k < vocab:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # the smallest prefix whose mass reaches top_p: keep a token while the mass before it is < p
        kept = jnp.where(mass_before < top_p, sorted_logits, jnp.inf)
        threshold = jnp.min(kept, axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def choose_tokens(key, logits, *, temperature: float, top_k: int, top_p: float):
    """Sampled token ids [...] (argmax when temperature == 0)."""
    logits = filter_logits(logits, top_k=top_k, top_p=top_p)
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)


def position_scores(criterion: str, key, log_probs, tokens):
    """Higher = commit earlier. log_probs [..., V] are the model's (temperature 1) log-probs.

    confidence: probability of the chosen token; entropy: minus the entropy; margin: top-1 minus
    top-2 probability; random: uniform noise (positions committed in random order).
    """
    if criterion == "confidence":
        return jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
    if criterion == "entropy":
        probs = jnp.exp(log_probs)
        return jnp.sum(jnp.where(probs > 0, probs * log_probs, 0.0), axis=-1)
    if criterion == "margin":
        top2 = jnp.exp(jax.lax.top_k(log_probs, 2)[0])
        return top2[..., 0] - top2[..., 1]
    if criterion == "random":
        return jax.random.uniform(key, tokens.shape)
    raise UserError(f"unknown criterion {criterion!r}; use one of {CRITERIA}")
